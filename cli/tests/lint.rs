//! `zeroci lint` as people run it: the real binary on the files in `tests/data/pipelines/`, with no
//! profile and no controller anywhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_zeroci");

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/pipelines")
        .join(name)
}

/// Runs `zeroci lint ARGS` where no profile exists, so any attempt to load one or connect would fail.
fn lint_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .env("HOME", dir)
        .env("ZEROCI_PROFILE", dir.join("no-such-profile.toml"))
        .arg("lint")
        .args(args)
        .output()
        .unwrap()
}

fn lint(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    lint_in(dir.path(), args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

const VALID: [(&str, usize); 7] = [
    ("list_legacy.yaml", 1),
    ("list_prerequisites.yaml", 1),
    ("single_job.yaml", 1),
    ("single_job_image_name_early.yaml", 1),
    ("jobs.yaml", 3),
    ("run_on.yaml", 1),
    ("anchors.yaml", 2),
];

#[test]
fn every_variant_is_valid_with_exit_0_and_its_plan() {
    for (name, jobs) in VALID {
        let file = data(name);
        let out = lint(&[path_str(&file)]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stdout(&out));
        let text = stdout(&out);
        let summary = format!("{} is valid: {jobs} job", file.display());
        assert!(text.starts_with(&summary), "{name}: {text}");
        assert!(
            text.contains("job 1: ") && text.contains("steps:\n"),
            "{name}: {text}"
        );

        let out = lint(&[path_str(&file), "--json"]);
        assert_eq!(out.status.code(), Some(0), "{name}");
        let doc = json(&out);
        let mut keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["errors", "jobs", "run_on", "valid", "warnings"],
            "{name}"
        );
        assert_eq!(doc["valid"], true, "{name}");
        assert_eq!(doc["jobs"].as_array().unwrap().len(), jobs, "{name}");
        for job in doc["jobs"].as_array().unwrap() {
            let mut keys: Vec<&str> = job
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort();
            assert_eq!(
                keys,
                [
                    "bin_path",
                    "image_name",
                    "install",
                    "labels",
                    "name",
                    "resources",
                    "shell_bin",
                    "steps",
                    "timeout"
                ]
            );
            assert!(job["install"].is_array() && !job["steps"].as_array().unwrap().is_empty());
        }
    }
}

#[test]
fn the_plan_shows_install_steps_and_triggers() {
    let out = lint(&[path_str(&data("list_legacy.yaml")), "--json"]);
    let job = &json(&out)["jobs"][0];
    assert_eq!(job["image_name"], "jsx");
    // The list form keeps each install command; `- true` is the command "true".
    assert_eq!(
        job["install"],
        serde_json::json!(["apt-get update", "pip3 install click pytest nose", "true"])
    );
    assert_eq!(
        job["steps"][1],
        serde_json::json!({"name": "false", "cmd": "false"})
    );

    let out = lint(&[path_str(&data("single_job.yaml")), "--json"]);
    let job = &json(&out)["jobs"][0];
    // Other forms keep the install string as one element.
    assert_eq!(
        job["install"],
        serde_json::json!(["apt-get update\napt-get install -y python3.6 python3-pip\n"])
    );
    assert_eq!(job["bin_path"], "/usr/local/bin/nosetests");

    let out = lint(&[path_str(&data("run_on.yaml"))]);
    let text = stdout(&out);
    assert!(
        text.contains("  push          branches development, main\n"),
        "{text}"
    );
    assert!(
        text.contains("  schedule      branch development, cron \"0 2 * * 1-5\"\n"),
        "{text}"
    );
    let doc = json(&lint(&[path_str(&data("run_on.yaml")), "--json"]));
    assert_eq!(
        doc["run_on"]["manual"],
        serde_json::json!({"branches": ["master"]})
    );
}

#[test]
fn errors_name_line_column_and_key_with_exit_1() {
    let file = data("error_wrong_types.yaml");
    let out = lint(&[path_str(&file)]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let shown = file.display();
    let line = format!(
        "{shown}:11:14: jobs[1].script[0].cmd: expected a command (a string), found a list\n"
    );
    assert!(text.contains(&line), "{text}");
    assert!(
        text.contains(&format!(
            "{shown}:15:14: jobs[1].timeout: expected a positive whole number"
        )),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("{shown} is invalid: 8 errors\n")),
        "{text}"
    );

    let out = lint(&[path_str(&file), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc = json(&out);
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["jobs"], serde_json::json!([]));
    assert_eq!(doc["run_on"], serde_json::Value::Null);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 8);
    assert_eq!(
        doc["errors"][2],
        serde_json::json!({"line": 11, "column": 14, "key": "jobs[1].script[0].cmd", "message": "expected a command (a string), found a list"})
    );

    let out = lint(&[path_str(&data("error_neph_step.yaml"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out)
            .contains(":7:15: jobs[0].script[0].type: step type `neph` cannot run in ZeroCI")
    );
}

#[test]
fn unknown_keys_are_warnings_and_the_file_is_still_valid() {
    let file = data("unknown_keys.yaml");
    let out = lint(&[path_str(&file)]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let expected = format!(
        "{}:1:1: warning: instal: unknown key, ignored; did you mean `install`?\n",
        file.display()
    );
    assert!(text.starts_with(&expected), "{text}");
    assert!(text.contains("is valid: 1 job, 3 warnings\n"), "{text}");
    let doc = json(&lint(&[path_str(&file), "--json"]));
    assert_eq!(doc["valid"], true);
    assert_eq!(
        doc["warnings"][1],
        serde_json::json!({"line": 6, "column": 3, "key": "prerequisites.image-name", "message": "unknown key, ignored; did you mean `image_name`?"})
    );
}

#[test]
fn a_directory_means_its_zeroci_yaml_and_the_default_is_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        data("error_missing_script.yaml"),
        dir.path().join("zeroCI.yaml"),
    )
    .unwrap();
    // Run from the directory without PATH: the lines read exactly as the controller's step log.
    let out = lint_in(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "zeroCI.yaml:1:1: script: is required: a list of commands to run\n\
         zeroCI.yaml:3:1: warning: scrpt: unknown key, ignored; did you mean `script`?\n\
         zeroCI.yaml is invalid: 1 error, 1 warning\n"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = lint_in(elsewhere.path(), &[path_str(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    let shown = dir.path().join("zeroCI.yaml");
    assert!(stdout(&out).starts_with(&format!("{}:1:1: script: is required", shown.display())));
}

#[test]
fn a_file_that_cannot_be_read_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for path in [dir.path().join("missing.yaml"), dir.path().to_path_buf()] {
        let out = lint(&[path_str(&path)]);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("zeroci: cannot read "), "{stderr}");
        let out = lint(&[path_str(&path), "--json"]);
        assert_eq!(out.status.code(), Some(2));
    }
}

#[test]
fn files_that_are_not_pipelines_are_invalid_with_exit_1() {
    let cases = [
        ("error_not_yaml.yaml", ":4:1: script[1][1]: invalid YAML: "),
        ("empty.yaml", ":1:1: file is empty: "),
        ("comments_only.yaml", ":1:1: file is empty: "),
        ("error_not_utf8.yaml", ":2:13: file is not UTF-8 text"),
        (
            "error_not_mapping.yaml",
            ":1:1: expected a mapping with `script` (or `jobs`) at the top level, found a list",
        ),
        ("error_two_documents.yaml", ":3:1: a second YAML document"),
    ];
    for (name, expected) in cases {
        let out = lint(&[path_str(&data(name))]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(stdout(&out).contains(expected), "{name}: {}", stdout(&out));
    }
}

#[test]
fn a_ten_megabyte_file_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zeroCI.yaml");
    let line = b"  - echo this line makes the file large\n";
    let mut text = b"script:\n".to_vec();
    text.extend(line.iter().copied().cycle().take(10 * 1024 * 1024));
    std::fs::write(&file, text).unwrap();
    let started = Instant::now();
    let out = lint_in(dir.path(), &["--json"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        json(&out)["errors"],
        serde_json::json!([{"line": 1, "column": 1, "key": "", "message": "file is larger than 1048576 bytes, the limit for a pipeline file"}])
    );
}

#[test]
fn billion_laughs_is_an_error_quickly_and_in_bounded_memory() {
    let file = data("billion_laughs.yaml");
    // Fully expanded the document would need gigabytes; 128 MiB of address space is plenty for
    // refusing it.
    let script = format!("ulimit -v 131072; exec '{BIN}' lint '{}'", file.display());
    let started = Instant::now();
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("ZEROCI_PROFILE", "/nonexistent/profile.toml")
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(
        text.contains("aliases expand the document by more than 1048576 bytes"),
        "{text}"
    );
}
