//! Running repositories: results, exit codes, exact output, concurrency.

use crate::harness::{Repo, Settings, TestEnv, pipeline, step};

#[test]
fn passing_repository_succeeds_and_raw_log_is_exactly_the_bytes_printed() {
    let env = TestEnv::start();
    let repo = Repo::new(
        &env,
        "passing",
        &[(
            "zeroCI.yaml",
            &pipeline(&[
                "printf 'hello\\nno trailing newline'",
                "printf '\\000\\001\\377\\376 binary'",
                "printf 'to stderr\\n' >&2",
            ]),
        )],
    );
    let out = env.cli(&["run", repo.path_str()]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let expected: &[u8] = b"hello\nno trailing newline\x00\x01\xff\xfe binaryto stderr\n";
    // `run` streams exactly the commands' bytes to stdout.
    assert_eq!(out.stdout, expected);
    let id: u64 = out
        .stderr
        .split("job ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let job = env.job(id);
    assert_eq!(job["status"], "success");
    assert_eq!(env.raw_log(id, None), expected);
    assert_eq!(env.raw_log(id, Some("2")), b"\x00\x01\xff\xfe binary");
    assert_eq!(step(&job, "checkout")["status"], "success");
    assert_eq!(job["steps"].as_array().unwrap().len(), 4);
}

#[test]
fn failing_step_fails_the_job_but_later_steps_still_run() {
    let env = TestEnv::start();
    let repo = Repo::new(
        &env,
        "failing",
        &[(
            "zeroCI.yaml",
            &pipeline(&["echo one", "exit 3", "echo after"]),
        )],
    );
    let out = env.cli(&["run", repo.path_str()]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, b"one\nafter\n");
    let id = env.cli(&["jobs", "--json"]).json()[0]["id"]
        .as_u64()
        .unwrap();
    let job = env.job(id);
    assert_eq!(job["status"], "failure");
    assert_eq!(step(&job, "exit 3")["exit_code"], 3);
    assert_eq!(step(&job, "exit 3")["status"], "failure");
    assert_eq!(step(&job, "echo after")["status"], "success");
}

#[test]
fn install_failure_is_an_error_and_stops_the_job() {
    let env = TestEnv::start();
    let yaml =
        "install:\n  - echo installing\n  - false\n  - echo never\nscript:\n  - echo not run\n";
    let repo = Repo::new(&env, "install-fails", &[("zeroCI.yaml", yaml)]);
    let out = env.cli(&["run", repo.path_str()]);
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, b"installing\n");
    let id = env.cli(&["jobs", "--json"]).json()[0]["id"]
        .as_u64()
        .unwrap();
    let job = env.job(id);
    assert_eq!(job["status"], "error");
    assert_eq!(step(&job, "install")["status"], "failure");
    assert_eq!(step(&job, "echo not run")["status"], "skipped");
}

#[test]
fn invalid_pipeline_file_is_an_error_with_a_zeroci_yaml_step_naming_line_and_key() {
    let env = TestEnv::start();
    // `scrpt` is only a warning (unknown keys are ignored); the missing `script` is the error.
    let repo = Repo::new(
        &env,
        "invalid",
        &[(
            "zeroCI.yaml",
            "install:\n  - echo ok\nscrpt:\n  - echo ok\n",
        )],
    );
    let out = env.cli(&["run", repo.path_str()]);
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    let id = env.cli(&["jobs", "--json"]).json()[0]["id"]
        .as_u64()
        .unwrap();
    let job = env.job(id);
    assert_eq!(job["status"], "error");
    let config = step(&job, "zeroCI.yaml");
    assert_eq!(config["status"], "error");
    let log = String::from_utf8(env.raw_log(id, Some("zeroCI.yaml"))).unwrap();
    // Every error, then every warning, exactly as `zeroci lint` prints them.
    assert!(
        log.starts_with("zeroCI.yaml:1:1: script: is required: a list of commands to run\n"),
        "{log}"
    );
    assert!(
        log.contains(
            "zeroCI.yaml:3:1: warning: scrpt: unknown key, ignored; did you mean `script`?"
        ),
        "{log}"
    );
}

#[test]
fn twenty_jobs_submitted_at_once_all_finish_with_at_most_workers_running() {
    let workers = 3;
    let env = TestEnv::start_with(Settings {
        workers,
        ..Settings::default()
    });
    let repo = Repo::new(
        &env,
        "sleepy",
        &[("zeroCI.yaml", &pipeline(&["sleep 0.2", "echo done"]))],
    );
    let submitters: Vec<_> = (0..20)
        .map(|_| env.spawn_cli(&["run", repo.path_str(), "--detach"], None))
        .collect();
    let mut ids = Vec::new();
    for mut proc in submitters {
        let status = proc
            .wait_timeout(crate::harness::patience())
            .expect("submit finished");
        assert!(status.success());
        let mut out = String::new();
        std::io::Read::read_to_string(proc.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        ids.push(out.trim().parse::<u64>().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    let mut intervals = Vec::new();
    for id in &ids {
        let job = env.wait_job(*id);
        assert_eq!(job["status"], "success", "{job:#}");
        let stored = env.stored_job(*id);
        intervals.push((
            stored["started_at"].as_i64().unwrap(),
            stored["finished_at"].as_i64().unwrap(),
        ));
    }
    // At no instant were more than `workers` jobs between claim and final status.
    for (start, _) in &intervals {
        let overlapping = intervals
            .iter()
            .filter(|(s, f)| s <= start && start < f)
            .count();
        assert!(
            overlapping <= workers,
            "{overlapping} jobs ran at once: {intervals:?}"
        );
    }
}

#[test]
fn output_past_the_job_limit_is_dropped_with_a_line_saying_so_and_the_job_runs_on() {
    let env = TestEnv::start_with(Settings {
        extra: "[limits]\nmax_log_bytes = 1000\n".into(),
        ..Settings::default()
    });
    let repo = Repo::new(
        &env,
        "chatty",
        &[(
            "zeroCI.yaml",
            &pipeline(&[
                "head -c 600 /dev/zero | tr '\\0' a",
                "head -c 5000 /dev/zero | tr '\\0' b",
                "echo still running > proof && cat proof",
            ]),
        )],
    );
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let (stored, note) = env.log_cut_at_limit(id);
    assert_eq!(stored, format!("{}{}", "a".repeat(600), "b".repeat(400)));
    assert!(
        note.ends_with("[limits] max_log_bytes); the rest is not stored\n"),
        "{note}"
    );
    assert!(!note.contains("still running"), "{note}");
    let steps = job["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "{job:#}");
    assert_eq!(steps[3]["status"], "success", "the steps ran on: {job:#}");
}

#[test]
fn output_past_the_job_limit_cancels_the_job_when_so_configured() {
    let env = TestEnv::start_with(Settings {
        extra: "[limits]\nmax_log_bytes = 1000\non_log_limit = \"cancel\"\n".into(),
        ..Settings::default()
    });
    let repo = Repo::new(
        &env,
        "flood",
        &[(
            "zeroCI.yaml",
            &pipeline(&["head -c 5000 /dev/zero | tr '\\0' b; sleep 600"]),
        )],
    );
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert!(
        job["reason"].as_str().unwrap().contains("max_log_bytes"),
        "{job:#}"
    );
    let log = String::from_utf8(env.raw_log(id, None)).unwrap();
    assert!(
        log.contains("the rest is not stored and the job is cancelled"),
        "{log}"
    );
}

#[test]
fn the_output_limit_counts_every_pipeline_job_of_a_run() {
    let env = TestEnv::start_with(Settings {
        extra: "[limits]\nmax_log_bytes = 1000\n".into(),
        ..Settings::default()
    });
    let pipeline = "jobs:
  - name: first
    script:
      - head -c 600 /dev/zero | tr '\\0' a
  - name: second
    script:
      - head -c 600 /dev/zero | tr '\\0' b
";
    let repo = Repo::new(&env, "two-chatty-jobs", &[("zeroCI.yaml", pipeline)]);
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let (stored, _) = env.log_cut_at_limit(id);
    assert_eq!(stored, format!("{}{}", "a".repeat(600), "b".repeat(400)));
}
