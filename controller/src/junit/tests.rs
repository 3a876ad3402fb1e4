//! Tests over hand-written reports in the shapes real tools produce (`tests/data/junit/`), plus
//! generated hostile inputs (deep nesting, huge fields, too many cases) that are too big to check in.

use std::time::{Duration, Instant};

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/junit/",
            $name
        ))
    };
}

fn parse_ok(xml: &[u8]) -> TestReport {
    match parse(xml) {
        Ok(report) => report,
        Err(err) => panic!("expected a report, got: {err}"),
    }
}

fn case<'r>(report: &'r TestReport, name: &str) -> &'r TestCase {
    report
        .cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case named {name:?}"))
}

fn totals(
    total: u32,
    passed: u32,
    failed: u32,
    errors: u32,
    skipped: u32,
) -> (u32, u32, u32, u32, u32) {
    (total, passed, failed, errors, skipped)
}

fn counts(t: &TestTotals) -> (u32, u32, u32, u32, u32) {
    (t.total, t.passed, t.failed, t.errors, t.skipped)
}

fn assert_time(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "time {actual} != {expected}"
    );
}

#[test]
fn pytest_report() {
    let report = parse_ok(fixture!("pytest.xml"));
    assert_eq!(counts(&report.totals), totals(8, 3, 2, 1, 2));
    assert_time(report.totals.time_secs, 1.374);
    assert_eq!(report.suites, vec!["pytest"]);
    assert_eq!(report.cases.len(), 8);
    assert!(!report.truncated);

    let add = case(&report, "test_add");
    assert_eq!(add.status, CaseStatus::Passed);
    assert_eq!(add.suite, "pytest");
    assert_eq!(add.classname, "tests.test_math");
    assert_eq!(add.message, "");
    assert_eq!(add.details, "");

    let div = case(&report, "test_divide_by_zero");
    assert_eq!(div.status, CaseStatus::Failed);
    assert_eq!(div.message, "ZeroDivisionError: division by zero");
    assert!(
        div.details
            .starts_with("def test_divide_by_zero():\n>       assert divide(1, 0) == 0")
    );
    assert!(div.details.ends_with("src/calc.py:5: ZeroDivisionError"));
    assert_eq!(div.file.as_deref(), Some("tests/test_math.py"));
    assert_eq!(div.line, Some(7));
    assert_time(div.time_secs, 0.003);

    // `&#10;` in an attribute is a real newline.
    let cmp = case(&report, "test_compare[1-2]");
    assert_eq!(cmp.status, CaseStatus::Failed);
    assert_eq!(cmp.message, "assert 1 == 2\n +  where 1 = identity(1)");

    let insert = case(&report, "test_insert");
    assert_eq!(insert.status, CaseStatus::Error);
    assert_eq!(
        insert.message,
        "failed on setup with \"psycopg2.OperationalError: could not connect to server: Connection refused\""
    );
    assert!(insert.details.contains("E       psycopg2.OperationalError"));

    let skip = case(&report, "test_download");
    assert_eq!(skip.status, CaseStatus::Skipped);
    assert_eq!(skip.message, "requires network access");
    assert_eq!(
        skip.details,
        "/work/tests/test_net.py:9: requires network access"
    );

    let xfail = case(&report, "test_known_bug");
    assert_eq!(xfail.status, CaseStatus::Skipped);
    assert_eq!(xfail.message, "bug #123: IPv6 parsing");

    // Non-ASCII names survive; captured output is not a failure body.
    let greet = case(&report, "test_greet[café-日本語]");
    assert_eq!(greet.status, CaseStatus::Passed);
    assert_eq!(greet.details, "");
    let slow = case(&report, "test_slow");
    assert_eq!(slow.status, CaseStatus::Passed);
    assert_eq!(slow.line, Some(30));
}

#[test]
fn nose_report() {
    let report = parse_ok(fixture!("nose.xml"));
    assert_eq!(counts(&report.totals), totals(5, 2, 1, 1, 1));
    assert_time(report.totals.time_secs, 0.036);
    assert_eq!(report.suites, vec!["nosetests"]);

    let bad = case(&report, "test_bad_input");
    assert_eq!(bad.status, CaseStatus::Failed);
    assert_eq!(bad.suite, "nosetests");
    assert_eq!(bad.classname, "tests.test_parser.ParserTest");
    assert_eq!(bad.message, "'a' != 'b'");
    // CDATA is taken verbatim, markup characters included.
    assert!(
        bad.details
            .starts_with("Traceback (most recent call last):")
    );
    assert!(
        bad.details
            .contains("self.assertEqual(parse(\"<x>\"), \"b\")")
    );
    assert!(bad.details.ends_with("AssertionError: 'a' != 'b'"));
    assert_eq!(bad.file, None);
    assert_eq!(bad.line, None);

    let io = case(&report, "test_read_config");
    assert_eq!(io.status, CaseStatus::Error);
    assert_eq!(
        io.message,
        "[Errno 2] No such file or directory: 'config.ini'"
    );

    let net = case(&report, "test_network");
    assert_eq!(net.status, CaseStatus::Skipped);
    assert_eq!(net.message, "no network in CI");
    assert_eq!(net.details, "SkipTest: no network in CI");
}

#[test]
fn surefire_report() {
    let report = parse_ok(fixture!("surefire.xml"));
    assert_eq!(counts(&report.totals), totals(5, 2, 1, 1, 1));
    // One case took "1,234.5" seconds: the thousands separator is understood.
    assert_time(report.totals.time_secs, 1234.618);
    assert_eq!(report.suites, vec!["com.example.CalculatorTest"]);

    let div = case(&report, "testDivide");
    assert_eq!(div.status, CaseStatus::Failed);
    assert_eq!(div.message, "expected: <2> but was: <3>");
    assert!(
        div.details
            .starts_with("org.opentest4j.AssertionFailedError: expected: <2> but was: <3>")
    );
    assert!(
        !div.details.contains("dividing"),
        "system-out is not a failure body"
    );

    let connect = case(&report, "testConnect");
    assert_eq!(connect.status, CaseStatus::Error);
    assert_eq!(connect.message, "Connection refused");
    assert_time(connect.time_secs, 1234.5);
    assert!(connect.details.ends_with("CalculatorTest.java:40)"));

    assert_eq!(case(&report, "testIgnored").status, CaseStatus::Skipped);
    assert_eq!(case(&report, "testIgnored").message, "not implemented yet");

    // A flaky failure followed by a pass is a pass, as Surefire itself reports it.
    let flaky = case(&report, "testFlaky");
    assert_eq!(flaky.status, CaseStatus::Passed);
    assert_eq!(flaky.message, "");
    assert_eq!(flaky.details, "");
}

#[test]
fn nested_suites_count_cases_not_attributes() {
    let report = parse_ok(fixture!("nested.xml"));
    // The root claims 999 tests; the cases say otherwise.
    assert_eq!(counts(&report.totals), totals(5, 3, 1, 0, 1));
    assert_time(report.totals.time_secs, 0.615);
    assert_eq!(
        report.suites,
        vec!["backend", "backend.api", "backend.db", "frontend"]
    );
    let bad = case(&report, "rejects bad token");
    assert_eq!(bad.status, CaseStatus::Failed);
    assert_eq!(bad.suite, "backend.api");
    assert_eq!(bad.message, "expected 401, got 500");
    assert_eq!(case(&report, "applies").suite, "backend.db");
    let renders = case(&report, "renders");
    assert_eq!(renders.status, CaseStatus::Skipped);
    assert_eq!(renders.suite, "frontend");
    assert_eq!(renders.message, "");
}

#[test]
fn go_junit_report() {
    let report = parse_ok(fixture!("go.xml"));
    assert_eq!(counts(&report.totals), totals(3, 1, 1, 0, 1));
    assert_eq!(report.suites, vec!["example.com/app/store"]);
    let get = case(&report, "TestGet/missing_key");
    assert_eq!(get.status, CaseStatus::Failed);
    assert_eq!(get.message, "Failed");
    assert_eq!(
        get.details,
        "store_test.go:41: Get(\"nope\") = \"x\", want error"
    );
    let compact = case(&report, "TestCompact");
    assert_eq!(compact.status, CaseStatus::Skipped);
    assert_eq!(compact.message, "store_test.go:60: slow; run with -long");
}

#[test]
fn counts_come_from_innermost_suites_when_there_is_no_case() {
    let report = parse_ok(fixture!("counts_only.xml"));
    assert_eq!(counts(&report.totals), totals(15, 9, 2, 1, 3));
    assert_time(report.totals.time_secs, 1004.75);
    assert_eq!(report.suites, vec!["unit", "integration"]);
    assert!(report.cases.is_empty());

    // The root's counts are the last resort.
    let root_only =
        parse_ok(br#"<testsuites tests="4" failures="1" errors="1" skipped="1"></testsuites>"#);
    assert_eq!(counts(&root_only.totals), totals(4, 1, 1, 1, 1));

    // A self-closed root, with counts that contradict each other: total grows to fit.
    let odd = parse_ok(br#"<testsuite name="x" tests="1" failures="2" time="0,5"/>"#);
    assert_eq!(counts(&odd.totals), totals(2, 0, 2, 0, 0));
    assert_time(odd.totals.time_secs, 0.5);
    assert_eq!(odd.suites, vec!["x"]);

    let nothing = parse_ok(b"<testsuites/>");
    assert_eq!(nothing, TestReport::default());
}

#[test]
fn absurd_counts_are_cut_so_the_totals_still_add_up() {
    // Found by the junit fuzz target: three counts near u32::MAX once broke the sum.
    let max = u32::MAX;
    let huge = format!(
        r#"<testsuites><testsuite tests="{max}" failures="{max}" errors="{max}" skipped="{max}"/><testsuite tests="{max}" failures="7"/></testsuites>"#
    );
    let report = parse_ok(huge.as_bytes());
    let t = &report.totals;
    assert_eq!(
        u64::from(t.total),
        u64::from(t.passed) + u64::from(t.failed) + u64::from(t.errors) + u64::from(t.skipped)
    );
    assert_eq!(
        (t.total, t.failed),
        (max, max),
        "failures keep their share first"
    );
    let mut sum = TestTotals::from_counts(u64::MAX, 1, 2, 3, 0.0);
    sum.add(&TestTotals::from_counts(5, 5, 5, 5, 1.0));
    assert_eq!(counts(&sum), (max, max - 21, 6, 7, 8));
}

#[test]
fn truncated_report_is_refused_with_its_position() {
    match parse(fixture!("truncated.xml")) {
        Err(JunitError::Malformed {
            line,
            offset,
            message,
            ..
        }) => {
            assert_eq!(offset, 1500);
            assert_eq!(line, 23);
            assert!(message.contains("cut short"), "{message}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }

    // Cut inside a tag: quick-xml's own error, positioned at the tag.
    let cut = b"<testsuite>\n  <testcase name=\"a\"/>\n  <testcase name=\"b";
    match parse(cut) {
        Err(err @ JunitError::Malformed { .. }) => {
            let JunitError::Malformed { line, column, .. } = &err else {
                unreachable!()
            };
            assert_eq!((*line, *column), (3, 3));
            assert!(
                err.to_string()
                    .starts_with("test report is malformed XML at line 3, column 3")
            );
        }
        other => panic!("expected Malformed, got {other:?}"),
    }

    let mismatched = b"<testsuite>\n<testcase name=\"a\">\n</testsuite>";
    assert!(matches!(
        parse(mismatched),
        Err(JunitError::Malformed { line: 3, .. })
    ));
}

#[test]
fn empty_and_non_xml_inputs_are_refused() {
    assert!(matches!(
        parse(fixture!("empty.xml")),
        Err(JunitError::Empty)
    ));
    assert!(matches!(parse(b" \n\t\r\n"), Err(JunitError::Empty)));
    assert!(matches!(parse(b"\xEF\xBB\xBF"), Err(JunitError::Empty)));

    match parse(fixture!("not_xml.txt")) {
        Err(JunitError::NotXml(why)) => {
            assert!(why.contains("ERROR: file or directory not found"), "{why}")
        }
        other => panic!("expected NotXml, got {other:?}"),
    }
    assert!(matches!(
        parse(b"<?xml version=\"1.0\"?>\n<!-- nothing -->"),
        Err(JunitError::NotXml(_))
    ));
    assert!(matches!(
        parse(b"\x00\x01\x02\xff\xfe"),
        Err(JunitError::NotXml(_)) | Err(JunitError::Malformed { .. })
    ));
    assert!(matches!(
        parse(b"log line\n<testsuite/>"),
        Err(JunitError::NotXml(_))
    ));
}

#[test]
fn wrong_root_is_named() {
    match parse(fixture!("html.xml")) {
        Err(err @ JunitError::WrongRoot(_)) => {
            assert_eq!(
                err.to_string(),
                "test report's root element is <html>, expected <testsuites> or <testsuite>"
            );
        }
        other => panic!("expected WrongRoot, got {other:?}"),
    }
    assert!(
        matches!(parse(b"<testcase name=\"a\"/>"), Err(JunitError::WrongRoot(r)) if r == "testcase")
    );
}

#[test]
fn entity_bomb_is_not_expanded() {
    let start = Instant::now();
    let report = parse_ok(fixture!("billion_laughs.xml"));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(counts(&report.totals), totals(1, 0, 1, 0, 0));
    assert_eq!(report.suites, vec!["&lol9;"]);
    let bomb = &report.cases[0];
    assert_eq!(bomb.name, "&lol9;");
    assert_eq!(bomb.message, "&lol9;");
    assert_eq!(bomb.details, "&lol9;&lol9;&lol9;");
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    const DEPTH: usize = 100_000;

    // Unknown elements nested inside a failure body: skipped, but their text is the body.
    let mut xml =
        String::from(r#"<testsuite name="deep"><testcase name="c"><failure message="m">"#);
    xml.push_str(&"<a>".repeat(DEPTH));
    xml.push_str("leaf");
    xml.push_str(&"</a>".repeat(DEPTH));
    xml.push_str("</failure></testcase></testsuite>");
    let report = parse_ok(xml.as_bytes());
    assert_eq!(counts(&report.totals), totals(1, 0, 1, 0, 0));
    assert_eq!(report.cases[0].details, "leaf");

    // Suites nested 100k deep, each named: the case sits in the innermost one, and the suite list
    // stops at its cap.
    let mut xml = String::new();
    for i in 0..DEPTH {
        xml.push_str(&format!(r#"<testsuite name="s{i}">"#));
    }
    xml.push_str(r#"<testcase name="inner"/>"#);
    xml.push_str(&"</testsuite>".repeat(DEPTH));
    let report = parse_ok(xml.as_bytes());
    assert_eq!(counts(&report.totals), totals(1, 1, 0, 0, 0));
    assert_eq!(report.cases[0].suite, format!("s{}", DEPTH - 1));
    assert_eq!(report.suites.len(), MAX_SUITES);

    // Never closed: an error, still without recursion.
    let xml = format!("<testsuites>{}", "<testsuite>".repeat(DEPTH));
    assert!(matches!(
        parse(xml.as_bytes()),
        Err(JunitError::Malformed { .. })
    ));
}

#[test]
fn huge_fields_are_capped() {
    let big = "x".repeat(1024 * 1024);
    let xml = format!(
        r#"<testsuite name="{big}"><testcase classname="c" name="huge"><failure message="{big}">{big}</failure><error>second body</error></testcase></testsuite>"#
    );
    let report = parse_ok(xml.as_bytes());
    assert_eq!(counts(&report.totals), totals(1, 0, 1, 0, 0));
    let huge = &report.cases[0];
    assert!(huge.message.len() <= MAX_FIELD_BYTES);
    assert!(huge.message.starts_with("xxxx") && huge.message.ends_with('…'));
    assert!(huge.details.len() <= MAX_DETAILS_BYTES);
    assert!(huge.details.len() > MAX_DETAILS_BYTES - 100);
    assert!(
        huge.details.ends_with("(truncated)"),
        "{}",
        &huge.details[huge.details.len() - 40..]
    );
    assert!(huge.suite.len() <= MAX_FIELD_BYTES);
    assert!(report.suites[0].len() <= MAX_FIELD_BYTES);

    // Multi-byte text is cut on a char boundary; the message comes from the body's first line.
    let body = "é".repeat(MAX_DETAILS_BYTES);
    let xml = format!(
        r#"<testsuite><testcase name="u"><failure>{body}</failure></testcase></testsuite>"#
    );
    let report = parse_ok(xml.as_bytes());
    let u = &report.cases[0];
    assert!(u.details.len() <= MAX_DETAILS_BYTES);
    assert!(u.message.len() <= MAX_FIELD_BYTES && u.message.starts_with('é'));
}

#[test]
fn oversized_input_is_refused_unread() {
    let too_big = vec![b' '; MAX_REPORT_BYTES + 1];
    assert!(matches!(parse(&too_big), Err(JunitError::TooLarge { .. })));
    let endless = std::io::repeat(b' ');
    assert!(matches!(
        parse_reader(endless),
        Err(JunitError::TooLarge { .. })
    ));
    let report = parse_reader(&fixture!("nose.xml")[..]);
    assert!(matches!(report, Ok(r) if r.totals.total == 5));
}

/// A report with `passing` passed cases followed by `failing` failed ones.
fn many_cases(passing: usize, failing: usize) -> String {
    let mut xml = String::from(r#"<testsuite name="big">"#);
    for i in 0..passing {
        xml.push_str(&format!(
            r#"<testcase classname="k" name="ok{i}" time="0.001"/>"#
        ));
    }
    for i in 0..failing {
        xml.push_str(&format!(
            r#"<testcase classname="k" name="bad{i}"><failure message="boom {i}"/></testcase>"#
        ));
    }
    xml.push_str("</testsuite>");
    xml
}

#[test]
fn case_list_is_capped_but_totals_count_all() {
    let report = parse_ok(many_cases(MAX_CASES + 50, 3).as_bytes());
    assert_eq!(
        counts(&report.totals),
        totals(MAX_CASES as u32 + 53, MAX_CASES as u32 + 50, 3, 0, 0)
    );
    assert!(report.truncated);
    assert_eq!(report.cases.len(), MAX_CASES);
    // The failures at the end are kept, in order, at the expense of passed cases.
    let tail: Vec<&str> = report.cases[MAX_CASES - 3..]
        .iter()
        .map(|c| c.message.as_str())
        .collect();
    assert_eq!(tail, ["boom 0", "boom 1", "boom 2"]);
    assert_eq!(report.cases[0].name, "ok0");

    let exact = parse_ok(many_cases(MAX_CASES, 0).as_bytes());
    assert!(!exact.truncated);
    assert_eq!(exact.cases.len(), MAX_CASES);
}

#[test]
fn merge_adds_up_reports() {
    let pytest = parse_ok(fixture!("pytest.xml"));
    let nose = parse_ok(fixture!("nose.xml"));
    let merged = merge([pytest.clone(), nose.clone(), pytest.clone()]);
    assert_eq!(counts(&merged.totals), totals(21, 8, 5, 3, 5));
    assert_time(merged.totals.time_secs, 1.374 * 2.0 + 0.036);
    assert_eq!(merged.suites, vec!["pytest", "nosetests"]);
    assert_eq!(merged.cases.len(), 21);
    assert_eq!(merged.cases[8].name, "test_empty");
    assert!(!merged.truncated);

    let mut big = parse_ok(many_cases(MAX_CASES - 10, 0).as_bytes());
    big.merge(parse_ok(many_cases(20, 2).as_bytes()));
    assert_eq!(big.totals.total, MAX_CASES as u32 + 12);
    assert_eq!(big.totals.failed, 2);
    assert_eq!(big.cases.len(), MAX_CASES);
    assert!(big.truncated);
    assert_eq!(
        big.cases.iter().filter(|c| c.status.is_problem()).count(),
        2
    );

    assert_eq!(merge([]), TestReport::default());
}

#[test]
fn outcome_precedence_and_status_attributes() {
    let xml = br#"<testsuites><testsuite name="gtest">
        <testcase name="fails_then_errors"><failure message="first">one</failure><error message="second">two</error></testcase>
        <testcase name="skip_then_fail"><skipped message="s"/><failure>real failure
more</failure></testcase>
        <testcase name="DISABLED_old" status="notrun" time=""/>
        <testcase name="gskip" status="run" result="skipped"/>
        <testcase name="typed"><error type="java.lang.NullPointerException"/></testcase>
        <testcase name="no_time"/>
    </testsuite></testsuites>"#;
    let report = parse_ok(xml);
    assert_eq!(counts(&report.totals), totals(6, 1, 2, 1, 2));
    let both = case(&report, "fails_then_errors");
    assert_eq!(both.status, CaseStatus::Failed);
    assert_eq!(both.message, "first");
    assert_eq!(both.details, "one\n\ntwo");
    let later = case(&report, "skip_then_fail");
    assert_eq!(later.status, CaseStatus::Failed);
    assert_eq!(later.message, "real failure");
    assert_eq!(case(&report, "DISABLED_old").status, CaseStatus::Skipped);
    assert_eq!(case(&report, "DISABLED_old").time_secs, 0.0);
    assert_eq!(case(&report, "gskip").status, CaseStatus::Skipped);
    assert_eq!(
        case(&report, "typed").message,
        "java.lang.NullPointerException"
    );
    assert_eq!(case(&report, "no_time").status, CaseStatus::Passed);
}

#[test]
fn text_is_decoded_leniently() {
    // References in text and attributes, a dangling `&`, and an unknown entity kept as written.
    let xml = br#"<testsuite name="a &amp; b"><testcase classname="k" name="x &lt; y &#x263A; &nbsp;"><failure message="a & b">1 &lt; 2 &amp;&amp; R&amp;D &#233;t&#xE9; &unknown; & done</failure></testcase></testsuite>"#;
    let report = parse_ok(xml);
    assert_eq!(report.suites, vec!["a & b"]);
    let x = &report.cases[0];
    assert_eq!(x.name, "x < y ☺ &nbsp;");
    assert_eq!(x.message, "a & b");
    assert_eq!(x.details, "1 < 2 && R&D été &unknown; & done");

    // Declared Latin-1, UTF-16 with BOM, and stray invalid UTF-8.
    let latin1 = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><testsuite><testcase name=\"caf\xe9\"/></testsuite>";
    assert_eq!(parse_ok(latin1).cases[0].name, "café");
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(
            "<?xml version=\"1.0\" encoding=\"UTF-16\"?><testsuite><testcase name=\"日本\"/></testsuite>"
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect();
    assert_eq!(parse_ok(&utf16).cases[0].name, "日本");
    let invalid =
        b"<testsuite><testcase name=\"a\xffb\"><failure>x\xfey</failure></testcase></testsuite>";
    let report = parse_ok(invalid);
    assert_eq!(report.cases[0].name, "a\u{FFFD}b");
    assert_eq!(report.cases[0].details, "x\u{FFFD}y");

    // Namespace prefixes, comments, processing instructions and trailing noise are harmless.
    let noisy = br#"<?xml version="1.0"?><?xml-stylesheet href="x.xsl"?><j:testsuite xmlns:j="urn:x"><!-- c --><j:testcase name="n"/></j:testsuite>
trailing garbage <<<"#;
    assert_eq!(parse_ok(noisy).totals.passed, 1);

    // An attribute quick-xml cannot split is skipped, not fatal.
    let odd_attr = br#"<testsuite><testcase name="n" broken=oops time="1"/></testsuite>"#;
    let odd = parse_ok(odd_attr);
    assert_eq!(odd.totals.total, 1);
    assert_eq!(odd.cases[0].time_secs, 1.0);
}

#[test]
fn serde_round_trip() {
    let report = parse_ok(fixture!("go.xml"));
    let json = match serde_json::to_value(&report) {
        Ok(json) => json,
        Err(err) => panic!("serialize: {err}"),
    };
    assert_eq!(json["cases"][1]["status"], "failed");
    assert_eq!(json["cases"][2]["status"], "skipped");
    assert_eq!(json["totals"]["failed"], 1);
    assert_eq!(json["truncated"], false);
    let back: TestReport = match serde_json::from_value(json) {
        Ok(back) => back,
        Err(err) => panic!("deserialize: {err}"),
    };
    assert_eq!(back, report);
}
