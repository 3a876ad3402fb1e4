//! The storage contracts, checked the same way against every backend: one suite, run by each
//! backend's tests (memory and embedded here, MongoDB against a real server in `mongo_tests`).

use bytes::Bytes;

use super::{
    ArtifactPiece, EventKind, JobFilter, LogCursor, LogEvent, Payloads, StoreError, Stores,
    collect_log,
};
use crate::jobs::{JobStatus, MachineRecord, NewJob, NotificationFailure, ScheduleRun};
use crate::schedules::{Origin, Schedule, Target};

/// A queued job of `repo` (URL `/src/<repo>`, branch `main`).
pub(crate) fn new_job(repo: &str) -> NewJob {
    NewJob {
        repo: repo.into(),
        repo_url: format!("/src/{repo}"),
        ref_name: "main".into(),
        commit: "abc".into(),
        triggered_by: "test".into(),
        step_timeout_secs: 0,
        github_repo: None,
        untrusted: false,
        supersede: false,
        ..Default::default()
    }
}

fn event(attempt: u32, seq: u64, kind: EventKind, payload: &[u8]) -> LogEvent {
    LogEvent {
        cursor: LogCursor::new(attempt, seq),
        agent_seq: seq,
        step: 1,
        kind,
        stream: if kind == EventKind::Output { 1 } else { 0 },
        at_ms: 1_000 + seq as i64,
        payload: Bytes::copy_from_slice(payload),
        withheld: 0,
    }
}

/// Every contract of the seams.
pub(crate) async fn check_all(stores: &Stores) {
    jobs(stores).await;
    deliveries(stores).await;
    notification_failures(stores).await;
    schedules(stores).await;
    join_tokens(stores).await;
    logs(stores).await;
    reports_and_artifacts(stores).await;
}

async fn join_tokens(stores: &Stores) {
    use crate::provisioner::pool::tokens::JoinToken;
    let tokens = &stores.join_tokens;
    let (rack, _) = JoinToken::issue("rack-1", 1).unwrap();
    let (beta, _) = JoinToken::issue("beta", 2).unwrap();
    assert!(tokens.add_join_token(&rack).await.unwrap());
    assert!(tokens.add_join_token(&beta).await.unwrap());
    let (same_name, _) = JoinToken::issue("rack-1", 3).unwrap();
    assert!(
        !tokens.add_join_token(&same_name).await.unwrap(),
        "names are unique"
    );
    assert_eq!(
        tokens.join_token(&rack.id).await.unwrap(),
        Some(rack.clone())
    );
    assert!(tokens.join_token(&same_name.id).await.unwrap().is_none());
    let names: Vec<String> = tokens
        .join_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["beta", "rack-1"]);
    assert_eq!(
        tokens.remove_join_token("rack-1").await.unwrap(),
        Some(rack.clone())
    );
    assert!(
        tokens.join_token(&rack.id).await.unwrap().is_none(),
        "revoked = gone"
    );
    assert!(tokens.remove_join_token("rack-1").await.unwrap().is_none());
    assert!(
        tokens.add_join_token(&same_name).await.unwrap(),
        "a revoked name is free again"
    );
}

async fn jobs(stores: &Stores) {
    let jobs = &stores.jobs;
    let a = jobs.create(new_job("alpha"), 10).await.unwrap();
    let b = jobs.create(new_job("beta"), 11).await.unwrap();
    let mut c = jobs.create(new_job("alpha"), 12).await.unwrap();
    assert!(a.id < b.id && b.id < c.id, "ids increase");
    assert_eq!(jobs.get(a.id).await.unwrap().unwrap(), a);
    assert!(jobs.get(c.id + 100).await.unwrap().is_none());

    // Compare-and-set: a writer holding an old revision is refused and changes nothing.
    let mut stale = c.clone();
    c.status = JobStatus::Running;
    c.ref_name = "dev".into();
    c.machine = Some(MachineRecord {
        provisioner: "local".into(),
        name: "m".into(),
        attempt: 1,
        token_sha256: None,
        details: serde_json::json!({"pid": 42, "dir": "/x"}),
    });
    jobs.put(&mut c).await.unwrap();
    stale.status = JobStatus::Cancelled;
    assert!(matches!(
        jobs.put(&mut stale).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        jobs.get(c.id).await.unwrap().unwrap(),
        c,
        "the winner's record"
    );

    let ids = |list: Vec<crate::jobs::JobRecord>| list.iter().map(|j| j.id).collect::<Vec<_>>();
    let all = JobFilter::default();
    assert_eq!(ids(jobs.list(&all).await.unwrap()), [c.id, b.id, a.id]);
    let by_name = JobFilter {
        repo: Some("alpha".into()),
        ..JobFilter::default()
    };
    assert_eq!(ids(jobs.list(&by_name).await.unwrap()), [c.id, a.id]);
    let by_url = JobFilter {
        repo: Some("/src/beta".into()),
        ..JobFilter::default()
    };
    assert_eq!(ids(jobs.list(&by_url).await.unwrap()), [b.id]);
    let running = JobFilter {
        status: Some(JobStatus::Running),
        ..JobFilter::default()
    };
    assert_eq!(ids(jobs.list(&running).await.unwrap()), [c.id]);
    let on_main_before_c = JobFilter {
        branch: Some("main".into()),
        before: Some(c.id),
        limit: 1,
        ..JobFilter::default()
    };
    assert_eq!(ids(jobs.list(&on_main_before_c).await.unwrap()), [b.id]);

    let mut done = b.clone();
    done.status = JobStatus::Success;
    jobs.put(&mut done).await.unwrap();
    assert_eq!(
        ids(jobs.unfinished().await.unwrap()),
        [a.id, c.id],
        "oldest first"
    );
    assert_eq!(ids(jobs.with_machines().await.unwrap()), [c.id]);
}

async fn deliveries(stores: &Stores) {
    let jobs = &stores.jobs;
    assert!(jobs.claim_delivery("d-1").await.unwrap());
    assert!(!jobs.claim_delivery("d-1").await.unwrap(), "a redelivery");
    jobs.release_delivery("d-1").await.unwrap();
    assert!(
        jobs.claim_delivery("d-1").await.unwrap(),
        "released: may try again"
    );
}

async fn notification_failures(stores: &Stores) {
    let jobs = &stores.jobs;
    let mut job = jobs.create(new_job("notified"), 20).await.unwrap();
    let failure = |notifier: &str, error: &str, at| NotificationFailure {
        notifier: notifier.into(),
        error: error.into(),
        at,
    };
    assert!(jobs.notification_failures(job.id).await.unwrap().is_empty());
    jobs.put_notification_failure(job.id, failure("webhook", "refused: 403", 1))
        .await
        .unwrap();
    jobs.put_notification_failure(job.id, failure("telegram", "chat not found", 2))
        .await
        .unwrap();
    jobs.put_notification_failure(job.id, failure("telegram", "bot kicked", 3))
        .await
        .unwrap();
    assert_eq!(
        jobs.notification_failures(job.id).await.unwrap(),
        [
            failure("telegram", "bot kicked", 3),
            failure("webhook", "refused: 403", 1)
        ],
        "one per notifier, the latest, by name"
    );
    // Beside the record: writing them never moves its revision, so the engine's next put still wins.
    job.status = JobStatus::Success;
    jobs.put(&mut job).await.unwrap();
    jobs.clear_notification_failure(job.id, "telegram")
        .await
        .unwrap();
    jobs.clear_notification_failure(job.id, "never-failed")
        .await
        .unwrap();
    assert_eq!(
        jobs.notification_failures(job.id).await.unwrap(),
        [failure("webhook", "refused: 403", 1)]
    );
    let unknown = job.id + 1000;
    jobs.put_notification_failure(unknown, failure("webhook", "x", 1))
        .await
        .unwrap();
    assert!(
        jobs.notification_failures(unknown)
            .await
            .unwrap()
            .is_empty(),
        "nothing kept for a job that does not exist"
    );
}

fn schedule(name: &str) -> Schedule {
    Schedule {
        name: name.into(),
        cron: "* * * * * *".into(),
        time_zone: "UTC".into(),
        target: Target::Commands {
            image_name: None,
            install: Vec::new(),
            test: vec!["true".into()],
        },
        step_timeout_secs: 0,
        allow_overlap: false,
        paused: false,
        origin: Origin::RunOn,
        next_at: 1_000,
        firing: None,
        last_job: None,
        skipped: 0,
        declared_at: 0,
        created_at: 1,
        revision: 0,
    }
}

async fn schedules(stores: &Stores) {
    let schedules = &stores.schedules;
    assert!(schedules.get_schedule("nightly").await.unwrap().is_none());
    let mut nightly = schedule("nightly");
    schedules.put_schedule(&mut nightly).await.unwrap();
    assert_eq!(nightly.revision, 1);
    let mut again = schedule("nightly");
    assert!(
        matches!(
            schedules.put_schedule(&mut again).await,
            Err(StoreError::ScheduleChanged { .. })
        ),
        "a name is taken once"
    );
    let mut other = schedule("acme/widget@main");
    schedules.put_schedule(&mut other).await.unwrap();

    // Two controllers read the same revision; only the first to write fires the tick.
    let mut mine = schedules.get_schedule("nightly").await.unwrap().unwrap();
    let mut theirs = mine.clone();
    mine.next_at = 2_000;
    schedules.put_schedule(&mut mine).await.unwrap();
    theirs.next_at = 2_000;
    assert!(matches!(
        schedules.put_schedule(&mut theirs).await,
        Err(StoreError::ScheduleChanged { .. })
    ));
    assert_eq!(
        schedules.get_schedule("nightly").await.unwrap().unwrap(),
        mine
    );

    let names: Vec<String> = schedules
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["acme/widget@main", "nightly"], "by name");
    let mut before_removal = schedules.get_schedule("nightly").await.unwrap().unwrap();
    assert!(schedules.delete_schedule("nightly").await.unwrap());
    assert!(!schedules.delete_schedule("nightly").await.unwrap());
    assert!(schedules.get_schedule("nightly").await.unwrap().is_none());
    let mut recreated = schedule("nightly");
    recreated.created_at = 2;
    schedules.put_schedule(&mut recreated).await.unwrap();
    schedules.put_schedule(&mut recreated).await.unwrap();
    // A writer still holding the removed schedule (same name, same revision) cannot touch the new one.
    assert_eq!(before_removal.revision, recreated.revision);
    before_removal.paused = true;
    assert!(matches!(
        schedules.put_schedule(&mut before_removal).await,
        Err(StoreError::ScheduleChanged { .. })
    ));
    // The longest name fits every backend (the embedded one names a file by it).
    let mut longest = schedule(&"n".repeat(crate::schedules::MAX_NAME_LEN));
    schedules.put_schedule(&mut longest).await.unwrap();
    assert!(
        schedules
            .get_schedule(&longest.name)
            .await
            .unwrap()
            .is_some()
    );

    // Runs of a schedule are listed by its name.
    let jobs = &stores.jobs;
    let run = |due_at| NewJob {
        schedule: Some(ScheduleRun {
            name: "nightly".into(),
            due_at,
            late_ms: 0,
            missed: 0,
        }),
        ..new_job("nightly")
    };
    let first = jobs.create(run(1_000), 30).await.unwrap();
    jobs.create(new_job("nightly"), 31).await.unwrap();
    let second = jobs.create(run(2_000), 32).await.unwrap();
    let runs = jobs
        .list(&JobFilter {
            schedule: Some("nightly".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = runs.iter().map(|j| j.id).collect();
    assert_eq!(ids, [second.id, first.id]);
    assert_eq!(runs[1].schedule.as_ref().unwrap().due_at, 1_000);
}

async fn logs(stores: &Stores) {
    let logs = &stores.logs;
    let job = 7;
    assert!(
        collect_log(logs.read(job, LogCursor::START, Payloads::All))
            .await
            .unwrap()
            .is_empty()
    );
    let first = vec![
        event(1, 1, EventKind::StepStarted, b""),
        event(1, 2, EventKind::Output, b"hello "),
        event(1, 3, EventKind::Output, b"world\n"),
    ];
    logs.append(job, first.clone()).await.unwrap();
    // A resend of what was stored plus more (the reply to the first append was lost).
    let mut second = first[1..].to_vec();
    second.push(event(1, 4, EventKind::StepExited, b"\x08\x01"));
    second.push(event(2, 1, EventKind::Output, b"next attempt\n"));
    let resent = logs.append(job, second).await;
    if resent.is_err() {
        // A backend may refuse a resend; the engine then skips what is stored and appends the rest.
        logs.append(
            job,
            vec![
                event(1, 4, EventKind::StepExited, b"\x08\x01"),
                event(2, 1, EventKind::Output, b"next attempt\n"),
            ],
        )
        .await
        .unwrap();
    }
    let all = collect_log(logs.read(job, LogCursor::START, Payloads::All))
        .await
        .unwrap();
    let cursors: Vec<_> = all
        .iter()
        .map(|e| (e.cursor.attempt, e.cursor.seq))
        .collect();
    assert_eq!(
        cursors,
        [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1)],
        "each event once, in order"
    );
    assert_eq!(all[1], first[1]);
    assert_eq!(all[3].payload, Bytes::from_static(b"\x08\x01"));
    let after = collect_log(logs.read(job, LogCursor::new(1, 3), Payloads::All))
        .await
        .unwrap();
    assert_eq!(after.len(), 2);
    let headers = collect_log(logs.read(job, LogCursor::START, Payloads::WithoutOutput))
        .await
        .unwrap();
    assert!(headers[1].payload.is_empty() && headers[1].output_len() == 6);
    assert_eq!(
        headers[3].payload, all[3].payload,
        "other events stay whole"
    );

    // A batch larger than any single document or frame a backend writes.
    let big = vec![b'x'; 1024 * 1024];
    let batch: Vec<_> = (2..=21)
        .map(|seq| event(2, seq, EventKind::Output, &big))
        .collect();
    logs.append(job, batch).await.unwrap();
    let read = collect_log(logs.read(job, LogCursor::new(2, 1), Payloads::All))
        .await
        .unwrap();
    assert_eq!(read.len(), 20);
    assert!(read.iter().all(|e| e.payload.len() == big.len()));
    logs.close(job).await;
}

async fn reports_and_artifacts(stores: &Stores) {
    let at = LogCursor::new(1, 5);
    assert!(stores.reports.report(3, at).await.unwrap().is_none());
    stores
        .reports
        .put_report(3, at, Bytes::from_static(b"<testsuite/>"))
        .await
        .unwrap();
    stores
        .reports
        .put_report(3, at, Bytes::from_static(b"<testsuite/>"))
        .await
        .unwrap();
    assert_eq!(
        stores.reports.report(3, at).await.unwrap().unwrap(),
        Bytes::from_static(b"<testsuite/>")
    );

    let piece = |offset: u64, data: &'static [u8]| ArtifactPiece {
        attempt: 1,
        name: "out/app.bin".into(),
        offset,
        data: Bytes::from_static(data),
    };
    // Out of order, one resent.
    let artifacts = &stores.artifacts;
    artifacts
        .put_pieces(3, vec![piece(6, b"world"), piece(0, b"hello ")])
        .await
        .unwrap();
    artifacts
        .put_pieces(3, vec![piece(6, b"world")])
        .await
        .unwrap();
    let bytes: Vec<u8> = collect_bytes(artifacts.read_artifact(3, 1, "out/app.bin"))
        .await
        .unwrap();
    assert_eq!(bytes, b"hello world");
    assert!(
        collect_bytes(artifacts.read_artifact(3, 1, "nothing"))
            .await
            .is_err()
    );
    assert!(
        collect_bytes(artifacts.read_artifact(3, 2, "out/app.bin"))
            .await
            .is_err()
    );
}

async fn collect_bytes(mut stream: super::ByteStream) -> Result<Vec<u8>, StoreError> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test]
async fn the_memory_store_keeps_the_contracts() {
    let store = std::sync::Arc::new(super::memory::MemoryStore::default());
    check_all(&Stores::all(store)).await;
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contracts() {
    let dir = tempfile::tempdir().unwrap();
    let store = super::embedded::EmbeddedStore::open(dir.path()).unwrap();
    check_all(&Stores::all(std::sync::Arc::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mongodb_store_keeps_the_contracts() {
    let server = zeroci_testkit::services::Service::mongo();
    let store = super::mongo::MongoStore::open(&server.url(), "contracts", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    check_all(&Stores::all(std::sync::Arc::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mongodb_store_deletes_finished_runs_after_the_retention() {
    let server = zeroci_testkit::services::Service::mongo();
    let retention = std::time::Duration::from_secs(1);
    let store = super::mongo::MongoStore::open(&server.url(), "retention", Some(retention))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stores = Stores::all(std::sync::Arc::new(store));
    let mut old = stores.jobs.create(new_job("old"), 1).await.unwrap();
    old.status = JobStatus::Success;
    old.finished_at = zeroci::now_unix_ms() - 60_000;
    stores.jobs.put(&mut old).await.unwrap();
    let running = stores.jobs.create(new_job("running"), 2).await.unwrap();
    stores
        .logs
        .append(
            old.id,
            vec![event(1, 1, EventKind::Output, b"old output\n")],
        )
        .await
        .unwrap();
    zeroci_testkit::eventually("the finished run and its log to go", || async {
        let gone = stores.jobs.get(old.id).await.unwrap().is_none();
        let log = collect_log(stores.logs.read(old.id, LogCursor::START, Payloads::All))
            .await
            .unwrap();
        (gone && log.is_empty()).then_some(())
    })
    .await;
    assert!(
        stores.jobs.get(running.id).await.unwrap().is_some(),
        "an unfinished job stays"
    );
    // Another retention, then none: the controller starts with either (the index follows the setting).
    for retention in [Some(std::time::Duration::from_secs(86_400)), None] {
        super::mongo::MongoStore::open(&server.url(), "retention", retention)
            .await
            .unwrap_or_else(|e| panic!("{retention:?}: {e}"));
    }
}
