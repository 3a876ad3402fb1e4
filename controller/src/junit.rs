//! JUnit XML test reports written by a CI step, parsed into a summary and a list of test cases.
//!
//! # What is accepted
//!
//! "JUnit XML" has no single schema; every producer writes its own dialect. This module accepts the
//! shapes that occur in practice:
//!
//! - a `<testsuite>` root (nose's `nosetests --with-xunit`, Maven Surefire, Ant), or a
//!   `<testsuites>` root holding `<testsuite>` elements, which may nest again (pytest
//!   `--junitxml`, go-junit-report, Gradle aggregations, jest-junit);
//! - `<testcase>` elements with `classname`, `name`, `time`, and pytest's `file`/`line` (`line` is
//!   kept as written; pytest writes it 0-based);
//! - outcome children `<failure>`, `<error>` and `<skipped>`, with a `message` attribute and/or a
//!   text body (plain, entity-escaped or CDATA); gtest/CTest's `status="notrun"`/`"disabled"` and
//!   `result="skipped"` also mark a case skipped;
//! - everything else (`<properties>`, `<system-out>`, `<system-err>`, Surefire's `flakyFailure` /
//!   `rerunFailure`, unknown elements) is skipped with its whole subtree. A flaky-then-passed
//!   Surefire case therefore counts as passed, which is what the build tool itself concluded.
//!
//! # Why it is built this way
//!
//! The input comes from user code, so it is treated as hostile:
//!
//! - size is capped at [`MAX_REPORT_BYTES`] before any work, so memory stays proportional to a
//!   bounded input (no case field can grow beyond the input, since nothing expands);
//! - quick-xml is a pull parser that never expands custom entities: `&lol9;` stays the literal text
//!   `&lol9;`, so a "billion laughs" document costs its own size and no more. Only the five
//!   predefined entities and character references are decoded, by this module itself, leniently
//!   (an unknown or broken reference, or a bare `&`, is kept as written rather than failing the
//!   report);
//! - the walk is an explicit loop with a heap stack of frames, never recursion, so 100k nested
//!   elements cannot overflow the thread stack;
//! - text is decoded leniently: UTF-8 (invalid bytes replaced), UTF-16 with a BOM, and documents
//!   declaring ISO-8859-1/Latin-1 are transcoded first;
//! - stored cases are capped at [`MAX_CASES`] (failed and errored cases are kept in preference to
//!   passed/skipped ones, since they are what a person opens a report for), failure bodies at
//!   [`MAX_DETAILS_BYTES`] and names/messages at [`MAX_FIELD_BYTES`]; the totals still count every
//!   case.
//!
//! Totals are computed from the `<testcase>` elements found, not from the suites' `tests=` /
//! `failures=` attributes, which producers get wrong (nesting double-counts, pytest's `errors`
//! counts teardown errors of passed tests). Only a report with no `<testcase>` at all falls back to
//! the attributes (of the innermost suites, else of the `<testsuites>` root). `time_secs` in the
//! totals is likewise the sum of the cases' times, so it adds up across [`merge`].
//!
//! Broken XML (a report cut short because the step was killed, mismatched tags) is refused with a
//! [`JunitError::Malformed`] naming the line and column, rather than returning a partial report
//! that would under-count silently.

mod parser;
mod text;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io::Read;

use serde::{Deserialize, Serialize};

/// Reports larger than this are refused unparsed (32 MiB).
pub const MAX_REPORT_BYTES: usize = 32 * 1024 * 1024;
/// At most this many cases are kept in [`TestReport::cases`]; see [`TestReport::truncated`].
pub const MAX_CASES: usize = 10_000;
/// Cap on [`TestCase::details`] (the failure/error/skipped text bodies of one case).
pub const MAX_DETAILS_BYTES: usize = 64 * 1024;
/// Cap on single-line fields: suite, class and case names, message, file.
pub const MAX_FIELD_BYTES: usize = 4 * 1024;
/// At most this many distinct suite names are kept in [`TestReport::suites`].
pub const MAX_SUITES: usize = 10_000;

/// A parsed report (or several merged): totals, suite names and the cases themselves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    pub totals: TestTotals,
    /// Distinct non-empty `<testsuite name=…>` values, in document order.
    pub suites: Vec<String>,
    /// The cases in document order; at most [`MAX_CASES`].
    pub cases: Vec<TestCase>,
    /// Some cases were left out of `cases` because of [`MAX_CASES`] (totals still count them).
    pub truncated: bool,
}

/// Counts over all cases; `total == passed + failed + errors + skipped`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TestTotals {
    pub total: u32,
    pub passed: u32,
    pub failed: u32,
    pub errors: u32,
    pub skipped: u32,
    /// Sum of the cases' times (or the suites' `time` when the report lists no case).
    pub time_secs: f64,
}

/// One `<testcase>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    /// Name of the innermost enclosing `<testsuite>`, or empty.
    pub suite: String,
    pub classname: String,
    pub name: String,
    pub time_secs: f64,
    pub status: CaseStatus,
    /// The outcome's `message` attribute, else the first non-empty line of its text, else its
    /// `type` attribute; empty for passed cases.
    pub message: String,
    /// Text bodies of the outcome elements (traceback, skip location), at most
    /// [`MAX_DETAILS_BYTES`].
    pub details: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Outcome of a case. A case with both `<failure>` and `<error>` takes the first one that appears
/// (pytest writes a failed test whose teardown also errored that way); `<skipped>` only wins when
/// there is neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    Passed,
    Failed,
    Error,
    Skipped,
}

impl CaseStatus {
    /// The lowercase name, as in JSON and the control API.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Passed => "passed",
            CaseStatus::Failed => "failed",
            CaseStatus::Error => "error",
            CaseStatus::Skipped => "skipped",
        }
    }

    /// Failed or errored: the cases a person looks for in a report.
    pub fn is_problem(self) -> bool {
        matches!(self, CaseStatus::Failed | CaseStatus::Error)
    }
}

/// Why a report could not be read. Messages are meant for the person who owns the CI step.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("test report is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("test report is empty")]
    Empty,
    #[error("test report is not XML: {0}")]
    NotXml(String),
    #[error("test report's root element is <{0}>, expected <testsuites> or <testsuite>")]
    WrongRoot(String),
    #[error(
        "test report is malformed XML at line {line}, column {column} (byte {offset}): {message}"
    )]
    Malformed {
        line: u64,
        column: u64,
        offset: u64,
        message: String,
    },
    #[error("cannot read test report: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses one JUnit XML document. Never panics and never expands entities; see the module doc for
/// what is accepted.
pub fn parse(xml: &[u8]) -> Result<TestReport, JunitError> {
    parser::parse(xml)
}

/// Reads at most [`MAX_REPORT_BYTES`] (+1, to detect overflow) from `reader` and parses them, so a
/// huge file is refused without being loaded whole.
pub fn parse_reader(reader: impl Read) -> Result<TestReport, JunitError> {
    let mut buf = Vec::new();
    reader
        .take(MAX_REPORT_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    parse(&buf)
}

/// Merges the reports of several XML files of one step into one.
pub fn merge(reports: impl IntoIterator<Item = TestReport>) -> TestReport {
    let mut merged = TestReport::default();
    for report in reports {
        merged.merge(report);
    }
    merged
}

impl TestReport {
    /// Adds `other` into `self`: totals add up, new suite names are appended, cases are appended
    /// within [`MAX_CASES`] (preferring failed/errored cases, as when parsing).
    pub fn merge(&mut self, other: TestReport) {
        self.totals.add(&other.totals);

        let mut seen: HashSet<String> = self.suites.iter().cloned().collect();
        for name in other.suites {
            if self.suites.len() >= MAX_SUITES {
                break;
            }
            if seen.insert(name.clone()) {
                self.suites.push(name);
            }
        }

        let mut keeper = CaseKeeper::default();
        for case in std::mem::take(&mut self.cases)
            .into_iter()
            .chain(other.cases)
        {
            keeper.push(case);
        }
        let (cases, dropped) = keeper.finish();
        self.cases = cases;
        self.truncated = self.truncated || other.truncated || dropped;
    }
}

impl TestTotals {
    /// Totals from counts of any size: absurd counts are cut so that every field fits and
    /// `total == passed + failed + errors + skipped` still holds (the outcomes that are not a pass
    /// keep their share first).
    pub fn from_counts(
        passed: u64,
        failed: u64,
        errors: u64,
        skipped: u64,
        time_secs: f64,
    ) -> Self {
        let mut room = u64::from(u32::MAX);
        let mut take = |n: u64| {
            let kept = n.min(room);
            room -= kept;
            kept as u32
        };
        let (failed, errors, skipped, passed) =
            (take(failed), take(errors), take(skipped), take(passed));
        TestTotals {
            total: passed + failed + errors + skipped,
            passed,
            failed,
            errors,
            skipped,
            time_secs,
        }
    }

    /// Counts one case.
    fn count(&mut self, status: CaseStatus, time_secs: f64) {
        let one = |s: CaseStatus| u64::from(s == status);
        self.add(&TestTotals::from_counts(
            one(CaseStatus::Passed),
            one(CaseStatus::Failed),
            one(CaseStatus::Error),
            one(CaseStatus::Skipped),
            time_secs,
        ));
    }

    /// Adds another report's counts (several reports of one step, or merged reports).
    pub fn add(&mut self, other: &TestTotals) {
        let sum = |a: u32, b: u32| u64::from(a) + u64::from(b);
        *self = TestTotals::from_counts(
            sum(self.passed, other.passed),
            sum(self.failed, other.failed),
            sum(self.errors, other.errors),
            sum(self.skipped, other.skipped),
            self.time_secs + other.time_secs,
        );
    }
}

/// Keeps at most [`MAX_CASES`] cases, all failed/errored ones first (up to the cap) and then the
/// earliest others, and hands them back in their original order. Each bucket alone is capped, so
/// memory stays bounded while streaming through a report with a million cases.
#[derive(Default)]
struct CaseKeeper {
    seq: u64,
    problems: Vec<(u64, TestCase)>,
    others: Vec<(u64, TestCase)>,
    dropped: bool,
}

impl CaseKeeper {
    fn push(&mut self, case: TestCase) {
        self.seq += 1;
        let bucket = if case.status.is_problem() {
            &mut self.problems
        } else {
            &mut self.others
        };
        if bucket.len() < MAX_CASES {
            bucket.push((self.seq, case));
        } else {
            self.dropped = true;
        }
    }

    /// The kept cases in push order, and whether any was dropped.
    fn finish(self) -> (Vec<TestCase>, bool) {
        let CaseKeeper {
            problems,
            mut others,
            mut dropped,
            ..
        } = self;
        let room = MAX_CASES.saturating_sub(problems.len());
        if others.len() > room {
            others.truncate(room);
            dropped = true;
        }
        let mut merged = Vec::with_capacity(problems.len() + others.len());
        let mut problems = problems.into_iter().peekable();
        let mut others = others.into_iter().peekable();
        loop {
            let take_problem = match (problems.peek(), others.peek()) {
                (Some((p, _)), Some((o, _))) => p < o,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_problem {
                problems.next()
            } else {
                others.next()
            };
            if let Some((_, case)) = next {
                merged.push(case);
            }
        }
        (merged, dropped)
    }
}
