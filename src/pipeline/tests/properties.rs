//! Property tests: no input panics, and valid pipelines read back exactly as written.

use proptest::prelude::*;

use crate::pipeline::*;

/// Pieces of YAML and of pipelines, so random strings reach deep into the parser and checker.
fn yamlish() -> impl Strategy<Value = String> {
    // `select` rather than `prop_oneof!`: generating from a 48-way union is slow in debug builds.
    let piece = prop::sample::select(vec![
        "\n",
        "  ",
        "- ",
        ": ",
        ":",
        "jobs",
        "script",
        "install",
        "prerequisites",
        "prequisties",
        "image_name",
        "run_on",
        "push",
        "branches",
        "schedule",
        "cron",
        "\"0 2 * * *\"",
        "name",
        "cmd",
        "type",
        "neph",
        "timeout",
        "0",
        "60",
        "&a ",
        "*a",
        "<<: ",
        "[",
        "]",
        "{",
        "}",
        ", ",
        "'",
        "\"",
        "|",
        ">",
        "#",
        "? ",
        "---\n",
        "...",
        "!tag ",
        "~",
        "false",
        "\t",
        "é",
        "%YAML 1.2\n",
        "\\",
    ]);
    prop::collection::vec(piece, 0..120).prop_map(|pieces| pieces.concat())
}

/// YAML single-quoted: any text, with `'` doubled.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9 ./:'\"#&*|>-]{0,24}"
}

/// A valid pipeline in the `jobs` form.
fn pipeline() -> impl Strategy<Value = Pipeline> {
    let step = (text(), text()).prop_map(|(name, cmd)| ScriptStep { name, cmd });
    let job = (
        text(),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::collection::vec(text(), 0..2),
        prop::collection::vec(step, 1..4),
        prop::option::of(1u64..100_000),
        prop::option::of(text()),
    )
        .prop_map(
            |(name, image_name, shell_bin, install, steps, timeout_secs, bin_path)| PipelineJob {
                resources: Default::default(),
                labels: Vec::new(),
                name,
                image_name,
                shell_bin,
                install,
                steps,
                timeout_secs,
                bin_path,
            },
        );
    prop::collection::vec(job, 1..=MAX_JOBS).prop_map(|jobs| Pipeline { jobs, run_on: None })
}

fn render(pipeline: &Pipeline) -> String {
    let mut out = String::from("jobs:\n");
    for job in &pipeline.jobs {
        out.push_str(&format!("  - name: {}\n", quoted(&job.name)));
        if job.image_name.is_some() || job.shell_bin.is_some() {
            out.push_str("    prerequisites:\n");
            for (key, value) in [
                ("image_name", &job.image_name),
                ("shell_bin", &job.shell_bin),
            ] {
                if let Some(value) = value {
                    out.push_str(&format!("      {key}: {}\n", quoted(value)));
                }
            }
        }
        if let Some(install) = job.install.first() {
            out.push_str(&format!("    install: {}\n", quoted(install)));
        }
        out.push_str("    script:\n");
        for step in &job.steps {
            out.push_str(&format!(
                "      - name: {}\n        cmd: {}\n",
                quoted(&step.name),
                quoted(&step.cmd)
            ));
        }
        if let Some(timeout) = job.timeout_secs {
            out.push_str(&format!("    timeout: {timeout}\n"));
        }
        if let Some(bin_path) = &job.bin_path {
            out.push_str(&format!("    bin_path: {}\n", quoted(bin_path)));
        }
    }
    out
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pipelines");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn check_report(report: &LintReport) {
    assert_eq!(report.is_valid(), report.pipeline.is_some());
    for d in report.errors.iter().chain(&report.warnings) {
        assert!(d.line >= 1 && d.column >= 1, "{d:?}");
    }
    if let Some(p) = &report.pipeline {
        assert!(!p.jobs.is_empty() && p.jobs.len() <= MAX_JOBS);
        assert!(p.jobs.iter().all(|j| !j.steps.is_empty()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_report(&lint(&bytes));
    }

    #[test]
    fn yamlish_text_never_panics(text in yamlish()) {
        let report = lint(text.as_bytes());
        check_report(&report);
        let _ = report.to_json();
    }

    #[test]
    fn damaged_fixtures_never_panic(index in any::<prop::sample::Index>(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let files = fixtures();
        let mut bytes = index.get(&files).clone();
        for (at, byte) in edits {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
        }
        check_report(&lint(&bytes));
    }
}

proptest! {
    // Generating from regexes is slow in debug builds; a few hundred pipelines cover the forms.
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn valid_pipelines_read_back_as_written(pipeline in pipeline()) {
        let text = render(&pipeline);
        let report = lint(text.as_bytes());
        prop_assert!(report.errors.is_empty() && report.warnings.is_empty(), "{}\n{}", text, report.render_diagnostics(FILE_NAME));
        prop_assert_eq!(report.pipeline, Some(pipeline));
    }
}
