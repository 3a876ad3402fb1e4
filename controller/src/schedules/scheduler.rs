//! The task that fires schedules, on every controller. It sleeps until the earliest next tick (or a
//! local change, or [`POLL`] for changes other controllers made), then for each due schedule:
//!
//! 1. writes the schedule with its next tick advanced and a [`Firing`] for this tick — a
//!    compare-and-set, so when several controllers see the tick, exactly one write succeeds and the
//!    others move on;
//! 2. checks it still holds the firing and submits the run's job, which names the schedule and the
//!    tick (each claimed schedule on a task of its own, so one slow start delays no other schedule);
//! 3. clears the firing and records the job as the latest run.
//!
//! A controller that dies between 1 and 3 leaves the firing behind; after [`FIRING_LEASE_MS`] any
//! controller looks for a job of that tick and either records it or submits it, so a tick is neither
//! lost nor run twice. Step 2 is bounded well within the lease (the slowest part, reading a GitHub
//! branch head, gives up after [`super::service::HEAD_TIMEOUT`]), and re-checks the firing right
//! before submitting, so a take-over and the original start cannot both submit. A start that can never
//! succeed (a repository that is refused) clears the firing, so later ticks still fire.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroci::cron::CronSchedule;

use super::timing::{Due, decide};
use super::{Firing, Schedule};
use crate::engine::Engine;
use crate::error::ControllerError;
use crate::jobs::ScheduleRun;
use crate::store::StoreError;

/// How long a firing may stay unfinished before another controller completes it.
pub const FIRING_LEASE_MS: i64 = 30_000;
/// The longest sleep: schedules added or changed by another controller are seen within it.
const POLL: Duration = Duration::from_secs(1);
/// Runs of one schedule looked through for the job of an unfinished firing.
const RUNS_SEARCHED: usize = 20;

/// This scheduler: its controller, its process (two processes never share a name, even with one
/// `controller_id`), and when it started.
#[derive(Debug, Clone)]
struct Me {
    owner: String,
    name: String,
    started_at: i64,
}

impl Me {
    /// A firing this controller left in an earlier life (killed mid-firing): completed at once.
    fn left_before(&self, firing: &Firing) -> bool {
        firing.by != self.name
            && firing.by.split(' ').next() == Some(self.owner.as_str())
            && firing.since < self.started_at
    }
}

/// Fires schedules until `stop`.
pub async fn run(engine: Arc<Engine>, stop: CancellationToken) {
    let me = Me {
        owner: engine.owner().to_string(),
        name: format!("{} {:016x}", engine.owner(), rand::random::<u64>()),
        started_at: zeroci::now_unix_ms(),
    };
    info!(scheduler = %me.name, "scheduler started");
    loop {
        // Registered before the pass, so a change made during it still wakes the next sleep.
        let changed = engine.schedule_changes.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let wake_at = match pass(&engine, &me).await {
            Ok(wake_at) => wake_at,
            Err(error) => {
                warn!(%error, "cannot read the schedules; trying again");
                zeroci::now_unix_ms() + POLL.as_millis() as i64
            }
        };
        let sleep = Duration::from_millis(
            (wake_at - zeroci::now_unix_ms()).clamp(0, POLL.as_millis() as i64) as u64,
        );
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(sleep) => {}
            () = &mut changed => {}
        }
    }
}

/// One look at every schedule; returns when the next one is due.
async fn pass(engine: &Arc<Engine>, me: &Me) -> Result<i64, ControllerError> {
    let now = zeroci::now_unix_ms();
    let mut wake_at = now + POLL.as_millis() as i64;
    for schedule in engine.schedules.schedules().await? {
        if schedule.paused {
            continue;
        }
        let name = schedule.name.clone();
        let next = match &schedule.firing {
            Some(firing) if me.left_before(firing) => take_over(engine, schedule, me).await,
            Some(firing) if now - firing.since < FIRING_LEASE_MS => {
                Ok(firing.since + FIRING_LEASE_MS)
            }
            Some(_) => take_over(engine, schedule, me).await,
            None if schedule.next_at > now => Ok(schedule.next_at),
            None => fire(engine, schedule, now, me).await,
        };
        match next {
            Ok(at) => wake_at = wake_at.min(at),
            Err(error) => warn!(schedule = %name, %error, "schedule not fired"),
        }
    }
    Ok(wake_at)
}

/// Handles a schedule whose tick came; returns when to look at it again.
async fn fire(
    engine: &Arc<Engine>,
    mut schedule: Schedule,
    now: i64,
    me: &Me,
) -> Result<i64, ControllerError> {
    let cron = CronSchedule::parse(&schedule.cron, &schedule.time_zone)
        .map_err(ControllerError::FailedPrecondition)?;
    // Only a schedule whose runs may not overlap needs to know (one store read saved per tick).
    let previous_running =
        !schedule.allow_overlap && engine.unfinished_run(&schedule).await?.is_some();
    match decide(
        &cron,
        schedule.next_at,
        now,
        previous_running,
        schedule.allow_overlap,
    ) {
        Due::Wait { until } => Ok(until),
        Due::Skip { due_at, next_at } => {
            schedule.next_at = next_at;
            schedule.skipped += 1;
            if claim(engine, &mut schedule).await? {
                info!(schedule = %schedule.name, due_at, previous = ?schedule.last_job,
                    "tick skipped: the previous run is still going");
            }
            Ok(next_at)
        }
        Due::Fire {
            due_at,
            late_ms,
            missed,
            next_at,
        } => {
            schedule.next_at = next_at;
            schedule.firing = Some(Firing {
                due_at,
                late_ms,
                missed,
                by: me.name.clone(),
                since: now,
            });
            if claim(engine, &mut schedule).await? {
                start_completing(engine, schedule, me);
            }
            Ok(next_at)
        }
    }
}

/// Writes the schedule as this controller's claim on the tick; false when another controller (or a
/// user) wrote it first, which leaves the tick to them.
async fn claim(engine: &Engine, schedule: &mut Schedule) -> Result<bool, ControllerError> {
    match engine.schedules.put_schedule(schedule).await {
        Ok(()) => Ok(true),
        Err(StoreError::ScheduleChanged { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Completes a claimed firing on a task of its own, then wakes the scheduler for the next tick.
fn start_completing(engine: &Arc<Engine>, schedule: Schedule, me: &Me) {
    let (engine, me) = (engine.clone(), me.clone());
    tokio::spawn(async move {
        let name = schedule.name.clone();
        if let Err(error) = complete(&engine, schedule, &me).await {
            warn!(schedule = %name, %error, "run not started; another try follows");
        }
        engine.schedule_changes.notify_waiters();
    });
}

/// Submits the run of the schedule's firing (when this scheduler still holds it) and records it.
async fn complete(engine: &Engine, schedule: Schedule, me: &Me) -> Result<(), ControllerError> {
    let Some(firing) = schedule.firing.clone() else {
        return Ok(());
    };
    let held = engine
        .schedules
        .get_schedule(&schedule.name)
        .await?
        .and_then(|stored| stored.firing)
        .is_some_and(|stored| stored.by == me.name && stored.since == firing.since);
    if !held {
        info!(schedule = %schedule.name, due_at = firing.due_at, "firing taken over meanwhile; not starting it here");
        return Ok(());
    }
    let run = ScheduleRun {
        name: schedule.name.clone(),
        due_at: firing.due_at,
        // From the tick to this start, which a take-over makes later than first decided.
        late_ms: (zeroci::now_unix_ms() - firing.due_at).max(firing.late_ms),
        missed: firing.missed,
    };
    let triggered_by = triggered_by(&run);
    let job = match engine.start_run(&schedule, run, triggered_by).await {
        Ok(job) => job,
        Err(
            error @ (ControllerError::InvalidArgument(_)
            | ControllerError::FailedPrecondition(_)
            | ControllerError::NotFound(_)),
        ) => {
            // Refused for good: trying the same start again would block every later tick.
            warn!(schedule = %schedule.name, due_at = firing.due_at, %error, "run refused; tick dropped");
            return finish_firing(engine, &schedule.name, firing.due_at, None).await;
        }
        Err(error) => return Err(error),
    };
    info!(schedule = %schedule.name, job_id = job.id, due_at = firing.due_at,
        late_ms = firing.late_ms, missed = firing.missed, "schedule fired");
    finish_firing(engine, &schedule.name, firing.due_at, Some(job.id)).await
}

/// Clears the firing of tick `due_at` and records `job` as the latest run.
async fn finish_firing(
    engine: &Engine,
    name: &str,
    due_at: i64,
    job: Option<u64>,
) -> Result<(), ControllerError> {
    let recorded = engine
        .change_schedule(name, |schedule| {
            if schedule.firing.as_ref().is_none_or(|f| f.due_at != due_at) {
                return Ok(false);
            }
            schedule.firing = None;
            if job.is_some() {
                schedule.last_job = job;
            }
            Ok(true)
        })
        .await;
    match recorded {
        // Removed while its run was being started: the run goes on, with nothing to record it on.
        Ok(_) | Err(ControllerError::NotFound(_)) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Completes a firing whose scheduler did not: records the tick's job when it exists, otherwise
/// claims the firing and submits it. Returns when to look again.
async fn take_over(
    engine: &Arc<Engine>,
    mut schedule: Schedule,
    me: &Me,
) -> Result<i64, ControllerError> {
    let now = zeroci::now_unix_ms();
    let Some(firing) = schedule.firing.clone() else {
        return Ok(now);
    };
    let runs = engine.schedule_runs(&schedule.name, RUNS_SEARCHED).await?;
    let existing = runs.iter().find(|job| {
        job.schedule
            .as_ref()
            .is_some_and(|run| run.due_at == firing.due_at)
    });
    if let Some(job) = existing {
        finish_firing(engine, &schedule.name, firing.due_at, Some(job.id)).await?;
        return Ok(now);
    }
    warn!(schedule = %schedule.name, due_at = firing.due_at, left_by = %firing.by,
        "a run was claimed but not started; starting it");
    schedule.firing = Some(Firing {
        by: me.name.clone(),
        since: now,
        ..firing
    });
    if claim(engine, &mut schedule).await? {
        start_completing(engine, schedule, me);
    }
    Ok(now + FIRING_LEASE_MS)
}

/// "schedule NAME", with how late a late run is and what it stands for.
pub fn triggered_by(run: &ScheduleRun) -> String {
    if !run.is_late() {
        return format!("schedule {}", run.name);
    }
    let late = format!("late by {:.1} s", run.late_ms as f64 / 1000.0);
    match run.missed {
        0 => format!("schedule {} ({late})", run.name),
        1 => format!("schedule {} ({late}; 1 earlier tick missed)", run.name),
        n => format!("schedule {} ({late}; {n} earlier ticks missed)", run.name),
    }
}
