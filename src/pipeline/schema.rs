//! The rules of `zeroCI.yaml`, applied to the spanned tree from `yaml.rs`.
//!
//! One set of job rules serves every form: the top-level mapping of the list and single-job forms and
//! each entry of `jobs` accept the same keys (plus the legacy `prequisties` at the top, and `name` in
//! `jobs`). `install` may be a string (one element) or a list (one element per command); `script`
//! items may be commands or `{name, cmd}` mappings, mixed. Unknown keys are warnings; everything that
//! would make the controller run something other than what was written is an error.

use std::collections::HashMap;

use super::yaml::{Node, Value};
use super::{Diagnostic, MAX_DIAGNOSTICS, MAX_JOBS, Pipeline, PipelineJob, ScriptStep, run_on};

/// Keys of a job; at the top level they form the single job of the list and single-job forms.
const JOB_KEYS: [&str; 5] = ["prerequisites", "install", "script", "bin_path", "timeout"];
const PREREQUISITE_KEYS: [&str; 7] = [
    "image_name",
    "imageName",
    "shell_bin",
    "cpus",
    "memory_mb",
    "pids",
    "labels",
];
const STEP_KEYS: [&str; 5] = ["name", "cmd", "type", "working_dir", "yaml_path"];
/// Keys that only mean something to the original's neph steps.
const NEPH_KEYS: [&str; 2] = ["working_dir", "yaml_path"];

/// Collects diagnostics while the tree is checked.
#[derive(Debug, Default)]
pub struct Checker {
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker {
    pub fn push_error(&mut self, diagnostic: Diagnostic) {
        self.errors.push(diagnostic);
    }

    pub fn error(&mut self, at: &Node, key: &str, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::new(at.line, at.column, key, message));
    }

    pub fn warn(&mut self, at: &Node, key: &str, message: impl Into<String>) {
        self.warnings
            .push(Diagnostic::new(at.line, at.column, key, message));
    }

    /// Errors and warnings sorted by position, each list capped at [`MAX_DIAGNOSTICS`] plus a line
    /// counting what was left out.
    pub fn finish(self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        (cap(self.errors, "errors"), cap(self.warnings, "warnings"))
    }

    /// The fields of a mapping, with unknown keys warned about (suggesting the closest known key),
    /// duplicates and non-name keys reported. `None` (and an error saying `expected`) when `node` is
    /// not a mapping.
    pub fn fields<'a>(
        &mut self,
        node: &'a Node,
        path: &str,
        known: &[&str],
        expected: &str,
    ) -> Option<Fields<'a>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node,
                path,
                format!("expected {expected}, found {}", node.describe()),
            );
            return None;
        };
        let mut fields = Fields {
            at: node,
            values: HashMap::new(),
        };
        for (key, value) in entries {
            let Some(name) = key.text() else {
                self.error(
                    key,
                    path,
                    format!("keys must be names, found {}", key.describe()),
                );
                continue;
            };
            let key_path = join(path, name);
            if let Some((first, _)) = fields.values.get(name) {
                let first_line = first.line;
                self.error(
                    key,
                    &key_path,
                    format!("duplicate key; the first is on line {first_line}"),
                );
                continue;
            }
            // Top-level keys starting with a dot are a place for anchors (`.defaults: &defaults`).
            let hidden = path.is_empty() && name.starts_with('.');
            if !known.contains(&name) && !hidden {
                let hint = match suggest(name, known) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("known keys here: {}", list(known)),
                };
                self.warn(key, &key_path, format!("unknown key, ignored; {hint}"));
            }
            fields.values.insert(name, (key, value));
        }
        Some(fields)
    }
}

fn cap(mut diagnostics: Vec<Diagnostic>, what: &str) -> Vec<Diagnostic> {
    diagnostics.sort_by_key(|d| (d.line, d.column));
    if diagnostics.len() > MAX_DIAGNOSTICS {
        let more = diagnostics.len() - MAX_DIAGNOSTICS;
        diagnostics.truncate(MAX_DIAGNOSTICS);
        let (line, column) = diagnostics.last().map_or((1, 1), |d| (d.line, d.column));
        diagnostics.push(Diagnostic::new(
            line,
            column,
            "",
            format!("{more} more {what} not shown"),
        ));
    }
    diagnostics
}

/// A mapping's entries by key name.
pub struct Fields<'a> {
    /// The mapping itself: where "is required" errors point.
    pub at: &'a Node,
    values: HashMap<&'a str, (&'a Node, &'a Node)>,
}

impl<'a> Fields<'a> {
    /// The value of `key`, null or not.
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.values.get(key).map(|(_, value)| *value)
    }

    /// The value of `key` unless it is absent or null.
    pub fn value(&self, key: &str) -> Option<&'a Node> {
        self.get(key).filter(|v| !v.is_null())
    }

    /// Where `key` is written, when it is.
    pub fn key_node(&self, key: &str) -> Option<&'a Node> {
        self.values.get(key).map(|(key, _)| *key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The known key closest to `key`, when it is close enough to be what was meant: a different case,
/// or a few typos for the key's length (`scrpt`, `prequisites`, `image-name`).
pub fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let key = key.to_lowercase().replace('-', "_");
    known
        .iter()
        .map(|k| (strsim::osa_distance(&key, &k.to_lowercase()), *k))
        .filter(|(distance, k)| *distance <= (k.len() / 4).clamp(1, 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

/// Checks the whole document and builds the pipeline it describes (meaningful only without errors).
pub fn check(root: &Node, c: &mut Checker) -> Pipeline {
    let is_jobs_form = matches!(&root.value, Value::Map(entries) if entries.iter().any(|(k, _)| k.text() == Some("jobs")));
    if is_jobs_form {
        return check_jobs_form(root, c);
    }
    let mut known = JOB_KEYS.to_vec();
    known.extend(["prequisties", "run_on", "jobs"]);
    let expected = "a mapping with `script` (or `jobs`) at the top level";
    let Some(fields) = c.fields(root, "", &known, expected) else {
        return Pipeline {
            jobs: Vec::new(),
            run_on: None,
        };
    };
    let job = check_job(c, &fields, "", "default".to_string());
    let run_on = fields
        .get("run_on")
        .and_then(|node| run_on::check(c, node, "run_on"));
    Pipeline {
        jobs: vec![job],
        run_on,
    }
}

fn check_jobs_form(root: &Node, c: &mut Checker) -> Pipeline {
    // The single-job keys are known here so they are not also reported as unknown.
    let mut known = vec!["jobs", "run_on", "prequisties"];
    known.extend(JOB_KEYS);
    let Some(fields) = c.fields(root, "", &known, "a mapping") else {
        return Pipeline {
            jobs: Vec::new(),
            run_on: None,
        };
    };
    // Mixing the forms would leave something written in the file unused.
    for key in JOB_KEYS {
        if let Some(at) = fields.key_node(key) {
            c.error(at, key, "not allowed beside `jobs`: move it into each job");
        }
    }
    if let Some(at) = fields.key_node("prequisties") {
        let message = "not allowed beside `jobs`: give each job `prerequisites: {image_name: ...}`";
        c.error(at, "prequisties", message);
    }
    let mut jobs = Vec::new();
    let jobs_node = fields.get("jobs");
    match jobs_node.map(|n| &n.value) {
        Some(Value::Seq(items)) => {
            let at = jobs_node.unwrap_or(root);
            if items.is_empty() {
                c.error(at, "jobs", "must list at least one job");
            } else if items.len() > MAX_JOBS {
                c.error(
                    at,
                    "jobs",
                    format!("at most {MAX_JOBS} jobs are allowed, found {}", items.len()),
                );
            }
            for (i, item) in items.iter().enumerate() {
                let path = format!("jobs[{i}]");
                let mut known = vec!["name"];
                known.extend(JOB_KEYS);
                let expected = "a job: a mapping with `name` and `script`";
                let Some(job) = c.fields(item, &path, &known, expected) else {
                    continue;
                };
                let name = required_text(c, &job, &path, "name", "the job's name")
                    .map(|(name, _)| name)
                    .unwrap_or_default();
                jobs.push(check_job(c, &job, &path, name));
            }
        }
        _ => {
            let at = jobs_node.unwrap_or(root);
            c.error(
                at,
                "jobs",
                format!("expected a list of jobs, found {}", at.describe()),
            );
        }
    }
    let run_on = fields
        .get("run_on")
        .and_then(|node| run_on::check(c, node, "run_on"));
    Pipeline { jobs, run_on }
}

/// One job from its mapping (the top level, or an entry of `jobs`).
fn check_job(c: &mut Checker, job: &Fields<'_>, path: &str, name: String) -> PipelineJob {
    let Prerequisites {
        mut image_name,
        shell_bin,
        resources,
        labels,
    } = match job.get("prerequisites") {
        Some(node) => prerequisites(c, node, &join(path, "prerequisites")),
        None => Prerequisites::default(),
    };
    // Only the top level of the first form had the legacy key; in `jobs` it is just unknown.
    let legacy = if path.is_empty() {
        job.get("prequisties")
    } else {
        None
    };
    if let Some(legacy) = legacy {
        let image = legacy_prerequisites(c, legacy, "prequisties");
        if image_name.is_some() {
            c.warn(
                legacy,
                "prequisties",
                "ignored: `prerequisites` is also set",
            );
        } else {
            image_name = image;
        }
    }
    PipelineJob {
        name,
        image_name,
        shell_bin,
        resources,
        labels,
        install: job
            .get("install")
            .map(|n| install(c, n, &join(path, "install")))
            .unwrap_or_default(),
        steps: script(c, job, path),
        timeout_secs: job
            .get("timeout")
            .and_then(|n| timeout(c, n, &join(path, "timeout"))),
        bin_path: optional_text(c, job.get("bin_path"), &join(path, "bin_path"), "a path"),
    }
}

/// What a job asks of its machine.
#[derive(Default)]
struct Prerequisites {
    image_name: Option<String>,
    shell_bin: Option<String>,
    resources: crate::resources::Resources,
    labels: Vec<String>,
}

fn prerequisites(c: &mut Checker, node: &Node, path: &str) -> Prerequisites {
    if node.is_null() {
        return Prerequisites::default();
    }
    let expected = "a mapping such as `{image_name: ubuntu:22.04, shell_bin: /bin/bash}`";
    let Some(fields) = c.fields(node, path, &PREREQUISITE_KEYS, expected) else {
        return Prerequisites::default();
    };
    let image = optional_text(
        c,
        fields.get("image_name"),
        &join(path, "image_name"),
        "an image name",
    );
    // `imageName` is the key's early spelling (spring 2020).
    let early = optional_text(
        c,
        fields.get("imageName"),
        &join(path, "imageName"),
        "an image name",
    );
    if let (Some(_), Some(at)) = (&image, fields.key_node("imageName")) {
        c.warn(
            at,
            &join(path, "imageName"),
            "ignored: `image_name` is also set",
        );
    }
    let shell = optional_text(
        c,
        fields.get("shell_bin"),
        &join(path, "shell_bin"),
        "the path of a shell",
    );
    let resources = crate::resources::Resources {
        cpus: fields.get("cpus").and_then(|n| {
            number(c, n, &join(path, "cpus"), "a number of CPUs such as 1.5")
                .and_then(|text| text.parse::<f64>().ok())
                .filter(|cpus| *cpus > 0.0 && cpus.is_finite())
                .or_else(|| wrong(c, n, &join(path, "cpus"), "a number of CPUs such as 1.5"))
        }),
        memory_mb: count(
            c,
            fields.get("memory_mb"),
            &join(path, "memory_mb"),
            "a whole number of MiB such as 2048",
        ),
        disk_gb: None,
        pids: count(
            c,
            fields.get("pids"),
            &join(path, "pids"),
            "a whole number of processes such as 512",
        ),
    };
    if let (Some(pids), Some(node)) = (resources.pids, fields.get("pids"))
        && pids < crate::resources::MIN_PIDS
    {
        c.error(
            node,
            &join(path, "pids"),
            format!(
                "must be at least {}: the agent's own threads count too",
                crate::resources::MIN_PIDS
            ),
        );
    }
    let labels = fields
        .get("labels")
        .map(|node| labels(c, node, &join(path, "labels")))
        .unwrap_or_default();
    Prerequisites {
        image_name: image.or(early),
        shell_bin: shell,
        resources,
        labels,
    }
}

/// What a pool host must offer: one label or a list of them, each letters, digits, `.`, `_`, `-`.
fn labels(c: &mut Checker, node: &Node, path: &str) -> Vec<String> {
    let expected = "a label or a list of labels such as `[linux, gpu]`";
    let items: Vec<(String, &Node)> = match &node.value {
        _ if node.is_null() => Vec::new(),
        Value::Scalar { text, .. } => vec![(text.trim().to_string(), node)],
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match &item.value {
                Value::Scalar { text, .. } => Some((text.trim().to_string(), item)),
                _ => wrong(c, item, &format!("{path}[{i}]"), "a label (a string)"),
            })
            .collect(),
        Value::Map(_) => return wrong(c, node, path, expected).unwrap_or_default(),
    };
    let mut labels = Vec::new();
    for (label, at) in items {
        if let Err(problem) = crate::labels::validate(&label) {
            c.error(at, path, problem);
        } else if !labels.contains(&label) {
            labels.push(label);
        }
    }
    labels
}

/// The text of a plain (unquoted) scalar, or an error saying what was expected.
fn number<'a>(c: &mut Checker, node: &'a Node, path: &str, expected: &str) -> Option<&'a str> {
    match &node.value {
        _ if node.is_null() => None,
        Value::Scalar { text, plain: true } => Some(text.trim()),
        _ => wrong(c, node, path, expected),
    }
}

/// A positive whole number (`2048`, not `2048.5` or `'2048'`).
fn count(c: &mut Checker, node: Option<&Node>, path: &str, expected: &str) -> Option<u64> {
    let node = node?;
    number(c, node, path, expected)?
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .or_else(|| wrong(c, node, path, expected))
}

fn wrong<T>(c: &mut Checker, node: &Node, path: &str, expected: &str) -> Option<T> {
    c.error(
        node,
        path,
        format!("expected {expected}, found {}", node.describe()),
    );
    None
}

/// The original's first form, `prequisties: [jsx, docker]` (sic), chose a base image by its first
/// name.
fn legacy_prerequisites(c: &mut Checker, node: &Node, path: &str) -> Option<String> {
    match &node.value {
        _ if node.is_null() => None,
        Value::Seq(items) => {
            let mut first = None;
            for (i, item) in items.iter().enumerate() {
                match item.text() {
                    Some(name) => {
                        first.get_or_insert_with(|| name.to_string());
                    }
                    None => {
                        let found = item.describe();
                        c.error(
                            item,
                            &format!("{path}[{i}]"),
                            format!("expected a name such as `jsx`, found {found}"),
                        );
                    }
                }
            }
            first
        }
        _ => {
            c.error(
                node,
                path,
                format!("expected a list such as `[jsx]`, found {}", node.describe()),
            );
            None
        }
    }
}

fn install(c: &mut Checker, node: &Node, path: &str) -> Vec<String> {
    match &node.value {
        _ if node.is_null() => Vec::new(),
        Value::Scalar { text, .. } if text.trim().is_empty() => Vec::new(),
        Value::Scalar { text, .. } => vec![text.clone()],
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| command(c, item, &format!("{path}[{i}]")))
            .collect(),
        Value::Map(_) => {
            let found = node.describe();
            c.error(
                node,
                path,
                format!(
                    "expected the install script (a string) or a list of commands, found {found}"
                ),
            );
            Vec::new()
        }
    }
}

/// A command written as any YAML scalar: `- false` or `- 3` are commands too, not booleans or numbers.
fn command(c: &mut Checker, node: &Node, path: &str) -> Option<String> {
    match node.text() {
        Some(text) if text.trim().is_empty() => {
            c.error(node, path, "command is empty");
            None
        }
        Some(text) if matches!(node.value, Value::Scalar { .. }) => Some(text.to_string()),
        _ => {
            c.error(
                node,
                path,
                format!("expected a command (a string), found {}", node.describe()),
            );
            None
        }
    }
}

fn script(c: &mut Checker, job: &Fields<'_>, path: &str) -> Vec<ScriptStep> {
    let path = join(path, "script");
    let Some(node) = job.value("script") else {
        let at = job.get("script").unwrap_or(job.at);
        c.error(at, &path, "is required: a list of commands to run");
        return Vec::new();
    };
    let Value::Seq(items) = &node.value else {
        c.error(
            node,
            &path,
            format!("expected a list of commands, found {}", node.describe()),
        );
        return Vec::new();
    };
    if items.is_empty() {
        c.error(node, &path, "must list at least one command");
    }
    let mut steps = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        if let Value::Map(_) = item.value {
            steps.extend(named_step(c, item, &item_path));
        } else if let Some(cmd) = command(c, item, &item_path) {
            steps.push(ScriptStep {
                name: cmd.clone(),
                cmd,
            });
        }
    }
    steps
}

/// A `{name, cmd}` step (the original also had `type: neph` steps, which ZeroCI cannot run).
fn named_step(c: &mut Checker, node: &Node, path: &str) -> Option<ScriptStep> {
    let fields = c.fields(node, path, &STEP_KEYS, "a step")?;
    let kind = optional_text(c, fields.get("type"), &join(path, "type"), "a step type");
    if let (Some(kind), Some(at)) = (&kind, fields.get("type")) {
        if kind != "cmd" {
            let message = format!(
                "step type `{kind}` cannot run in ZeroCI: only shell commands (`cmd`) are supported"
            );
            c.error(at, &join(path, "type"), message);
            return None;
        }
    }
    for key in NEPH_KEYS {
        if let Some(at) = fields.key_node(key) {
            c.warn(
                at,
                &join(path, key),
                "ignored: only `type: neph` steps used it, and ZeroCI runs none",
            );
        }
    }
    let name = optional_text(
        c,
        fields.get("name"),
        &join(path, "name"),
        "the step's name",
    );
    let cmd_path = join(path, "cmd");
    let cmd = match fields.value("cmd") {
        Some(cmd) => command(c, cmd, &cmd_path)?,
        None => {
            c.error(
                fields.get("cmd").unwrap_or(node),
                &cmd_path,
                "is required: the command to run",
            );
            return None;
        }
    };
    Some(ScriptStep {
        name: name.unwrap_or_else(|| cmd.clone()),
        cmd,
    })
}

fn timeout(c: &mut Checker, node: &Node, path: &str) -> Option<u64> {
    if node.is_null() {
        return None;
    }
    let (number, quoted) = match &node.value {
        Value::Scalar { text, plain } => (text.trim().parse::<u64>().ok(), !plain),
        _ => (None, false),
    };
    match number {
        Some(0) => c.error(node, path, "must be a positive number of seconds, found 0"),
        Some(_) if quoted => c.error(
            node,
            path,
            "expected a number of seconds, found a quoted string: write it without quotes",
        ),
        Some(secs) => return Some(secs),
        None => c.error(
            node,
            path,
            format!(
                "expected a positive whole number of seconds such as 3600, found {}",
                node.describe()
            ),
        ),
    }
    None
}

/// An optional string value: absent, null or empty means unset; a list or mapping is an error.
pub fn optional_text(
    c: &mut Checker,
    node: Option<&Node>,
    path: &str,
    expected: &str,
) -> Option<String> {
    let node = node.filter(|n| !n.is_null())?;
    match &node.value {
        Value::Scalar { text, .. } if text.trim().is_empty() => None,
        Value::Scalar { text, .. } => Some(text.clone()),
        _ => {
            c.error(
                node,
                path,
                format!("expected {expected} (a string), found {}", node.describe()),
            );
            None
        }
    }
}

/// A string value that must be present and not empty, with where it is written.
pub fn required_text<'a>(
    c: &mut Checker,
    fields: &Fields<'a>,
    path: &str,
    key: &str,
    expected: &str,
) -> Option<(String, &'a Node)> {
    let key_path = join(path, key);
    let Some(node) = fields.get(key) else {
        c.error(fields.at, &key_path, format!("is required: {expected}"));
        return None;
    };
    let text = optional_text(c, Some(node), &key_path, expected);
    if text.is_none() && matches!(node.value, Value::Scalar { .. }) {
        c.error(node, &key_path, format!("must not be empty: {expected}"));
    }
    text.map(|t| (t, node))
}
