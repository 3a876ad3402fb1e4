//! The scheduler on the in-memory store: firings left behind are completed once, a refused start does
//! not block later ticks, and two schedulers sharing a store start one run per tick.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use zeroci_controller::engine::Engine;
use zeroci_controller::jobs::{JobRecord, NewJob, ScheduleRun};
use zeroci_controller::schedules::{Firing, Origin, Schedule, Target, scheduler};
use zeroci_controller::store::memory::MemoryStore;
use zeroci_controller::store::{JobFilter, Stores};

use crate::support::{Controller, test_config};

/// A schedule that fires once a year, or every second.
fn schedule(name: &str, cron: &str, target: Target, next_at: i64) -> Schedule {
    Schedule {
        name: name.into(),
        cron: cron.into(),
        time_zone: "UTC".into(),
        target,
        step_timeout_secs: 0,
        allow_overlap: true,
        paused: false,
        origin: Origin::Api {
            created_by: "test".into(),
        },
        next_at,
        firing: None,
        last_job: None,
        skipped: 0,
        declared_at: 0,
        created_at: 1,
        revision: 0,
    }
}

fn commands() -> Target {
    Target::Commands {
        image_name: None,
        install: Vec::new(),
        test: vec!["true".into()],
    }
}

/// Runs the scheduler of `engine` until the returned token is cancelled.
fn run_scheduler(engine: &Arc<Engine>) -> CancellationToken {
    let stop = CancellationToken::new();
    tokio::spawn(scheduler::run(engine.clone(), stop.clone()));
    stop
}

async fn runs(engine: &Engine, name: &str) -> Vec<JobRecord> {
    engine
        .jobs
        .list(&JobFilter {
            schedule: Some(name.into()),
            ..JobFilter::default()
        })
        .await
        .unwrap()
}

const YEARLY: &str = "0 0 1 1 *";
const TICK: i64 = 1_000;

fn stale_firing() -> Firing {
    Firing {
        due_at: TICK,
        late_ms: 0,
        missed: 0,
        by: "dead-controller 0000000000000001".into(),
        since: zeroci::now_unix_ms() - scheduler::FIRING_LEASE_MS - 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_left_by_a_dead_controller_is_started_once_by_another() {
    let stores = Stores::all(Arc::new(MemoryStore::default()));
    let mut left = schedule("left", YEARLY, commands(), i64::MAX - 1);
    left.firing = Some(stale_firing());
    stores.schedules.put_schedule(&mut left).await.unwrap();
    let controller = Controller::start(test_config("a"), stores).await;
    let engine = &controller.engine;
    let stop = run_scheduler(engine);
    let done = zeroci_testkit::eventually("the firing completed", || async {
        let stored = engine.schedule("left").await.unwrap();
        (stored.firing.is_none()).then_some(stored)
    })
    .await;
    let runs = runs(engine, "left").await;
    assert_eq!(runs.len(), 1, "started once");
    assert_eq!(runs[0].schedule.as_ref().unwrap().due_at, TICK);
    assert!(runs[0].schedule.as_ref().unwrap().is_late());
    assert_eq!(done.last_job, Some(runs[0].id));
    stop.cancel();
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_whose_job_exists_is_only_recorded() {
    let stores = Stores::all(Arc::new(MemoryStore::default()));
    let job = stores
        .jobs
        .create(
            NewJob {
                repo: "made".into(),
                inline_pipeline: Some("{\"script\": [\"true\"]}".into()),
                schedule: Some(ScheduleRun {
                    name: "made".into(),
                    due_at: TICK,
                    late_ms: 0,
                    missed: 0,
                }),
                ..NewJob::default()
            },
            1,
        )
        .await
        .unwrap();
    let mut made = schedule("made", YEARLY, commands(), i64::MAX - 1);
    made.firing = Some(stale_firing());
    stores.schedules.put_schedule(&mut made).await.unwrap();
    let controller = Controller::start(test_config("a"), stores).await;
    let engine = &controller.engine;
    let stop = run_scheduler(engine);
    let done = zeroci_testkit::eventually("the firing recorded", || async {
        let stored = engine.schedule("made").await.unwrap();
        (stored.firing.is_none()).then_some(stored)
    })
    .await;
    assert_eq!(done.last_job, Some(job.id));
    assert_eq!(runs(engine, "made").await.len(), 1, "not started again");
    stop.cancel();
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_drops_its_tick_and_later_ticks_still_come() {
    let stores = Stores::all(Arc::new(MemoryStore::default()));
    let refused = Target::Repository {
        repo: "evil".into(),
        repo_url: "-oops".into(),
        ref_name: String::new(),
        github_repo: None,
    };
    let start = zeroci::now_unix_ms();
    let mut bad = schedule("refused", "* * * * * *", refused, start);
    stores.schedules.put_schedule(&mut bad).await.unwrap();
    let controller = Controller::start(test_config("a"), stores).await;
    let engine = &controller.engine;
    let stop = run_scheduler(engine);
    zeroci_testkit::eventually("two ticks passed, neither left blocking", || async {
        let stored = engine.schedule("refused").await.unwrap();
        (stored.firing.is_none() && stored.next_at > start + 2_000).then_some(())
    })
    .await;
    assert!(runs(engine, "refused").await.is_empty());
    stop.cancel();
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_sharing_a_store_start_one_run_per_tick() {
    let stores = Stores::all(Arc::new(MemoryStore::default()));
    let now = zeroci::now_unix_ms();
    let mut shared = schedule("shared", "* * * * * *", commands(), now - now % 1000 + 1000);
    stores.schedules.put_schedule(&mut shared).await.unwrap();
    let a = Controller::start(test_config("a"), stores.clone()).await;
    let b = Controller::start(test_config("b"), stores).await;
    let stops = [run_scheduler(&a.engine), run_scheduler(&b.engine)];
    let runs = zeroci_testkit::eventually("five runs", || async {
        let runs = runs(&a.engine, "shared").await;
        (runs.len() >= 5).then_some(runs)
    })
    .await;
    for stop in stops {
        stop.cancel();
    }
    let mut ticks: Vec<i64> = runs
        .iter()
        .map(|job| job.schedule.as_ref().unwrap().due_at)
        .collect();
    ticks.sort_unstable();
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "one run per tick: {ticks:?}");
    }
    a.stop().await;
    b.stop().await;
}
