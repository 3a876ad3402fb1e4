//! Stopping jobs: cancel, step timeout, a killed agent.

use crate::harness::{Lines, Repo, Settings, TestEnv, patience, step};

#[test]
fn cancel_mid_step_kills_the_step_and_ends_cancelled() {
    let env = TestEnv::start();
    let repo = Repo::new(
        &env,
        "long",
        &[(
            "zeroCI.yaml",
            "script:\n  - echo started; sleep 6001 & sleep 6001; wait\n  - echo never\n",
        )],
    );
    let mut run = env.spawn_cli(&["run", repo.path_str()], None);
    let mut stdout = Lines::new(run.child.stdout.take().unwrap());
    stdout.wait_for("started");
    let id = env.cli(&["jobs", "--json"]).json()[0]["id"]
        .as_u64()
        .unwrap();
    let out = env.cli(&["cancel", &id.to_string()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let status = run.wait_timeout(patience()).expect("run ends after cancel");
    assert_eq!(status.code(), Some(3));
    let job = env.job(id);
    assert_eq!(job["status"], "cancelled");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("cancelled by admin"),
        "{job:#}"
    );
    assert_eq!(step(&job, "echo never")["status"], "skipped");
    // The step's whole process group is gone, background sleep included.
    let mut ps = String::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            ps.push_str(&String::from_utf8_lossy(&cmd));
            ps.push('\n');
        }
    }
    assert!(!ps.contains("sleep\u{0}6001"), "sleep 6001 still running");
}

/// True when some process's command line contains `needle` (NUL-separated arguments).
fn running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(needle))
    })
}

#[test]
fn step_timeout_stops_the_job_with_exit_124() {
    let env = TestEnv::start();
    let yaml = "jobs:\n  - name: slow\n    script:\n      - name: sleeper\n        cmd: sleep 600\n      - name: after\n        cmd: echo never\n    timeout: 1\n";
    let repo = Repo::new(&env, "timeout", &[("zeroCI.yaml", yaml)]);
    let out = env.cli(&["run", repo.path_str()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let id = env.cli(&["jobs", "--json"]).json()[0]["id"]
        .as_u64()
        .unwrap();
    let job = env.job(id);
    assert_eq!(job["status"], "error");
    assert_eq!(step(&job, "sleeper")["exit_code"], 124);
    assert_eq!(step(&job, "after")["status"], "skipped");
}

#[test]
fn a_pipeline_cannot_raise_timeouts_past_the_controllers_limits() {
    let env = TestEnv::start_with(Settings {
        extra: "[limits]\nmax_step_timeout = 1\nmax_job_duration = 3\n".into(),
        ..Settings::default()
    });
    // The file asks for ten minutes per step: the controller's one-second ceiling wins.
    let yaml = "jobs:\n  - name: slow\n    script:\n      - name: sleeper\n        cmd: sleep 600\n    timeout: 600\n";
    let repo = Repo::new(&env, "greedy", &[("zeroCI.yaml", yaml)]);
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "error", "{job:#}");
    assert_eq!(step(&job, "sleeper")["exit_code"], 124, "{job:#}");

    // Many short steps, each under the step ceiling, together past the job's.
    let steps: String = (0..8)
        .map(|n| format!("      - name: s{n}\n        cmd: sleep 0.9\n"))
        .collect();
    let yaml = format!("jobs:\n  - name: long\n    script:\n{steps}");
    let repo = Repo::new(&env, "long", &[("zeroCI.yaml", &yaml)]);
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert!(
        job["reason"].as_str().unwrap().contains("max_job_duration"),
        "{job:#}"
    );
}

#[test]
fn killed_agent_is_declared_lost_and_the_job_ends_error() {
    let env = TestEnv::start_with(Settings {
        lost_agent_timeout: 2,
        heartbeat_interval_ms: 200,
        ..Settings::default()
    });
    let repo = Repo::new(
        &env,
        "victim",
        &[("zeroCI.yaml", "script:\n  - echo started; sleep 6002\n")],
    );
    let mut run = env.spawn_cli(&["run", repo.path_str()], None);
    let mut stdout = Lines::new(run.child.stdout.take().unwrap());
    stdout.wait_for("started");
    let id = env.cli(&["jobs", "--json"]).json()[0]["id"]
        .as_u64()
        .unwrap();
    let pid = env.stored_job(id)["machine"]["details"]["pid"]
        .as_i64()
        .expect("agent pid recorded");
    // SAFETY: the agent process this test's controller started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let status = run
        .wait_timeout(patience())
        .expect("run ends once the agent is declared lost");
    assert_eq!(status.code(), Some(2));
    let job = env.job(id);
    assert_eq!(job["status"], "error");
    assert!(
        job["reason"].as_str().unwrap().contains("agent lost"),
        "{job:#}"
    );
    let finished = job["finished_at"].as_str().is_some();
    assert!(finished);
    // The machine is destroyed: its directory is gone, and the step the dead agent left behind too.
    let machines = env.home().join("state/machines");
    zeroci_testkit::wait_for("the machine destroyed (no directory, no step left)", || {
        let left = std::fs::read_dir(&machines).map(|d| d.count()).unwrap_or(0) > 0
            || running("sleep\u{0}6002");
        (!left).then_some(())
    });
}

#[test]
fn jobs_beyond_max_machines_wait_saying_why_and_run_when_a_machine_is_free() {
    let env = TestEnv::start_with(Settings {
        extra: "[provisioner.local]\nmax_machines = 1\n".into(),
        ..Settings::default()
    });
    let busy = Repo::new(
        &env,
        "busy",
        &[("zeroCI.yaml", "script:\n  - echo busy; sleep 6002\n")],
    );
    let first = env.submit(&busy.path);
    env.wait_for_output(first, None, "busy");
    let next = Repo::new(&env, "next", &[("zeroCI.yaml", "script:\n  - echo two\n")]);
    let second = env.submit(&next.path);
    let third = env.submit(&next.path);
    for id in [second, third] {
        let job = zeroci_testkit::wait_for("the job to say it waits for a machine", || {
            let job = env.job(id);
            (job["waiting_for"] != "").then_some(job)
        });
        assert_eq!(
            job["waiting_for"], "no local machine free: all 1 machines are in use (max_machines)",
            "{job:#}"
        );
        assert_eq!(job["status"], "provisioning");
    }
    let shown = env.cli(&["show", &second.to_string()]).stdout_str();
    assert!(
        shown.contains("waiting:      no local machine free"),
        "{shown}"
    );
    // Cancelled while it waits: cancelled, not an error.
    assert_eq!(env.cli(&["cancel", &third.to_string()]).code, 0);
    let job = env.wait_job(third);
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert_eq!(job["waiting_for"], "");
    // The machine comes free: the waiting job gets it.
    assert_eq!(env.cli(&["cancel", &first.to_string()]).code, 0);
    let job = env.wait_job(second);
    assert_eq!(job["status"], "success", "{job:#}");
    assert_eq!(job["waiting_for"], "");
    assert_eq!(env.raw_log(second, None), b"two\n");
}
