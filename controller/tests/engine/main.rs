//! The engine's behaviour on its seams' second implementations: the in-memory store and a scripted
//! provisioner, with agents played in-process. These tests run jobs without spawning a binary, so they
//! can break the store or the clock's assumptions on purpose.

mod schedules;
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use support::*;
use zeroci::pb;
use zeroci::resources::Resources;
use zeroci_controller::jobs::JobStatus;
use zeroci_controller::store::Stores;
use zeroci_controller::store::memory::MemoryStore;

fn memory() -> Stores {
    Stores::all(Arc::new(MemoryStore::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_events_are_stored_exactly_once() {
    let controller = Controller::start(test_config("a"), memory()).await;
    let (id, request, mut agent) = controller.run_job().await;
    let events = agent.events(vec![
        started(0),
        exited(0, 0),
        checked_out("echo"),
        started(1),
        output(1, "one "),
        output(1, "two "),
        output(1, "three"),
        exited(1, 0),
        finished(),
    ]);
    let engine = &controller.engine;
    // The first batch is stored and acknowledged; the agent, not having seen the ack, resends part of
    // it together with new events, then resends everything.
    assert_eq!(
        engine
            .handle_events(&agent.active, events[..5].to_vec())
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        engine
            .handle_events(&agent.active, events[2..7].to_vec())
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        engine
            .handle_events(&agent.active, events.clone())
            .await
            .unwrap(),
        9
    );
    let job = controller.finished(id).await;
    assert_eq!(job.status, JobStatus::Success, "{job:?}");
    let (bytes, seqs) = stored_output(engine, id).await;
    assert_eq!(bytes, b"one two three");
    assert_eq!(
        seqs,
        (1..=9).collect::<Vec<u64>>(),
        "each event once, in order"
    );
    // Late resends after the end change nothing.
    engine.handle_events(&agent.active, events).await.unwrap();
    assert_eq!(stored_output(engine, id).await.1.len(), 9);
    agent.rx.close();
    zeroci_testkit::eventually("the machine destroyed", || async {
        controller
            .provisioner
            .destroyed()
            .contains(&request.name)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_events_ends_the_job_instead_of_corrupting_its_log() {
    let controller = Controller::start(test_config("a"), memory()).await;
    let (id, _, mut agent) = controller.run_job().await;
    let events = agent.events(vec![
        started(0),
        exited(0, 0),
        checked_out("echo"),
        started(1),
    ]);
    let sent = vec![events[0].clone(), events[1].clone(), events[3].clone()];
    assert_eq!(
        controller
            .engine
            .handle_events(&agent.active, sent)
            .await
            .unwrap(),
        2
    );
    let job = controller.finished(id).await;
    assert_eq!(job.status, JobStatus::Error);
    assert!(
        job.reason.contains("expected event 3, got 4"),
        "{}",
        job.reason
    );
    assert_eq!(stored_output(&controller.engine, id).await.1, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_claims_leave_every_job_cancelled_and_no_machine_behind() {
    let controller = Controller::start(test_config("a"), memory()).await;
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(controller.submit().await);
    }
    // Workers claim and provision while the cancels arrive: each job is either still queued, being
    // claimed, or provisioning when its cancel lands.
    let cancels: Vec<_> = ids
        .iter()
        .map(|&id| {
            let engine = controller.engine.clone();
            tokio::spawn(async move { engine.cancel(id, "race".into()).await.unwrap() })
        })
        .collect();
    for cancel in cancels {
        cancel.await.unwrap();
    }
    for &id in &ids {
        let job = controller.finished(id).await;
        assert_eq!(job.status, JobStatus::Cancelled, "job {id}: {job:?}");
        assert_eq!(job.reason, "race");
    }
    zeroci_testkit::eventually("every machine made to be destroyed", || async {
        let created = controller.provisioner.created();
        let destroyed = controller.provisioner.destroyed();
        created.iter().all(|m| destroyed.contains(m)).then_some(())
    })
    .await;
    for id in ids {
        assert!(controller.record(id).await.machine.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_declared_lost_and_its_machine_destroyed() {
    let controller = Controller::start(test_config("a"), memory()).await;
    let (id, request, mut agent) = controller.run_job().await;
    let events = agent.events(vec![
        started(0),
        exited(0, 0),
        checked_out("sleep 600"),
        started(1),
    ]);
    controller
        .engine
        .handle_events(&agent.active, events)
        .await
        .unwrap();
    // The agent says nothing more.
    let job = controller.finished(id).await;
    assert_eq!(job.status, JobStatus::Error);
    assert!(job.reason.starts_with("agent lost"), "{}", job.reason);
    assert_eq!(
        job.steps[1].status,
        zeroci_controller::jobs::StepStatus::Error
    );
    zeroci_testkit::eventually("the machine destroyed", || async {
        controller
            .provisioner
            .destroyed()
            .contains(&request.name)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_keeps_failing_ends_the_job_in_bounded_time() {
    let store = Arc::new(FailingStore::default());
    let controller = Controller::start(test_config("a"), Stores::all(store.clone())).await;
    let (id, request, mut agent) = controller.run_job().await;
    let first = agent.events(vec![started(0), exited(0, 0), checked_out("echo")]);
    controller
        .engine
        .handle_events(&agent.active, first)
        .await
        .unwrap();
    store.fail_logs.store(true, Ordering::SeqCst);
    let more = agent.events(vec![started(1), output(1, "lost?")]);
    // The agent keeps resending (it is alive), the store keeps refusing: nothing is acknowledged,
    // and the job ends instead of looping.
    let job = zeroci_testkit::eventually("the job ended by the failing store", || async {
        let refused = controller
            .engine
            .handle_events(&agent.active, more.clone())
            .await;
        let job = controller.record(id).await;
        if !job.status.is_final() {
            assert!(
                refused.is_err(),
                "nothing is acknowledged while the store fails"
            );
        }
        job.status.is_final().then_some(job)
    })
    .await;
    assert_eq!(job.status, JobStatus::Error);
    assert!(
        job.reason.contains("the store keeps failing"),
        "{}",
        job.reason
    );
    assert!(job.reason.contains("No space left"), "{}", job.reason);
    zeroci_testkit::eventually("the machine destroyed", || async {
        controller
            .provisioner
            .destroyed()
            .contains(&request.name)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_provisioning_failure_is_retried_on_a_clean_machine() {
    let controller = Controller::start(test_config("a"), memory()).await;
    controller.provisioner.fail_next.store(1, Ordering::SeqCst);
    let (id, request, mut agent) = controller.run_job().await;
    assert_eq!(controller.provisioner.created().len(), 2, "asked twice");
    assert!(
        controller.provisioner.destroyed().contains(&request.name),
        "the failed try cleaned up"
    );
    let events = agent.events(whole_run("ok"));
    controller
        .engine
        .handle_events(&agent.active, events)
        .await
        .unwrap();
    assert_eq!(controller.finished(id).await.status, JobStatus::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_agent_of_an_earlier_attempt_is_refused_and_the_new_attempt_is_untouched() {
    let controller = Controller::start(test_config("a"), memory()).await;
    let mut requests = controller.provisioner.requests();
    let id = controller.submit().await;
    // A two-job pipeline: the first machine (attempt 1) runs `a`, then a fresh one (attempt 2) `b`.
    let first = requests.recv().await.expect("the first machine");
    let mut agent = FakeAgent::attach(&controller.engine, id, first.attempt).await;
    let pipeline = "jobs:\n  - name: a\n    script: [x]\n  - name: b\n    script: [y]\n";
    let events = agent.events(vec![
        started(0),
        exited(0, 0),
        checked_out_file(pipeline),
        started(1),
        output(1, "one "),
        exited(1, 0),
        finished(),
    ]);
    controller
        .engine
        .handle_events(&agent.active, events)
        .await
        .unwrap();
    let second = requests.recv().await.expect("the second machine");
    assert_eq!((first.attempt, second.attempt), (1, 2));
    let mut agent = FakeAgent::attach(&controller.engine, id, second.attempt).await;
    let events = agent.events(vec![started(2), exited(2, 0), checked_out_file(pipeline)]);
    controller
        .engine
        .handle_events(&agent.active, events)
        .await
        .unwrap();
    // Attempt 1's agent comes back (it missed its disconnect; a healed partition), with a valid
    // certificate for its own attempt and events to resend.
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let stale = controller
        .engine
        .attach(
            zeroci::pki::Identity::Agent {
                job_id: id,
                attempt: 1,
            },
            pb::Hello {
                job_id: id,
                attempt: 1,
                agent_version: "test".into(),
                has_assignment: true,
                last_seq: 7,
                hostname: "old".into(),
            },
            tx,
            "stale".into(),
            99,
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    let Err(refused) = stale else {
        panic!("a stale attempt was attached")
    };
    assert!(
        refused.to_string().contains("attempt 1 of job") && refused.to_string().contains("stale"),
        "{refused}"
    );
    // The current attempt goes on as if nothing happened.
    let rest = agent.events(vec![started(3), output(3, "two"), exited(3, 0), finished()]);
    controller
        .engine
        .handle_events(&agent.active, rest)
        .await
        .unwrap();
    let job = controller.finished(id).await;
    assert_eq!(
        (job.status, job.attempt),
        (JobStatus::Success, 2),
        "{job:?}"
    );
    assert_eq!(stored_output(&controller.engine, id).await.0, b"one two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_a_machine_at_shutdown_is_queued_again_and_runs_after_the_restart() {
    let store = Arc::new(MemoryStore::default());
    let first = Controller::start(test_config("a"), Stores::all(store.clone())).await;
    first.provisioner.full.store(true, Ordering::SeqCst);
    let id = first.submit().await;
    zeroci_testkit::eventually("the job to wait for a machine", || async {
        first.record(id).await.waiting_for.map(|_| ())
    })
    .await;
    first.stop().await;
    let record = first.record(id).await;
    assert_eq!(record.status, JobStatus::Queued, "{record:?}");
    assert!(record.machine.is_none() && record.lease.is_none() && record.waiting_for.is_none());
    drop(first);
    // The next start takes it like any queued job.
    let second = Controller::start(test_config("a"), Stores::all(store.clone())).await;
    zeroci_testkit::eventually("the job to get a machine", || async {
        (!second.provisioner.created().is_empty()).then_some(())
    })
    .await;
    let record = second.record(id).await;
    assert!(record.machine.is_some(), "{record:?}");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_on_one_store_claim_a_job_once() {
    let store: Stores = memory();
    let a = Controller::start(test_config("a"), store.clone()).await;
    let b = Controller::start(test_config("b"), store.clone()).await;
    let (mut a_requests, mut b_requests) = (a.provisioner.requests(), b.provisioner.requests());
    let id = a.submit().await;
    // The same job reaches b's queue too (a shared queue redelivering, a duplicate push).
    b.engine.recover(&b.tracker).await.unwrap();
    let (winner, request) = tokio::select! {
        Some(request) = a_requests.recv() => (&a, request),
        Some(request) = b_requests.recv() => (&b, request),
    };
    let mut agent = FakeAgent::attach(&winner.engine, id, request.attempt).await;
    let events = agent.events(whole_run("once"));
    winner
        .engine
        .handle_events(&agent.active, events)
        .await
        .unwrap();
    assert_eq!(winner.finished(id).await.status, JobStatus::Success);
    assert_eq!(
        a.provisioner.created().len() + b.provisioner.created().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_controllers_job_is_taken_over_only_after_its_lease_expired() {
    let store: Stores = memory();
    let a = Controller::start(test_config("a"), store.clone()).await;
    let (id, _, mut agent) = a.run_job().await;
    let first = agent.events(vec![
        started(0),
        exited(0, 0),
        checked_out("echo"),
        started(1),
        output(1, "before "),
    ]);
    a.engine.handle_events(&agent.active, first).await.unwrap();
    // Controller a stops supervising (as if it died): its lease is no longer renewed.
    a.stop().await;
    let lease = store
        .jobs
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .lease
        .expect("a's lease");
    assert_eq!(lease.owner, "a");
    let b = Controller::start(test_config("b"), store.clone()).await;
    assert!(
        b.engine.active_job(id).is_none(),
        "a live lease is respected"
    );
    let taken = zeroci_testkit::eventually("b to take the job over", || async {
        b.engine.active_job(id)
    })
    .await;
    assert!(
        zeroci::now_unix_ms() >= lease.expires_at,
        "taken over before the lease expired"
    );
    let record = b.record(id).await;
    assert_eq!(record.lease.as_ref().map(|l| l.owner.as_str()), Some("b"));
    assert_eq!(record.attempt, taken.attempt, "the same attempt goes on");
    // The agent reconnects to b and finishes; nothing is lost or repeated at the switch.
    let mut agent = FakeAgent::attach(&b.engine, id, taken.attempt).await;
    let welcome = match agent.rx.recv().await.unwrap().unwrap().kind {
        Some(pb::controller_message::Kind::Welcome(w)) => w,
        other => panic!("expected Welcome, got {other:?}"),
    };
    assert_eq!(welcome.acked_seq, 5);
    let rest = vec![
        support::event(5, output(1, "before ")), // a resend of what a stored
        support::event(6, output(1, "after")),
        support::event(7, exited(1, 0)),
        support::event(8, finished()),
    ];
    b.engine.handle_events(&agent.active, rest).await.unwrap();
    assert_eq!(b.finished(id).await.status, JobStatus::Success);
    let (bytes, seqs) = stored_output(&b.engine, id).await;
    assert_eq!(bytes, b"before after");
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_job_gets_the_limits_it_asks_for_within_the_controllers() {
    let mut config = test_config("a");
    config.limits.memory_mb = Some(1024);
    let controller = Controller::start(config, memory()).await;
    let (_, request, mut agent) = controller.run_job().await;
    // Before the plan is known the machine gets the controller's limits.
    assert_eq!(
        request.resources,
        Resources {
            cpus: None,
            memory_mb: Some(1024),
            pids: Some(8192),
            disk_gb: None,
        }
    );
    let events = agent.events(vec![
        started(0),
        exited(0, 0),
        checked_out_file("prerequisites: {memory_mb: 4096, pids: 64}\nscript: [x]\n"),
    ]);
    controller
        .engine
        .handle_events(&agent.active, events)
        .await
        .unwrap();
    let run = loop {
        let message = agent
            .rx
            .recv()
            .await
            .expect("the steps")
            .expect("a message");
        if let Some(pb::controller_message::Kind::RunSteps(run)) = message.kind {
            break run;
        }
    };
    let granted = Resources {
        cpus: None,
        memory_mb: Some(1024),
        pids: Some(64),
        disk_gb: None,
    };
    assert_eq!(
        *controller.provisioner.limited.lock().unwrap(),
        [(request.name.clone(), granted)],
        "limited before the steps were sent"
    );
    assert_eq!(
        run.steps[0].notes,
        [
            "this machine's limits: 1024 MiB of memory, 64 processes",
            "prerequisites.memory_mb 4096 MiB is more than this controller allows; using 1024 MiB",
            "limits not enforced here: cpu (scripted)",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reason_shown_with_a_job_never_carries_its_secrets() {
    let mut config = test_config("a");
    config.repos.insert(
        "demo".into(),
        toml::from_str("secrets = { TOKEN = \"tok-3f9a-secret\" }").unwrap(),
    );
    // No worker takes it: the cancel finds it queued.
    config.main.workers = 1;
    let controller = Controller::start(config, memory()).await;
    let (_running, _, _agent) = controller.run_job().await;
    let id = controller.submit().await;
    let record = controller
        .engine
        .cancel(id, "stop: tok-3f9a-secret leaked in the chat".into())
        .await
        .unwrap();
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(record.reason, "stop: *** leaked in the chat");
    assert_eq!(controller.record(id).await.reason, record.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_sets_its_own_machine_size_over_the_controllers_limits() {
    let mut config = test_config("a");
    config.limits.cpus = Some(1.0);
    config.repos.insert(
        "demo".into(),
        toml::from_str("machine = { cpus = 4.0, disk_gb = 40 }").unwrap(),
    );
    let controller = Controller::start(config, memory()).await;
    let (_, request, _agent) = controller.run_job().await;
    assert_eq!(
        request.resources,
        Resources {
            cpus: Some(4.0),
            memory_mb: None,
            pids: Some(8192),
            disk_gb: Some(40),
        }
    );
}
