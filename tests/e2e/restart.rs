//! A controller killed with SIGKILL mid-job and started again: the job finishes, with all its output,
//! exactly once.

use crate::harness::{Lines, Repo, Settings, TestEnv, pipeline};

#[test]
fn controller_killed_mid_job_and_restarted_finishes_the_job_with_full_output_once() {
    let mut env = TestEnv::start();
    let script = "for i in $(seq 1 40); do echo line $i; sleep 0.05; done";
    let repo = Repo::new(
        &env,
        "steady",
        &[(
            "zeroCI.yaml",
            &format!("script:\n  - {script}\n  - echo second step\n"),
        )],
    );
    let id = env.submit(&repo.path);
    let mut follow = env.spawn_cli(&["logs", &id.to_string(), "--follow", "--raw"], None);
    let mut lines = Lines::new(follow.child.stdout.take().unwrap());
    lines.wait_for("line 3");
    let addr = env.grpc_addr.clone();
    env.kill_controller();
    // The follower notices and gives up or retries; it is not what this test checks.
    drop(follow);
    env.start_controller(&addr);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let mut expected = String::new();
    for i in 1..=40 {
        expected.push_str(&format!("line {i}\n"));
    }
    expected.push_str("second step\n");
    assert_eq!(String::from_utf8(env.raw_log(id, None)).unwrap(), expected);
    assert_eq!(job["attempt"], 1, "the job kept its machine");
}

#[test]
fn queued_jobs_survive_a_controller_restart() {
    let mut env = TestEnv::start_with(crate::harness::Settings {
        workers: 1,
        ..Default::default()
    });
    let blocker = Repo::new(
        &env,
        "blocker",
        &[("zeroCI.yaml", "script:\n  - sleep 1\n")],
    );
    let quick = Repo::new(
        &env,
        "quick",
        &[("zeroCI.yaml", "script:\n  - echo quick\n")],
    );
    let first = env.submit(&blocker.path);
    let second = env.submit(&quick.path);
    assert_eq!(env.job(second)["status"], "queued");
    let addr = env.grpc_addr.clone();
    env.kill_controller();
    env.start_controller(&addr);
    assert_eq!(env.wait_job(first)["status"], "success");
    assert_eq!(env.wait_job(second)["status"], "success");
    assert_eq!(env.raw_log(second, None), b"quick\n");
}

#[test]
fn the_output_limit_counts_what_was_stored_before_a_controller_restart() {
    let mut env = TestEnv::start_with(Settings {
        extra: "[limits]\nmax_log_bytes = 1000\n".into(),
        ..Settings::default()
    });
    // The pause leaves the test time to restart the controller between the two halves; were it too
    // short, the test would pass without testing anything, never fail wrongly.
    let script =
        "head -c 600 /dev/zero | tr '\\0' a; echo; sleep 3; head -c 600 /dev/zero | tr '\\0' b";
    let repo = Repo::new(
        &env,
        "chatty-across-restarts",
        &[("zeroCI.yaml", &pipeline(&[script]))],
    );
    let id = env.submit(&repo.path);
    let mut follow = env.spawn_cli(&["logs", &id.to_string(), "--follow", "--raw"], None);
    let mut lines = Lines::new(follow.child.stdout.take().unwrap());
    lines.wait_for(&"a".repeat(600));
    let addr = env.grpc_addr.clone();
    env.kill_controller();
    drop(follow);
    env.start_controller(&addr);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let (stored, _) = env.log_cut_at_limit(id);
    assert_eq!(stored, format!("{}\n{}", "a".repeat(600), "b".repeat(399)));
}
