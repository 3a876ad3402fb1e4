//! The parser against the files in `tests/data/pipelines/` (one per variant and per kind of error),
//! plus the resource limits and property tests that no input panics.

use super::*;

mod limits;
mod properties;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pipelines")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn valid(name: &str) -> Pipeline {
    let report = lint(&fixture(name));
    assert!(
        report.errors.is_empty(),
        "{name}:\n{}",
        report.render_diagnostics(name)
    );
    assert!(
        report.warnings.is_empty(),
        "{name}:\n{}",
        report.render_diagnostics(name)
    );
    report
        .pipeline
        .unwrap_or_else(|| panic!("{name}: no pipeline"))
}

fn step(name: &str, cmd: &str) -> ScriptStep {
    ScriptStep {
        name: name.into(),
        cmd: cmd.into(),
    }
}

/// (line, column, key, message) of a diagnostic.
type Expected<'a> = (usize, usize, &'a str, &'a str);

fn positions(diagnostics: &[Diagnostic]) -> Vec<Expected<'_>> {
    diagnostics
        .iter()
        .map(|d| (d.line, d.column, d.key.as_str(), d.message.as_str()))
        .collect()
}

#[test]
fn list_form_with_the_legacy_prerequisites_and_scalar_commands() {
    let p = valid("list_legacy.yaml");
    assert_eq!(p.jobs.len(), 1);
    let job = &p.jobs[0];
    assert_eq!(job.name, "default");
    assert_eq!(job.image_name.as_deref(), Some("jsx"));
    assert_eq!(
        job.install,
        ["apt-get update", "pip3 install click pytest nose", "true"]
    );
    let test = "source /sandbox/env.sh; nosetests-3.4 -v tests --with-xunit --xunit-file=/test.xml";
    assert_eq!(job.steps, [step(test, test), step("false", "false")]);
    assert_eq!(p.run_on, None);
}

#[test]
fn list_form_with_a_prerequisites_map_and_timeout() {
    let job = valid("list_prerequisites.yaml").jobs.remove(0);
    assert_eq!(job.image_name.as_deref(), Some("ubuntu:22.04"));
    assert_eq!(job.shell_bin.as_deref(), Some("/bin/bash"));
    assert_eq!(job.install, ["apt-get install -y python3"]);
    assert_eq!(
        job.steps,
        [step("python3 -m unittest -v", "python3 -m unittest -v")]
    );
    assert_eq!(job.timeout_secs, Some(600));
}

#[test]
fn single_job_form_with_an_install_string_named_steps_and_bin_path() {
    let job = valid("single_job.yaml").jobs.remove(0);
    assert_eq!(job.image_name.as_deref(), Some("ubuntu:18.04"));
    assert_eq!(job.shell_bin.as_deref(), Some("/bin/sh"));
    assert_eq!(
        job.install,
        ["apt-get update\napt-get install -y python3.6 python3-pip\n"]
    );
    assert_eq!(
        job.steps,
        [
            step("Unit tests", "python3 -m pytest -v --junitxml=/test.xml"),
            step("Lint", "flake8 .")
        ]
    );
    assert_eq!(job.bin_path.as_deref(), Some("/usr/local/bin/nosetests"));
}

#[test]
fn single_job_form_with_the_early_image_name_key() {
    let job = valid("single_job_image_name_early.yaml").jobs.remove(0);
    assert_eq!(job.image_name.as_deref(), Some("ubuntu:18.04"));
    assert_eq!(job.install, ["pip3 install nose\n"]);
}

#[test]
fn jobs_form_keeps_jobs_in_order_with_their_own_settings() {
    let p = valid("jobs.yaml");
    let names: Vec<_> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["Generate Bin", "Use Bin", "Lint"]);
    let timeouts: Vec<_> = p.jobs.iter().map(|j| j.timeout_secs).collect();
    assert_eq!(timeouts, [Some(3600), None, Some(120)]);
    assert_eq!(
        p.jobs[0].bin_path.as_deref(),
        Some("/usr/local/bin/nosetests")
    );
    assert_eq!(p.jobs[0].steps[0].name, "Simple Tests With Nosetest");
    assert!(
        p.jobs[0].steps[0]
            .cmd
            .starts_with("cd /zeroci/code/vcs_repos/AhmedHanafy725/test_zeroci\nnosetests")
    );
    assert_eq!(p.jobs[1].shell_bin, None);
    assert_eq!(p.jobs[1].install, ["apt-get update"]);
    assert_eq!(p.jobs[2].shell_bin.as_deref(), Some("/bin/bash"));
}

#[test]
fn run_on_is_validated_and_normalised() {
    let p = valid("run_on.yaml");
    let expected = serde_json::json!({
        "push": {"branches": ["development", "main"]},
        "pull_request": {"branches": ["development"]},
        "manual": {"branches": ["master"]},
        "schedule": {"branch": "development", "cron": "0 2 * * 1-5", "timezone": "UTC"},
    });
    assert_eq!(p.run_on, Some(expected));
    assert_eq!(
        p.schedule(),
        Some(ScheduleTrigger {
            branch: "development".into(),
            cron: "0 2 * * 1-5".into(),
            timezone: "UTC".into(),
        })
    );
}

#[test]
fn anchors_aliases_and_merge_keys_are_expanded() {
    let p = valid("anchors.yaml");
    assert_eq!(p.jobs.len(), 2);
    for job in &p.jobs {
        assert_eq!(job.image_name.as_deref(), Some("ubuntu:22.04"));
        assert_eq!(job.shell_bin.as_deref(), Some("/bin/bash"));
        assert_eq!(job.install, ["apt-get update\n"]);
    }
    assert_eq!(p.jobs[1].timeout_secs, Some(30));
}

#[test]
fn unknown_keys_are_warnings_with_a_suggestion_and_the_file_stays_valid() {
    let report = lint(&fixture("unknown_keys.yaml"));
    assert!(report.is_valid());
    assert!(report.errors.is_empty());
    assert_eq!(
        positions(&report.warnings),
        [
            (
                1,
                1,
                "instal",
                "unknown key, ignored; did you mean `install`?"
            ),
            (
                6,
                3,
                "prerequisites.image-name",
                "unknown key, ignored; did you mean `image_name`?"
            ),
            (
                7,
                3,
                "prerequisites.colour",
                "unknown key, ignored; known keys here: `image_name`, `imageName`, `shell_bin`, `cpus`, `memory_mb`, `pids`, `labels`"
            ),
        ]
    );
    assert_eq!(report.pipeline.map(|p| p.jobs[0].install.len()), Some(0));
}

#[test]
fn prerequisites_ask_for_resources() {
    let job = &parse(b"prerequisites: {cpus: 1.5, memory_mb: 2048, pids: 256}\nscript: [x]\n")
        .unwrap()
        .jobs[0];
    assert_eq!(
        job.resources,
        crate::resources::Resources {
            cpus: Some(1.5),
            memory_mb: Some(2048),
            pids: Some(256),
            disk_gb: None,
        }
    );
    let wrong =
        lint(b"prerequisites:\n  cpus: many\n  memory_mb: '2048'\n  pids: 4\nscript: [x]\n");
    assert_eq!(
        positions(&wrong.errors),
        [
            (
                2,
                9,
                "prerequisites.cpus",
                "expected a number of CPUs such as 1.5, found `many`"
            ),
            (
                3,
                14,
                "prerequisites.memory_mb",
                "expected a whole number of MiB such as 2048, found `2048`"
            ),
            (
                4,
                9,
                "prerequisites.pids",
                "must be at least 32: the agent's own threads count too"
            ),
        ]
    );
    let zero = lint(b"prerequisites: {cpus: 0, memory_mb: 1.5}\nscript: [x]\n");
    assert_eq!(
        positions(&zero.errors),
        [
            (
                1,
                23,
                "prerequisites.cpus",
                "expected a number of CPUs such as 1.5, found `0`"
            ),
            (
                1,
                37,
                "prerequisites.memory_mb",
                "expected a whole number of MiB such as 2048, found `1.5`"
            ),
        ]
    );
}

/// Each kind of error: every error of the file, with its exact position, key and message, as printed.
#[test]
fn each_kind_of_error_names_line_column_and_key() {
    let cases: &[(&str, &[&str])] = &[
        (
            "error_neph_step.yaml",
            &[
                "zeroCI.yaml:7:15: jobs[0].script[0].type: step type `neph` cannot run in ZeroCI: only shell commands (`cmd`) are supported",
            ],
        ),
        (
            "error_missing_script.yaml",
            &["zeroCI.yaml:1:1: script: is required: a list of commands to run"],
        ),
        (
            "error_wrong_types.yaml",
            &[
                "zeroCI.yaml:7:20: jobs[1].prerequisites: expected a mapping such as `{image_name: ubuntu:22.04, shell_bin: /bin/bash}`, found `ubuntu:22.04`",
                "zeroCI.yaml:8:14: jobs[1].install: expected the install script (a string) or a list of commands, found a mapping",
                "zeroCI.yaml:11:14: jobs[1].script[0].cmd: expected a command (a string), found a list",
                "zeroCI.yaml:12:9: jobs[1].script[1]: command is empty",
                "zeroCI.yaml:13:9: jobs[1].script[2].cmd: is required: the command to run",
                "zeroCI.yaml:14:9: jobs[1].script[3]: expected a command (a string), found a list",
                "zeroCI.yaml:15:14: jobs[1].timeout: expected a positive whole number of seconds such as 3600, found `soon`",
                "zeroCI.yaml:16:15: jobs[1].bin_path: expected a path (a string), found a list",
            ],
        ),
        (
            "error_timeout_zero.yaml",
            &["zeroCI.yaml:3:10: timeout: must be a positive number of seconds, found 0"],
        ),
        (
            "error_too_many_jobs.yaml",
            &["zeroCI.yaml:2:3: jobs: at most 3 jobs are allowed, found 4"],
        ),
        (
            "error_job_without_name.yaml",
            &["zeroCI.yaml:2:5: jobs[0].name: is required: the job's name"],
        ),
        (
            "error_jobs_not_list.yaml",
            &["zeroCI.yaml:2:3: jobs: expected a list of jobs, found a mapping"],
        ),
        (
            "error_mixed_forms.yaml",
            &["zeroCI.yaml:4:1: script: not allowed beside `jobs`: move it into each job"],
        ),
        (
            "error_duplicate_key.yaml",
            &["zeroCI.yaml:5:1: script: duplicate key; the first is on line 1"],
        ),
        (
            "error_run_on.yaml",
            &[
                "zeroCI.yaml:5:15: run_on.push.branches: expected a list of branch names, found `develop`; write `[develop]`",
                "zeroCI.yaml:6:28: run_on.pull_request.branches: must list at least one branch (remove `run_on.pull_request` to turn the trigger off)",
                "zeroCI.yaml:7:11: run_on.manual.branches: is required: a list of branch names such as `[main]`",
                "zeroCI.yaml:8:34: run_on.schedule.cron: invalid cron expression `0 25 * * *`: hour field `25`: `25` is out of range 0-23",
            ],
        ),
        (
            "error_run_on_empty.yaml",
            &[
                "zeroCI.yaml:4:3: run_on: expected a mapping with at least one of `push`, `pull_request`, `manual`, `schedule`",
            ],
        ),
        (
            "error_cron_fields.yaml",
            &[
                "zeroCI.yaml:6:11: run_on.schedule.cron: invalid cron expression `0 2 * *`: expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), found 4",
            ],
        ),
        (
            "error_time_zone.yaml",
            &[
                "zeroCI.yaml:7:15: run_on.schedule.timezone: unknown time zone `Mars/Olympus`: use an IANA name such as `Europe/Amsterdam`, `America/New_York` or `UTC`",
            ],
        ),
        (
            "error_legacy_prerequisites.yaml",
            &["zeroCI.yaml:1:14: prequisties: expected a list such as `[jsx]`, found `jsx`"],
        ),
        (
            "error_not_yaml.yaml",
            &[
                "zeroCI.yaml:4:1: script[1][1]: invalid YAML: while parsing a flow sequence, expected ',' or ']'",
            ],
        ),
        (
            "error_not_mapping.yaml",
            &[
                "zeroCI.yaml:1:1: expected a mapping with `script` (or `jobs`) at the top level, found a list",
            ],
        ),
        (
            "error_two_documents.yaml",
            &["zeroCI.yaml:3:1: a second YAML document: the file must hold exactly one"],
        ),
        (
            "error_not_utf8.yaml",
            &["zeroCI.yaml:2:13: file is not UTF-8 text: invalid byte here"],
        ),
        (
            "empty.yaml",
            &[
                "zeroCI.yaml:1:1: file is empty: expected a mapping with `script` (or `jobs`) at the top level",
            ],
        ),
        (
            "comments_only.yaml",
            &[
                "zeroCI.yaml:1:1: file is empty: expected a mapping with `script` (or `jobs`) at the top level",
            ],
        ),
    ];
    for (name, expected) in cases {
        let report = lint(&fixture(name));
        assert!(!report.is_valid(), "{name}");
        assert_eq!(report.pipeline, None, "{name}");
        let errors: Vec<String> = report
            .errors
            .iter()
            .map(|e| e.render(FILE_NAME, Severity::Error))
            .collect();
        assert_eq!(errors, *expected, "{name}");
    }
}

#[test]
fn errors_print_one_per_line_then_the_warnings() {
    let err = parse(&fixture("error_missing_script.yaml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "zeroCI.yaml:1:1: script: is required: a list of commands to run\n\
         zeroCI.yaml:3:1: warning: scrpt: unknown key, ignored; did you mean `script`?"
    );
    let err = parse(&fixture("error_not_mapping.yaml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "zeroCI.yaml:1:1: expected a mapping with `script` (or `jobs`) at the top level, found a list"
    );
    assert_eq!(
        err.render("ci/x.yaml"),
        err.to_string().replacen("zeroCI.yaml", "ci/x.yaml", 1)
    );
}

#[test]
fn json_report_has_the_documented_shape() {
    let report = lint(&fixture("jobs.yaml"));
    let json = report.to_json();
    assert_eq!(json["valid"], true);
    assert_eq!(json["run_on"], serde_json::Value::Null);
    let job = &json["jobs"][2];
    assert_eq!(job["name"], "Lint");
    assert_eq!(job["image_name"], "python:3.12");
    assert_eq!(job["shell_bin"], "/bin/bash");
    assert_eq!(job["timeout"], 120);
    assert_eq!(job["install"], serde_json::json!(["pip install ruff"]));
    assert_eq!(
        job["steps"],
        serde_json::json!([{"name": "Ruff", "cmd": "ruff check ."}])
    );
    assert_eq!(job["bin_path"], serde_json::Value::Null);
    let json = lint(&fixture("error_timeout_zero.yaml")).to_json();
    assert_eq!(json["valid"], false);
    assert_eq!(json["jobs"], serde_json::json!([]));
    let expected = serde_json::json!([{"line": 3, "column": 10, "key": "timeout", "message": "must be a positive number of seconds, found 0"}]);
    assert_eq!(json["errors"], expected);
    assert_eq!(json["warnings"], serde_json::json!([]));
}

#[test]
fn commands_may_be_any_scalar_but_not_nothing() {
    let p = parse(b"script:\n  - false\n  - 3\n  - 1.5\n  - 'quoted'\n").unwrap();
    let cmds: Vec<_> = p.jobs[0].steps.iter().map(|s| s.cmd.as_str()).collect();
    assert_eq!(cmds, ["false", "3", "1.5", "quoted"]);
    let err = parse(b"script:\n  - ~\n  -\n").unwrap_err();
    assert_eq!(
        positions(&err.errors),
        [
            (
                2,
                5,
                "script[0]",
                "expected a command (a string), found nothing"
            ),
            (
                3,
                4,
                "script[1]",
                "expected a command (a string), found nothing"
            ),
        ]
    );
}

#[test]
fn other_step_types_and_empty_values() {
    let err = parse(b"script:\n  - {name: x, type: docker, cmd: ls}\n").unwrap_err();
    assert_eq!(err.errors[0].key, "script[0].type");
    assert!(err.errors[0].message.contains("`docker`"));
    assert!(parse(b"script:\n  - {name: x, type: cmd, cmd: ls}\n").is_ok());
    let err = parse(b"script: []\n").unwrap_err();
    assert_eq!(
        positions(&err.errors),
        [(1, 9, "script", "must list at least one command")]
    );
    let err = parse(b"script: make test\n").unwrap_err();
    assert_eq!(
        positions(&err.errors),
        [(
            1,
            9,
            "script",
            "expected a list of commands, found `make test`"
        )]
    );
    let err = parse(b"jobs:\n  - name: ''\n    script: [a]\n").unwrap_err();
    assert_eq!(
        positions(&err.errors),
        [(2, 11, "jobs[0].name", "must not be empty: the job's name")]
    );
    let err = parse(b"script: [a]\ntimeout: '60'\n").unwrap_err();
    assert_eq!(
        err.errors[0].message,
        "expected a number of seconds, found a quoted string: write it without quotes"
    );
    let err = parse(b"jobs: [{name: a, script: [x]}]\nprequisties: [jsx]\n").unwrap_err();
    assert_eq!(err.errors[0].key, "prequisties");
    let p = parse(b"install:\nscript: [a]\nbin_path:\nprerequisites:\n").unwrap();
    assert_eq!(p.jobs[0].install, Vec::<String>::new());
    assert_eq!(p.jobs[0].bin_path, None);
}

#[test]
fn prerequisites_conflicts_are_warnings() {
    let report =
        lint(b"prerequisites: {image_name: a, imageName: b}\nprequisties: [jsx]\nscript: [x]\n");
    assert!(report.is_valid());
    assert_eq!(
        report.pipeline.map(|p| p.jobs[0].image_name.clone()),
        Some(Some("a".to_string()))
    );
    let keys: Vec<_> = report.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["prerequisites.imageName", "prequisties"]);
}

#[test]
fn neph_only_keys_warn_on_command_steps() {
    let report = lint(b"script:\n  - {name: x, cmd: ls, working_dir: /w}\n");
    assert!(report.is_valid());
    assert_eq!(report.warnings[0].key, "script[0].working_dir");
}

#[test]
fn suggestions_need_a_close_key() {
    let known = ["install", "script", "prerequisites", "run_on"];
    assert_eq!(schema::suggest("scrpt", &known), Some("script"));
    assert_eq!(schema::suggest("Script", &known), Some("script"));
    assert_eq!(
        schema::suggest("prequisites", &known),
        Some("prerequisites")
    );
    assert_eq!(schema::suggest("run-on", &known), Some("run_on"));
    assert_eq!(schema::suggest("colour", &known), None);
}

#[test]
fn prerequisites_labels_are_one_or_a_list_and_checked() {
    let report = lint(b"jobs:\n  - name: a\n    prerequisites: {labels: [linux, gpu, linux]}\n    script: [true]\n  - name: b\n    prerequisites: {labels: arm64}\n    script: [true]\n");
    let pipeline = report.pipeline.unwrap();
    assert_eq!(pipeline.jobs[0].labels, ["linux", "gpu"]);
    assert_eq!(pipeline.jobs[1].labels, ["arm64"]);
    let report = lint(b"prerequisites:\n  labels: [\"has space\", {a: 1}]\nscript: [true]\n");
    let messages: Vec<&str> = report.errors.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("only letters"), "{messages:?}");
    assert!(messages[1].contains("a label"), "{messages:?}");
}
