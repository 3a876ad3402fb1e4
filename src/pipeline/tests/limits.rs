//! The resource limits: file size, alias expansion, nesting, number of diagnostics.

use std::time::{Duration, Instant};

use super::{fixture, positions};
use crate::pipeline::*;

#[test]
fn a_ten_megabyte_file_is_refused_quickly() {
    let mut big = b"script:\n".to_vec();
    while big.len() < 10 * 1024 * 1024 {
        big.extend_from_slice(b"  - echo this line makes the file large\n");
    }
    let started = Instant::now();
    let report = lint(&big);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        positions(&report.errors),
        [(
            1,
            1,
            "",
            "file is larger than 1048576 bytes, the limit for a pipeline file"
        )]
    );
    assert_eq!(too_large().errors, report.errors);
}

#[test]
fn a_file_just_under_the_limit_is_parsed() {
    let mut text = b"script:\n".to_vec();
    while text.len() < MAX_FILE_BYTES - 64 {
        text.extend_from_slice(b"  - echo a line\n");
    }
    let started = Instant::now();
    let p = parse(&text).unwrap();
    assert!(p.jobs[0].steps.len() > 60_000);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn billion_laughs_is_an_error_quickly() {
    let started = Instant::now();
    let report = lint(&fixture("billion_laughs.yaml"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0]
            .message
            .contains("aliases expand the document by more than"),
        "{:?}",
        report.errors
    );
    // Wider and deeper than the file: still stopped at the budget, not after expanding.
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..40 {
        let items = vec![format!("*a{}", level - 1); 16].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    text.push_str("script: *a39\n");
    let started = Instant::now();
    assert!(
        lint(text.as_bytes()).errors[0]
            .message
            .contains("aliases expand")
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // One long string aliased many times counts by its length.
    let long = "x".repeat(200_000);
    let text = format!("s: &s {long}\nscript: [*s, *s, *s, *s, *s, *s, *s]\n");
    assert!(
        lint(text.as_bytes()).errors[0]
            .message
            .contains("aliases expand")
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for text in [
        "[".repeat(100_000),
        format!("script:\n{}x\n", "- ".repeat(50_000)),
        format!("{}x", "{a: ".repeat(5_000)),
    ] {
        let report = lint(text.as_bytes());
        assert!(!report.is_valid());
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.message.contains("nested deeper than 64")
                    || e.message.contains("invalid YAML")),
            "{:?}",
            report.errors
        );
    }
}

#[test]
fn many_mistakes_are_capped_with_a_count() {
    let text: String = std::iter::once("script: [a]\n".to_string())
        .chain((0..500).map(|i| format!("k{i}: v\n")))
        .collect();
    let report = lint(text.as_bytes());
    assert!(report.is_valid());
    assert_eq!(report.warnings.len(), MAX_DIAGNOSTICS + 1);
    assert_eq!(
        report.warnings[MAX_DIAGNOSTICS].message,
        "400 more warnings not shown"
    );
}

#[test]
fn recursive_and_bad_merges_are_errors() {
    assert!(!lint(b"a: &a [*a]\nscript: [x]\n").is_valid());
    let report = lint(b"script: [x]\nprerequisites:\n  <<: [1, 2]\n");
    assert_eq!(
        positions(&report.errors),
        [(3, 8, "prerequisites", "`<<` merges mappings only")]
    );
}
