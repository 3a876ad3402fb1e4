//! Real pipelines: several jobs on fresh machines with an artifact, environment and secrets, test reports.

use crate::harness::{Repo, Settings, TestEnv, step};

fn last_job(env: &TestEnv) -> u64 {
    env.cli(&["jobs", "--json"]).json()[0]["id"]
        .as_u64()
        .unwrap()
}

const TWO_JOBS: &str = r#"jobs:
  - name: build
    script:
      - name: compile
        cmd: mkdir -p out && printf 'binary from %s' "$ZEROCI_COMMIT" > out/app.bin && echo "machine $(hostname)"
    bin_path: out/app.bin
  - name: test
    script:
      - name: use
        cmd: cat out/app.bin && echo && echo "machine $(hostname)"
"#;

#[test]
fn jobs_run_one_after_another_on_fresh_machines_and_pass_the_artifact_on() {
    let env = TestEnv::start();
    let repo = Repo::new(&env, "two-jobs", &[("zeroCI.yaml", TWO_JOBS)]);
    let commit = repo.commit(&[("README", "x")], "second");
    let out = env.cli(&["run", repo.path_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = last_job(&env);
    let job = env.job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let names: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["checkout", "build: compile", "test: checkout", "test: use"]
    );
    let build = String::from_utf8(env.raw_log(id, Some("build: compile"))).unwrap();
    let test = String::from_utf8(env.raw_log(id, Some("test: use"))).unwrap();
    assert_eq!(build.trim(), format!("machine job-{id}-a1"));
    assert_eq!(test, format!("binary from {commit}\nmachine job-{id}-a2\n"));
    assert_eq!(job["artifacts"][0]["name"], "out/app.bin");
    let file = env.dir.path().join("downloaded.bin");
    let dl = env.cli(&[
        "artifact",
        &id.to_string(),
        "out/app.bin",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(dl.code, 0, "{}", dl.stderr);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("binary from {commit}")
    );
    // The same file, and the raw log, over plain HTTP.
    let (status, body) = env.http_get(&format!("/jobs/{id}/artifacts/out/app.bin"));
    assert_eq!(status, 200);
    assert_eq!(body, format!("binary from {commit}").into_bytes());
    let (status, body) = env.http_get(&format!("/jobs/{id}/log"));
    assert_eq!(status, 200);
    assert_eq!(body, env.raw_log(id, None));
    assert_eq!(env.http_get(&format!("/jobs/{id}/artifacts/nope")).0, 404);
    assert_eq!(env.http_get("/jobs/999/log").0, 404);
    // Both machines are gone.
    assert_eq!(
        std::fs::read_dir(env.home().join("state/machines"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_failing_test_does_not_stop_the_next_job_but_a_failing_install_does() {
    let env = TestEnv::start();
    let yaml = "jobs:\n  - name: a\n    script:\n      - {name: t, cmd: exit 1}\n  - name: b\n    script:\n      - {name: t, cmd: echo b ran}\n";
    let repo = Repo::new(&env, "fail-then-run", &[("zeroCI.yaml", yaml)]);
    assert_eq!(env.cli(&["run", repo.path_str()]).code, 1);
    let job = env.job(last_job(&env));
    assert_eq!(job["status"], "failure");
    assert_eq!(step(&job, "b: t")["status"], "success");

    let yaml = "jobs:\n  - name: a\n    install: exit 3\n    script:\n      - {name: t, cmd: echo no}\n  - name: b\n    script:\n      - {name: t, cmd: echo no}\n";
    let repo = Repo::new(&env, "install-stops", &[("zeroCI.yaml", yaml)]);
    assert_eq!(env.cli(&["run", repo.path_str()]).code, 2);
    let job = env.job(last_job(&env));
    assert_eq!(job["status"], "error");
    assert_eq!(step(&job, "b: checkout")["status"], "skipped");
    assert_eq!(step(&job, "b: t")["status"], "skipped");
}

#[test]
fn environment_and_zeroci_variables_reach_the_commands() {
    // Settings are keyed by the repository's path: a bare name travels with any URL a user submits.
    let outside = tempfile::tempdir().unwrap();
    let script = "script:\n  - echo \"$GLOBAL $PER_REPO $ZEROCI_REPO $ZEROCI_BRANCH $ZEROCI_COMMIT $ZEROCI_JOB_ID $CI\"\n";
    let repo = Repo::at(&outside.path().join("envy"), &[("zeroCI.yaml", script)]);
    // Before the controller starts: it watches `local:` repositories, and a later commit is a job.
    let commit = repo.commit(&[("x", "y")], "c");
    let env = TestEnv::start_with(Settings {
        extra: format!(
            "[environment]\nGLOBAL = \"g1\"\n[repos.\"local:{}\"]\nenv = {{ PER_REPO = \"r1\" }}\n",
            repo.path_str()
        ),
        ..Settings::default()
    });
    let out = env.cli(&["run", repo.path_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = last_job(&env);
    assert_eq!(
        out.stdout_str(),
        format!("g1 r1 envy main {commit} {id} true\n")
    );
}

#[test]
fn secrets_are_masked_whole_split_across_writes_and_base64_encoded() {
    let yaml = r#"bin_path: dist/s3cr3t-value.tar
script:
  - echo "token=$TOKEN"
  - printf 's3cr3t'; sleep 0.3; printf -- '-value and more\n'
  - printf 'user:%s' "$TOKEN" | base64
  - name: report
    cmd: printf '<testsuite name="s"><testcase name="login %s"><failure message="bad %s">%s</failure></testcase></testsuite>' "$TOKEN" "$TOKEN" "$TOKEN" > "$ZEROCI_TEST_XML"
"#;
    // The repository exists before the controller starts: a `local:` key makes the controller watch
    // it, and a repository appearing later would be a new branch head, hence a second job.
    let outside = tempfile::tempdir().unwrap();
    let repo = Repo::at(&outside.path().join("secretive"), &[("zeroCI.yaml", yaml)]);
    let env = TestEnv::start_with(Settings {
        extra: format!(
            "[repos.\"local:{}\"]\nsecrets = {{ TOKEN = \"s3cr3t-value\" }}\nmask_base64 = true\n",
            repo.path_str()
        ),
        ..Settings::default()
    });
    let out = env.cli(&["run", repo.path_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = last_job(&env);
    let log = String::from_utf8(env.raw_log(id, None)).unwrap();
    assert!(!log.contains("s3cr3t"), "{log}");
    assert!(log.starts_with("token=***\n*** and more\n"), "{log:?}");
    let encoded = std::process::Command::new("sh")
        .args(["-c", "printf 'user:s3cr3t-value' | base64"])
        .output()
        .unwrap();
    let encoded = String::from_utf8(encoded.stdout).unwrap();
    assert!(!log.contains(encoded.trim()), "base64 form leaked: {log}");
    assert!(!out.stdout_str().contains("s3cr3t"));
    // The JUnit report is masked before it leaves the machine: stored and parsed, no secret.
    let show = env.cli(&["show", &id.to_string(), "--json"]).json();
    let reports = show["test_reports"].to_string();
    assert!(reports.contains("login ***"), "{reports}");
    // Nowhere in what `show` gives: artifacts (one named after the secret is refused), messages.
    assert!(!show.to_string().contains("s3cr3t-value"), "{show:#}");
    assert!(show.to_string().contains("dist/***.tar"), "{show:#}");
}

#[test]
fn a_step_silent_for_longer_than_the_idle_timeout_is_stopped() {
    let env = TestEnv::start_with(Settings {
        extra: "[main]\nidle_timeout = 1\n".into(),
        ..Settings::default()
    });
    let repo = Repo::new(
        &env,
        "silent",
        &[(
            "zeroCI.yaml",
            "script:\n  - echo a; sleep 30; echo b\n  - echo never\n",
        )],
    );
    assert_eq!(env.cli(&["run", repo.path_str()]).code, 2);
    let job = env.job(last_job(&env));
    let silent = step(&job, "echo a; sleep 30; echo b");
    assert_eq!(silent["exit_code"], 124);
    assert_eq!(silent["status"], "error");
    assert_eq!(step(&job, "echo never")["status"], "skipped");
}

const PYTEST_XML: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3" time="0.05" timestamp="2026-11-22T10:00:00" hostname="h"><testcase classname="tests.test_math" name="test_add" time="0.001" /><testcase classname="tests.test_math" name="test_div" time="0.002"><failure message="ZeroDivisionError: division by zero">def test_div():
&gt;       1 / 0
E       ZeroDivisionError: division by zero</failure></testcase><testcase classname="tests.test_math" name="test_skip" time="0.000"><skipped type="pytest.skip" message="not today">skipped</skipped></testcase></testsuite></testsuites>"#;

const NOSE_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><testsuite name="nosetests" tests="2" errors="1" failures="0" skip="0"><testcase classname="test_io" name="test_read" time="0.01"></testcase><testcase classname="test_io" name="test_write" time="0.02"><error type="exceptions.IOError" message="disk full"><![CDATA[Traceback (most recent call last):
IOError: disk full]]></error></testcase></testsuite>"#;

#[test]
fn junit_reports_in_pytest_and_nose_flavours_are_parsed_and_broken_ones_kept() {
    let env = TestEnv::start();
    let yaml = "script:\n  - name: pytest\n    cmd: cp pytest.xml \"$ZEROCI_TEST_XML\"\n  - name: nose\n    cmd: cp nose.xml \"$ZEROCI_TEST_XML\"\n  - name: broken\n    cmd: printf '<testsuite><testcase' > \"$ZEROCI_TEST_XML\"\n";
    let repo = Repo::new(
        &env,
        "reports",
        &[
            ("zeroCI.yaml", yaml),
            ("pytest.xml", PYTEST_XML),
            ("nose.xml", NOSE_XML),
        ],
    );
    let out = env.cli(&["run", repo.path_str()]);
    assert_eq!(
        out.code, 0,
        "a broken report never fails the job by itself: {}",
        out.stderr
    );
    let id = last_job(&env);
    let show = env.cli(&["show", &id.to_string(), "--json"]).json();
    let pytest = step(&show, "pytest");
    assert_eq!(pytest["tests"]["total"], 3);
    assert_eq!(pytest["tests"]["failed"], 1);
    assert_eq!(pytest["tests"]["skipped"], 1);
    let nose = step(&show, "nose");
    assert_eq!(nose["tests"]["errors"], 1);
    assert_eq!(nose["tests"]["passed"], 1);
    let broken = step(&show, "broken");
    assert_eq!(broken["tests"], serde_json::Value::Null);
    assert!(
        broken["message"].as_str().unwrap().contains("unreadable"),
        "{broken:#}"
    );
    let reports = show["test_reports"].as_array().unwrap();
    let failed = reports
        .iter()
        .flat_map(|r| r["cases"].as_array().unwrap())
        .find(|c| c["name"] == "test_div")
        .unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["message"], "ZeroDivisionError: division by zero");
    let human = env.cli(&["show", &id.to_string()]).stdout_str();
    assert!(
        human.contains("FAILED tests.test_math.test_div: ZeroDivisionError"),
        "{human}"
    );
}
