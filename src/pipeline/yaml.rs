//! A YAML document as a small tree whose every node knows where it was written, so the checker can
//! name the line and column of each value it refuses.
//!
//! The tree is built from `saphyr-parser` events. Building it ourselves is also what keeps hostile
//! input cheap: aliases are expanded here against a budget (a "billion laughs" document stops at the
//! first alias that would exceed it), nesting is capped (so neither building nor dropping the tree
//! recurses deeply), and only one document is accepted.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::Diagnostic;

/// Deeper nesting than this is refused. A pipeline needs about six levels; the cap keeps the
/// recursive walks and drops over the tree shallow.
pub const MAX_DEPTH: usize = 64;

/// How much alias expansion may add to the document, in bytes of memory as `NODE_WEIGHT` estimates
/// them: as much as the largest file we accept. Anchors shared between a few jobs stay far below it;
/// exponential expansion reaches it after some ten thousand nodes, in milliseconds.
pub const ALIAS_BUDGET: usize = super::MAX_FILE_BYTES;

/// One value and where it starts (1-based line and column, in characters).
#[derive(Debug, Clone)]
pub struct Node {
    pub line: usize,
    pub column: usize,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub enum Value {
    /// `plain`: written without quotes or block indicators, so `null`, `~` and nothing at all mean
    /// "no value" rather than a string.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in the order written (after `<<` merges), duplicates included: the checker reports
    /// those with both positions.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A plain `null`, `~` or empty value.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The text of a scalar that is not null.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// What the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
            Value::Scalar { .. } if self.is_null() => "nothing".to_string(),
            Value::Scalar { text, .. } => {
                let mut shown: String = text.chars().take(40).collect();
                if shown.len() < text.len() {
                    shown.push('…');
                }
                format!("`{}`", shown.replace('\n', "\\n"))
            }
        }
    }
}

/// Roughly what one node costs in memory, whatever it holds.
const NODE_WEIGHT: usize = std::mem::size_of::<Node>() + 16;

/// What a scalar costs: its node and its text, so that both many small aliases and an aliased long
/// string count.
fn scalar_weight(text: &str) -> usize {
    NODE_WEIGHT + text.len()
}

/// A collection being built.
enum Open {
    Seq {
        node: Node,
        items: Vec<Node>,
        anchor: usize,
        weight_at_start: usize,
    },
    Map {
        node: Node,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        anchor: usize,
        weight_at_start: usize,
    },
}

#[derive(Default)]
struct Builder {
    open: Vec<Open>,
    root: Option<Node>,
    /// Anchored nodes (already expanded) and their weight, by the parser's anchor id.
    anchors: std::collections::HashMap<usize, (Node, usize)>,
    /// Weight of everything built so far, aliases expanded.
    weight: usize,
    /// Weight added by aliases alone.
    alias_weight: usize,
}

/// Parses `text` into one tree. `Ok(None)`: the file holds no document (empty, or only comments).
/// Errors are fatal: YAML syntax, a second document, nesting or alias expansion beyond the limits.
pub fn load(text: &str) -> Result<Option<Node>, Diagnostic> {
    let mut builder = Builder::default();
    let mut documents = 0usize;
    for next in Parser::new_from_str(text) {
        let (event, span) = next.map_err(|e| {
            let at = e.marker();
            builder.error(
                at.line(),
                at.col() + 1,
                format!("invalid YAML: {}", e.info()),
            )
        })?;
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    let (line, column) = position(&span);
                    return Err(builder.error(
                        line,
                        column,
                        "a second YAML document: the file must hold exactly one".to_string(),
                    ));
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                builder.weight = builder.weight.saturating_add(scalar_weight(&text));
                let plain = style == ScalarStyle::Plain;
                let node = node_at(
                    &span,
                    Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                );
                builder.remember(anchor, &node, scalar_weight_of(&node));
                builder.push(node);
            }
            Event::Alias(id) => builder.alias(id, &span)?,
            Event::SequenceStart(anchor, _tag) => {
                builder.open_collection(&span)?;
                let weight_at_start = builder.weight;
                builder.open.push(Open::Seq {
                    node: node_at(&span, Value::Seq(Vec::new())),
                    items: Vec::new(),
                    anchor,
                    weight_at_start,
                });
            }
            Event::MappingStart(anchor, _tag) => {
                builder.open_collection(&span)?;
                let weight_at_start = builder.weight;
                builder.open.push(Open::Map {
                    node: node_at(&span, Value::Map(Vec::new())),
                    entries: Vec::new(),
                    key: None,
                    anchor,
                    weight_at_start,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close()?,
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(builder.root)
}

fn position(span: &Span) -> (usize, usize) {
    (span.start.line().max(1), span.start.col() + 1)
}

fn node_at(span: &Span, value: Value) -> Node {
    let (line, column) = position(span);
    Node {
        line,
        column,
        value,
    }
}

fn scalar_weight_of(node: &Node) -> usize {
    match &node.value {
        Value::Scalar { text, .. } => scalar_weight(text),
        _ => NODE_WEIGHT,
    }
}

impl Builder {
    /// A fatal error at `line:column`, keyed by where in the tree the parser was.
    fn error(&self, line: usize, column: usize, message: String) -> Diagnostic {
        Diagnostic {
            line: line.max(1),
            column: column.max(1),
            key: self.path(),
            message,
        }
    }

    /// The key path of the value being read, e.g. `jobs[0].script[2]`.
    fn path(&self) -> String {
        let mut path = String::new();
        for open in &self.open {
            match open {
                Open::Seq { items, .. } => path.push_str(&format!("[{}]", items.len())),
                Open::Map { key: Some(key), .. } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key.text().unwrap_or("?"));
                }
                Open::Map { key: None, .. } => {}
            }
        }
        path
    }

    fn open_collection(&mut self, span: &Span) -> Result<(), Diagnostic> {
        if self.open.len() >= MAX_DEPTH {
            let (line, column) = position(span);
            return Err(self.error(
                line,
                column,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.weight = self.weight.saturating_add(NODE_WEIGHT);
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: &Node, weight: usize) {
        // Anchor ids start at 1; 0 means "no anchor".
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), weight));
        }
    }

    fn alias(&mut self, id: usize, span: &Span) -> Result<(), Diagnostic> {
        let (line, column) = position(span);
        let Some((node, weight)) = self.anchors.get(&id) else {
            // The parser refuses unknown anchors; an alias to an anchor still open (recursive) ends
            // here.
            return Err(self.error(
                line,
                column,
                "alias to an anchor that is not complete here".to_string(),
            ));
        };
        let weight = *weight;
        if self.alias_weight.saturating_add(weight) > ALIAS_BUDGET {
            return Err(self.error(
                line,
                column,
                format!(
                    "aliases expand the document by more than {ALIAS_BUDGET} bytes; a pipeline needs far less (a \"billion laughs\" document?)"
                ),
            ));
        }
        self.alias_weight += weight;
        self.weight = self.weight.saturating_add(weight);
        // The copy points at the alias, where the value is used; its insides keep the anchor's
        // positions, where they are written.
        let mut copy = node.clone();
        copy.line = line;
        copy.column = column;
        self.push(copy);
        Ok(())
    }

    fn push(&mut self, node: Node) {
        match self.open.last_mut() {
            None => {
                // A document with only a scalar, or the first of several roots: keep the first.
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    fn close(&mut self) -> Result<(), Diagnostic> {
        let Some(open) = self.open.pop() else {
            return Ok(());
        };
        let (node, anchor, weight_at_start) = match open {
            Open::Seq {
                mut node,
                items,
                anchor,
                weight_at_start,
            } => {
                node.value = Value::Seq(items);
                (node, anchor, weight_at_start)
            }
            Open::Map {
                mut node,
                mut entries,
                key,
                anchor,
                weight_at_start,
            } => {
                if let Some(key) = key {
                    // A key without a value (only possible in odd flow syntax) has a null value.
                    let value = Node {
                        line: key.line,
                        column: key.column,
                        value: Value::Scalar {
                            text: String::new(),
                            plain: true,
                        },
                    };
                    entries.push((key, value));
                }
                node.value = Value::Map(
                    merge(entries)
                        .map_err(|(line, column, message)| self.error(line, column, message))?,
                );
                (node, anchor, weight_at_start)
            }
        };
        let weight = self.weight.saturating_sub(weight_at_start).max(NODE_WEIGHT);
        self.remember(anchor, &node, weight);
        self.push(node);
        Ok(())
    }
}

/// Applies YAML merge keys (`<<: *defaults`), which PyYAML, and so the original ZeroCI, honoured:
/// keys written in the mapping win over merged ones, and earlier merged mappings over later ones.
fn merge(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, (usize, usize, String)> {
    let is_merge =
        |k: &Node| matches!(&k.value, Value::Scalar { text, plain: true } if text == "<<");
    if !entries.iter().any(|(k, _)| is_merge(k)) {
        return Ok(entries);
    }
    let (merges, mut own): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(k, _)| is_merge(k));
    let mut taken: std::collections::HashSet<String> = own
        .iter()
        .filter_map(|(k, _)| k.text().map(str::to_string))
        .collect();
    for (_, value) in merges {
        let sources = match value.value {
            Value::Map(entries) => vec![entries],
            Value::Seq(items) => {
                let mut sources = Vec::new();
                for item in items {
                    match item.value {
                        Value::Map(entries) => sources.push(entries),
                        _ => {
                            return Err((
                                item.line,
                                item.column,
                                "`<<` merges mappings only".to_string(),
                            ));
                        }
                    }
                }
                sources
            }
            _ => {
                return Err((
                    value.line,
                    value.column,
                    "`<<` merges a mapping or a list of mappings".to_string(),
                ));
            }
        };
        for (key, value) in sources.into_iter().flatten() {
            // A key that is not a plain name cannot collide; the checker reports it anyway.
            let fresh = key.text().is_none_or(|k| taken.insert(k.to_string()));
            if fresh {
                own.push((key, value));
            }
        }
    }
    Ok(own)
}
