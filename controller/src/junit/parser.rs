//! The event loop: walks quick-xml's pull events with an explicit frame stack (no recursion) and
//! builds the report as it goes, so memory is the stack of open elements plus the kept cases.

use std::collections::HashSet;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::text::{
    cap, cut, first_line, line_column, parse_count, parse_line, parse_time, push_within,
    resolve_reference, to_utf8, unescape,
};
use super::{
    CaseKeeper, CaseStatus, JunitError, MAX_DETAILS_BYTES, MAX_FIELD_BYTES, MAX_REPORT_BYTES,
    MAX_SUITES, TestCase, TestReport, TestTotals,
};

pub(super) fn parse(input: &[u8]) -> Result<TestReport, JunitError> {
    if input.len() > MAX_REPORT_BYTES {
        return Err(JunitError::TooLarge {
            limit: MAX_REPORT_BYTES,
        });
    }
    let doc = to_utf8(input);
    if doc.iter().all(u8::is_ascii_whitespace) {
        return Err(JunitError::Empty);
    }
    Walker::default().run(&doc)
}

/// What an open element is to us. `Other` covers everything skipped with its subtree.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Frame {
    Suites,
    Suite,
    Case,
    Outcome,
    Other,
}

/// Count attributes of a `<testsuite>`/`<testsuites>`, used only when the report has no case.
#[derive(Default)]
struct SuiteCounts {
    tests: Option<u32>,
    failures: Option<u32>,
    errors: Option<u32>,
    skipped: Option<u32>,
    time_secs: f64,
}

impl SuiteCounts {
    fn read(e: &BytesStart) -> Self {
        let count = |key: &[u8]| attr(e, key).and_then(|v| parse_count(&v));
        SuiteCounts {
            tests: count(b"tests"),
            failures: count(b"failures"),
            errors: count(b"errors"),
            // nose writes `skip=`, everyone else `skipped=`.
            skipped: count(b"skipped").or_else(|| count(b"skip")),
            time_secs: attr(e, b"time").map_or(0.0, |v| parse_time(&v)),
        }
    }

    fn any(&self) -> bool {
        self.tests.is_some()
            || self.failures.is_some()
            || self.errors.is_some()
            || self.skipped.is_some()
    }

    /// Totals that keep `total == passed + failed + errors + skipped` even when the attributes
    /// disagree with each other (then `total` grows to fit).
    fn totals(&self) -> TestTotals {
        let count = |n: Option<u32>| u64::from(n.unwrap_or(0));
        let (failed, errors, skipped) = (
            count(self.failures),
            count(self.errors),
            count(self.skipped),
        );
        let not_passed = failed + errors + skipped;
        let passed = count(self.tests).saturating_sub(not_passed);
        TestTotals::from_counts(passed, failed, errors, skipped, self.time_secs)
    }
}

struct OpenSuite {
    name: String,
    counts: SuiteCounts,
    has_child_suite: bool,
}

/// The `<testcase>` being read.
struct OpenCase {
    case: TestCase,
    /// Outcome decided by a `<failure>`/`<error>`/`<skipped>` child so far.
    outcome: Option<CaseStatus>,
    /// gtest/CTest mark not-run cases with attributes instead of a `<skipped>` child.
    skipped_by_attribute: bool,
    details_cut: bool,
    /// The outcome element currently open: whether it decides the case, its `type` (a message of
    /// last resort) and its text so far.
    current: Option<OpenOutcome>,
}

struct OpenOutcome {
    decides: bool,
    kind: String,
    text: String,
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    suites: Vec<OpenSuite>,
    case: Option<OpenCase>,
    root_counts: Option<SuiteCounts>,
    leaf_totals: Option<TestTotals>,
    totals: TestTotals,
    cases_seen: u64,
    keeper: CaseKeeper,
    suite_names: Vec<String>,
    suite_names_seen: HashSet<String>,
}

impl Walker {
    fn run(mut self, doc: &[u8]) -> Result<TestReport, JunitError> {
        let mut reader = Reader::from_reader(doc);
        let config = reader.config_mut();
        // `a & b` in a message is a common writer bug; keep the `&` rather than refuse the report.
        config.allow_dangling_amp = true;
        config.check_end_names = true;
        config.expand_empty_elements = false;

        let mut root_seen = false;
        loop {
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(err) => {
                    let offset = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
                    return Err(malformed(doc, offset, err.to_string()));
                }
            };
            match event {
                Event::Start(e) if !root_seen => {
                    check_root(&e)?;
                    root_seen = true;
                    self.open(&e);
                }
                Event::Empty(e) if !root_seen => {
                    // `<testsuite name="x" tests="0"/>`: a whole, empty report.
                    check_root(&e)?;
                    self.open(&e);
                    self.close();
                    break;
                }
                Event::Start(e) => self.open(&e),
                Event::Empty(e) => {
                    self.open(&e);
                    self.close();
                }
                Event::End(_) => {
                    self.close();
                    // Whatever follows the root (a second document, log noise) is not ours.
                    if self.stack.is_empty() {
                        break;
                    }
                }
                Event::Text(t) if !root_seen => {
                    if !t.iter().all(u8::is_ascii_whitespace) {
                        return Err(not_xml(&t));
                    }
                }
                Event::CData(t) if !root_seen => return Err(not_xml(&t)),
                Event::GeneralRef(_) if !root_seen => {
                    return Err(JunitError::NotXml("text before the root element".into()));
                }
                // Only outcome bodies are kept: skip decoding the rest (system-out can be most of
                // a report).
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) if !self.capturing() => {}
                // Text events hold no references (quick-xml reports those separately), so the
                // bytes are the text itself; CDATA is never escaped.
                Event::Text(t) => self.text(&String::from_utf8_lossy(&t)),
                Event::CData(t) => self.text(&String::from_utf8_lossy(&t)),
                Event::GeneralRef(r) => {
                    let name = String::from_utf8_lossy(&r);
                    match resolve_reference(&name) {
                        Some(c) => self.text(c.encode_utf8(&mut [0; 4])),
                        // Custom entities are never expanded: this is the entity-bomb defence.
                        None => self.text(&format!("&{name};")),
                    }
                }
                Event::Eof if !root_seen => {
                    return Err(JunitError::NotXml("no XML element found".into()));
                }
                Event::Eof => {
                    return Err(malformed(
                        doc,
                        doc.len(),
                        format!(
                            "document ends with {} element(s) still open (was the report cut short?)",
                            self.stack.len()
                        ),
                    ));
                }
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            }
        }
        Ok(self.finish())
    }

    fn open(&mut self, e: &BytesStart) {
        let parent = self.stack.last().copied();
        let frame = match (parent, e.local_name().as_ref()) {
            (None, b"testsuites") => {
                self.root_counts = Some(SuiteCounts::read(e));
                Frame::Suites
            }
            (None | Some(Frame::Suites | Frame::Suite), b"testsuite") => {
                self.open_suite(e);
                Frame::Suite
            }
            (Some(Frame::Suites | Frame::Suite), b"testcase") => {
                self.open_case(e);
                Frame::Case
            }
            (Some(Frame::Case), b"failure") => self.open_outcome(e, CaseStatus::Failed),
            (Some(Frame::Case), b"error") => self.open_outcome(e, CaseStatus::Error),
            (Some(Frame::Case), b"skipped") => self.open_outcome(e, CaseStatus::Skipped),
            _ => Frame::Other,
        };
        self.stack.push(frame);
    }

    fn close(&mut self) {
        match self.stack.pop() {
            Some(Frame::Suite) => self.close_suite(),
            Some(Frame::Case) => self.close_case(),
            Some(Frame::Outcome) => self.close_outcome(),
            Some(Frame::Suites | Frame::Other) | None => {}
        }
    }

    fn open_suite(&mut self, e: &BytesStart) {
        if let Some(parent) = self.suites.last_mut() {
            parent.has_child_suite = true;
        }
        let name = field(e, b"name");
        if !name.is_empty()
            && self.suite_names.len() < MAX_SUITES
            && self.suite_names_seen.insert(name.clone())
        {
            self.suite_names.push(name.clone());
        }
        self.suites.push(OpenSuite {
            name,
            counts: SuiteCounts::read(e),
            has_child_suite: false,
        });
    }

    fn close_suite(&mut self) {
        let Some(suite) = self.suites.pop() else {
            return;
        };
        // Only innermost suites' counts are summed: outer ones usually repeat their children's.
        if !suite.has_child_suite && suite.counts.any() {
            self.leaf_totals
                .get_or_insert_with(TestTotals::default)
                .add(&suite.counts.totals());
        }
    }

    fn open_case(&mut self, e: &BytesStart) {
        let status_attr = attr(e, b"status").unwrap_or_default().to_ascii_lowercase();
        let result_attr = attr(e, b"result").unwrap_or_default().to_ascii_lowercase();
        let skipped_by_attribute = matches!(
            status_attr.as_str(),
            "notrun" | "disabled" | "skipped" | "skip"
        ) || matches!(result_attr.as_str(), "skipped" | "suppressed");
        let suite = self
            .suites
            .last()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let file = Some(field(e, b"file")).filter(|f| !f.is_empty());
        self.case = Some(OpenCase {
            case: TestCase {
                suite,
                classname: field(e, b"classname"),
                name: field(e, b"name"),
                time_secs: attr(e, b"time").map_or(0.0, |v| parse_time(&v)),
                status: CaseStatus::Passed,
                message: String::new(),
                details: String::new(),
                file,
                line: attr(e, b"line").and_then(|v| parse_line(&v)),
            },
            outcome: None,
            skipped_by_attribute,
            details_cut: false,
            current: None,
        });
    }

    fn open_outcome(&mut self, e: &BytesStart, status: CaseStatus) -> Frame {
        let Some(open) = self.case.as_mut() else {
            return Frame::Other;
        };
        // The first failure/error decides; a skip only decides if nothing else has.
        let decides = match open.outcome {
            None => true,
            Some(CaseStatus::Skipped) => status != CaseStatus::Skipped,
            Some(_) => false,
        };
        if decides {
            open.outcome = Some(status);
            open.case.message = field(e, b"message");
        }
        open.current = Some(OpenOutcome {
            decides,
            kind: field(e, b"type"),
            text: String::new(),
        });
        Frame::Outcome
    }

    /// Whether an outcome element is open, so text belongs to its body.
    fn capturing(&self) -> bool {
        self.case.as_ref().is_some_and(|c| c.current.is_some())
    }

    fn text(&mut self, text: &str) {
        let Some(open) = self.case.as_mut() else {
            return;
        };
        // Only outcome bodies are kept. Text anywhere under an open outcome belongs to it (some
        // writers wrap the trace, e.g. `<failure><stackTrace>…</stackTrace></failure>`).
        let Some(current) = open.current.as_mut() else {
            return;
        };
        // Room left for this body in the case's details (bodies are joined by a blank line).
        let room = MAX_DETAILS_BYTES.saturating_sub(open.case.details.len() + 2);
        if !push_within(&mut current.text, text, room) {
            open.details_cut = true;
        }
    }

    fn close_outcome(&mut self) {
        let Some(open) = self.case.as_mut() else {
            return;
        };
        let Some(current) = open.current.take() else {
            return;
        };
        let body = current.text.trim();
        if current.decides && open.case.message.is_empty() {
            let mut message = if body.is_empty() {
                current.kind.clone()
            } else {
                first_line(body).to_string()
            };
            cap(&mut message, MAX_FIELD_BYTES);
            open.case.message = message;
        }
        if !body.is_empty() {
            let details = &mut open.case.details;
            if !details.is_empty() {
                details.push_str("\n\n");
            }
            if !push_within(details, body, MAX_DETAILS_BYTES) {
                open.details_cut = true;
            }
        }
    }

    fn close_case(&mut self) {
        let Some(open) = self.case.take() else {
            return;
        };
        let mut case = open.case;
        case.status = match open.outcome {
            Some(status) => status,
            None if open.skipped_by_attribute => CaseStatus::Skipped,
            None => CaseStatus::Passed,
        };
        if open.details_cut {
            cut(&mut case.details, MAX_DETAILS_BYTES, "\n… (truncated)");
        }
        self.totals.count(case.status, case.time_secs);
        self.cases_seen += 1;
        self.keeper.push(case);
    }

    fn finish(self) -> TestReport {
        let totals = if self.cases_seen > 0 {
            self.totals
        } else if let Some(leaf) = self.leaf_totals {
            leaf
        } else {
            match &self.root_counts {
                Some(root) if root.any() => root.totals(),
                _ => TestTotals::default(),
            }
        };
        let (cases, truncated) = self.keeper.finish();
        TestReport {
            totals,
            suites: self.suite_names,
            cases,
            truncated,
        }
    }
}

fn check_root(e: &BytesStart) -> Result<(), JunitError> {
    let name = e.local_name();
    if matches!(name.as_ref(), b"testsuites" | b"testsuite") {
        return Ok(());
    }
    let mut found = String::from_utf8_lossy(name.as_ref()).into_owned();
    cap(&mut found, 100);
    Err(JunitError::WrongRoot(found))
}

/// The value of attribute `key` (matched on its local name), decoded leniently.
///
/// Attributes quick-xml cannot split (a missing quote, say) are skipped rather than failing the
/// report: the rest of the element is still useful.
fn attr(e: &BytesStart, key: &[u8]) -> Option<String> {
    e.attributes()
        .with_checks(false)
        .flatten()
        .find(|a| a.key.local_name().as_ref() == key)
        .map(|a| unescape(&String::from_utf8_lossy(&a.value)).into_owned())
}

/// An attribute for a one-line field: absent is empty, surrounding whitespace goes (go-junit-report
/// indents its messages), and it is capped.
fn field(e: &BytesStart, key: &[u8]) -> String {
    let value = attr(e, key).unwrap_or_default();
    let mut value = match value.trim() {
        trimmed if trimmed.len() == value.len() => value,
        trimmed => trimmed.to_string(),
    };
    cap(&mut value, MAX_FIELD_BYTES);
    value
}

fn malformed(doc: &[u8], offset: usize, message: String) -> JunitError {
    let (line, column) = line_column(doc, offset);
    JunitError::Malformed {
        line,
        column,
        offset: offset.min(doc.len()) as u64,
        message,
    }
}

fn not_xml(text: &[u8]) -> JunitError {
    let mut start = first_line(&String::from_utf8_lossy(text)).to_string();
    cap(&mut start, 80);
    JunitError::NotXml(format!("it starts with text: {start:?}"))
}
