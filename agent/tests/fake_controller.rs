//! Component test: the real `zeroci-agent` binary against an in-process fake controller (see
//! `support`). The cases cover a whole job, a stream dropped mid-job with unacknowledged events, a
//! refused token, a controller cancel, SIGTERM on the agent, fencing, and giving up.

mod support;

use support::*;
use zeroci::pb::{RunSteps, StepKind, agent_event::Kind as Ev};

/// The checks shared by both cases: a complete, ordered, gap-free job report.
fn check_job(run: &Run) {
    let seen = run.seen.lock().unwrap();
    let log = &run.log;
    assert_eq!(run.exit_code, Some(0), "agent exit code; log:\n{log}");
    assert!(
        seen.violations.is_empty(),
        "violations {:?}; log:\n{log}",
        seen.violations
    );
    assert!(
        !run.bootstrap.exists(),
        "bootstrap file must be deleted after enrollment"
    );
    assert!(seen.heartbeats > 0, "no heartbeats");
    let hello = &seen.hellos[0];
    assert_eq!(
        (hello.job_id, hello.attempt, hello.has_assignment),
        (JOB_ID, 1, false)
    );
    assert!(!hello.agent_version.is_empty());

    let stored = &seen.stored;
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "sequence numbers 1..n"
    );
    assert!(
        matches!(
            stored.last().and_then(|e| e.kind.as_ref()),
            Some(Ev::Finished(_))
        ),
        "Finished last"
    );
    assert_eq!(seen.acked, stored.len() as u64, "everything acknowledged");

    // StepExited comes after all of its step's output, and after its StepStarted.
    let mut exits = std::collections::BTreeMap::new();
    for (i, e) in stored.iter().enumerate() {
        match &e.kind {
            Some(Ev::StepExited(x)) => {
                assert!(
                    exits.insert(x.step, (i, x.clone())).is_none(),
                    "step {} exited twice",
                    x.step
                );
            }
            Some(Ev::Output(o)) => assert!(
                !exits.contains_key(&o.step),
                "output of step {} after its exit",
                o.step
            ),
            Some(Ev::StepStarted(s)) => assert!(!exits.contains_key(&s.step)),
            _ => {}
        }
    }
    let codes: Vec<(u32, i32)> = exits.values().map(|(_, x)| (x.step, x.exit_code)).collect();
    // The failed script step (2) does not stop step 3.
    assert_eq!(codes, vec![(0, 0), (1, 0), (2, 3), (3, 0)], "log:\n{log}");

    let checked_out = stored
        .iter()
        .find_map(|e| match &e.kind {
            Some(Ev::CheckedOut(c)) => Some(c.clone()),
            _ => None,
        })
        .expect("CheckedOut");
    assert_eq!(checked_out.commit, run.commit);
    assert!(checked_out.has_pipeline_file && !checked_out.pipeline_file_too_large);
    assert_eq!(&checked_out.pipeline_file[..], PIPELINE);

    let out = outputs(stored);
    let (stdout, stderr) = (1, 2);
    assert_eq!(out[&(1, stdout)], b"installing\n");
    assert_eq!(out[&(1, stderr)], b"env:true|7|install|demo");
    assert_eq!(
        out[&(2, stdout)],
        b"line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nno newline"
    );
    assert_eq!(out[&(3, stdout)], b"\x00\x01\xffbinary\r\n");
    assert_eq!(out[&(3, stderr)], run.commit.as_bytes());
    assert!(
        !out.keys().any(|(step, _)| *step == 0),
        "a successful checkout is quiet: the log holds only what the commands printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_a_job_end_to_end() {
    let run = run_agent(Case::default()).await;
    check_job(&run);
    let seen = run.seen.lock().unwrap();
    assert_eq!(seen.hellos.len(), 1, "one stream is enough");
    assert_eq!(
        seen.received.len(),
        seen.stored.len(),
        "nothing resent without a reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_and_resends_unacknowledged_events() {
    let run = run_agent(Case {
        drop_at_step: Some(2),
        off_branch: true,
        ..Case::default()
    })
    .await;
    check_job(&run);
    let seen = run.seen.lock().unwrap();
    assert!(seen.dropped, "the stream was dropped");
    assert!(seen.hellos.len() >= 2, "the agent reconnected");
    let again = &seen.hellos[1];
    assert!(
        again.has_assignment,
        "a reconnecting agent already has its assignment"
    );
    let first_unacked = seen
        .stored
        .iter()
        .find(|e| matches!(&e.kind, Some(Ev::Output(o)) if o.step == 2))
        .map(|e| e.seq)
        .unwrap();
    assert!(again.last_seq >= first_unacked);
    let resent = seen.received.len() - seen.stored.len();
    assert!(resent >= 1, "unacknowledged events were resent");
    assert!(
        seen.received
            .iter()
            .filter(|e| e.seq == first_unacked)
            .count()
            >= 2,
        "the first unacknowledged event was sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_enrollment_exits_2() {
    let run = run_agent(Case {
        token: Some("wrong-token"),
        ..Case::default()
    })
    .await;
    assert_eq!(run.exit_code, Some(2), "log:\n{}", run.log);
    assert!(
        run.bootstrap.exists(),
        "a refused token leaves the file for inspection"
    );
    assert!(run.seen.lock().unwrap().hellos.is_empty());
}

/// A step that waits forever after printing "ready", and one that must never run.
fn blocking_steps() -> RunSteps {
    RunSteps {
        bin_path: String::new(),
        artifacts: Vec::new(),
        steps: vec![
            step(
                1,
                "block",
                StepKind::Script,
                "sleep 100 & echo ready; sleep 100; wait",
            ),
            step(2, "never", StepKind::Script, "echo should-not-run"),
        ],
    }
}

/// Checks a job that was stopped during step 1: cancelled exit, no step 2, `Finished`, exit 0.
fn check_stopped(run: &Run, reason: &str) {
    let seen = run.seen.lock().unwrap();
    let log = &run.log;
    assert_eq!(run.exit_code, Some(0), "log:\n{log}");
    assert!(
        seen.violations.is_empty(),
        "violations {:?}; log:\n{log}",
        seen.violations
    );
    let exits: Vec<_> = seen
        .stored
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Ev::StepExited(x)) => Some(x.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(exits.len(), 2, "checkout and step 1 only: {exits:?}");
    let stopped = &exits[1];
    assert_eq!(stopped.step, 1);
    assert!(stopped.cancelled && !stopped.timed_out, "{stopped:?}");
    assert_eq!(stopped.exit_code, 128 + libc::SIGTERM);
    assert_eq!(stopped.message, reason);
    assert!(
        !outputs(&seen.stored).keys().any(|(step, _)| *step == 2),
        "step 2 must not run"
    );
    assert!(matches!(
        seen.stored.last().and_then(|e| e.kind.as_ref()),
        Some(Ev::Finished(_))
    ));
    assert_eq!(seen.acked, seen.stored.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_cancel_stops_the_running_step() {
    let case = Case {
        steps: Some(blocking_steps()),
        on_output: Some((b"ready\n", Trigger::Cancel)),
        ..Case::default()
    };
    let run = run_agent(case).await;
    check_stopped(&run, "cancelled by the test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_going_away_and_flushes_the_job() {
    let case = Case {
        steps: Some(blocking_steps()),
        on_output: Some((b"ready\n", Trigger::Sigterm)),
        ..Case::default()
    };
    let run = run_agent(case).await;
    check_stopped(&run, "agent received SIGTERM");
    assert_eq!(
        run.seen.lock().unwrap().going_away,
        vec!["agent received SIGTERM".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_agent_exits_1() {
    let run = run_agent(Case {
        fence: true,
        ..Case::default()
    })
    .await;
    assert_eq!(run.exit_code, Some(1), "log:\n{}", run.log);
    assert!(run.log.contains("refused"), "log:\n{}", run.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_controller_gives_up_with_exit_1() {
    let run = run_agent(Case {
        unreachable: true,
        ..Case::default()
    })
    .await;
    assert_eq!(run.exit_code, Some(1), "log:\n{}", run.log);
    assert!(run.bootstrap.exists(), "the token was never used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_controller_is_abandoned_and_the_job_completes() {
    let case = Case {
        drop_at_step: Some(2),
        silent: true,
        ..Case::default()
    };
    let run = run_agent(case).await;
    check_job(&run);
    let seen = run.seen.lock().unwrap();
    assert!(seen.hellos.len() >= 2, "the agent reconnected");
    assert!(run.log.contains("controller silent"), "log:\n{}", run.log);
}
