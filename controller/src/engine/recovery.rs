//! Start-up recovery and take-over: make the stored state true again after a crash, a restart, or the
//! death of another controller sharing the store.
//!
//! - jobs still `queued` go back on the queue;
//! - jobs that were `provisioning`/`running` under a lease that is this controller's own (a restart)
//!   or has expired (its holder died) are claimed again by compare-and-set, their record rebuilt from
//!   the log (so a step event that reached the log but not the record is not lost), and wait, with a
//!   worker slot, for their agent to reconnect; an agent that does not is declared lost like any other;
//! - jobs under another controller's live lease are left alone: [`Engine::take_over_expired`] looks
//!   again every third of a lease;
//! - machines still recorded for jobs that are over are destroyed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::engine::apply::{self, Effect};
use crate::engine::{ActiveJob, Engine};
use crate::error::ControllerError;
use crate::jobs::{JobRecord, JobStatus};
use crate::store::{LogCursor, Payloads, StoreError};

impl Engine {
    /// Runs once before the workers start.
    pub async fn recover(self: &Arc<Self>, tracker: &TaskTracker) -> Result<(), ControllerError> {
        for job in self.jobs.with_machines().await? {
            if job.status.is_final()
                && let Some(machine) = &job.machine
            {
                info!(job_id = job.id, machine = %machine.name, "destroying machine left over by a crash");
                match self.provisioner().destroy(machine).await {
                    Ok(()) => {
                        let mut job = job.clone();
                        job.machine = None;
                        self.jobs.put(&mut job).await?;
                    }
                    Err(e) => {
                        error!(job_id = job.id, error = %e, "cannot destroy leftover machine")
                    }
                }
            }
        }
        for job in self.jobs.unfinished().await? {
            if job.status == JobStatus::Queued {
                self.requeue(job.id).await;
            } else {
                self.resume(job, tracker).await?;
            }
        }
        Ok(())
    }

    /// Takes over running jobs whose lease expired, until shutdown. Their controller died (or lost
    /// the store); their agents reconnect to any controller that serves the job.
    pub async fn take_over_expired(self: Arc<Self>, tracker: TaskTracker) {
        let mut every = tokio::time::interval(self.config.lease() / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let unfinished = match self.jobs.unfinished().await {
                Ok(jobs) => jobs,
                Err(e) => {
                    warn!(error = %e, "cannot look for jobs to take over");
                    continue;
                }
            };
            let now = zeroci::now_unix_ms();
            self.sweep_progress(&unfinished.iter().map(|j| j.id).collect())
                .await;
            for job in unfinished {
                let orphaned = matches!(job.status, JobStatus::Provisioning | JobStatus::Running)
                    && job.lease.as_ref().is_none_or(|l| l.expired(now))
                    && self.active_job(job.id).is_none();
                if orphaned && let Err(e) = self.resume(job, &tracker).await {
                    warn!(error = %e, "cannot take a job over");
                }
            }
        }
    }

    /// Picks up a provisioning or running job if its lease allows it.
    async fn resume(
        self: &Arc<Self>,
        mut job: JobRecord,
        tracker: &TaskTracker,
    ) -> Result<(), ControllerError> {
        let now = zeroci::now_unix_ms();
        if let Some(lease) = &job.lease
            && lease.owner != self.owner()
            && !lease.expired(now)
        {
            info!(job_id = job.id, owner = %lease.owner, "job is held by another controller");
            return Ok(());
        }
        if job.machine.is_none() {
            // Claimed, but its machine was never recorded: nothing runs; queue it again.
            job.status = JobStatus::Queued;
            job.lease = None;
            return match self.jobs.put(&mut job).await {
                Ok(()) => {
                    self.requeue(job.id).await;
                    Ok(())
                }
                Err(StoreError::Conflict { .. }) => Ok(()), // someone else got there first
                Err(e) => Err(e.into()),
            };
        }
        let id = job.id;
        let permit = self.worker_slots().acquire_owned().await.map_err(|_| {
            ControllerError::FailedPrecondition("worker pool closed during recovery".into())
        })?;
        let Some(active) = self.reattach(job).await? else {
            return Ok(());
        };
        info!(
            job_id = id,
            attempt = active.attempt,
            "waiting for the agent of a running job to reconnect"
        );
        let engine = self.clone();
        tracker.spawn(
            async move {
                let _permit = permit;
                if let Err(e) = engine.supervise_recovered(active).await {
                    error!(job_id = id, error = %e, "recovered job failed inside the controller");
                }
            }
            .instrument(info_span!("job", job_id = id)),
        );
        Ok(())
    }

    /// Rebuilds a running job's record from its log, claims it, and registers it. `None` when
    /// another controller claimed it first.
    async fn reattach(
        &self,
        mut record: JobRecord,
    ) -> Result<Option<Arc<ActiveJob>>, ControllerError> {
        let id = record.id;
        // Every stage's steps come back from the first checkout's event; earlier runs are not replayed.
        record.steps = vec![apply::checkout_step()];
        record.stages.clear();
        record.artifacts.clear();
        let mut logged = LogCursor::new(record.attempt, 0);
        let mut agent_seq = 0;
        let mut output_bytes = 0;
        let mut ended = None;
        let mut events = self
            .logs
            .read(id, LogCursor::START, Payloads::WithoutOutput);
        while let Some(event) = events.next().await {
            let event = event?;
            let attempt = event.cursor.attempt;
            if attempt < record.first_attempt || attempt > record.attempt {
                continue;
            }
            output_bytes += event.output_len();
            let current = attempt == record.attempt;
            if current {
                logged = event.cursor;
                agent_seq = agent_seq.max(event.agent_seq);
            }
            match apply::apply_event(&mut record, &event, self.plan_defaults()) {
                Effect::Finished if current => ended = Some(String::new()),
                Effect::ConfigError { message, .. } => ended = Some(message),
                _ => {}
            }
        }
        let enrolled = record
            .machine
            .as_ref()
            .is_some_and(|m| m.token_sha256.is_none());
        record.lease = Some(self.new_lease());
        match self.jobs.put(&mut record).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                info!(job_id = id, "another controller took the job first");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        let active = self.register(record, logged, agent_seq, output_bytes);
        active.connected.store(enrolled, Ordering::Relaxed);
        if let Some(reason) = ended {
            let mut state = active.state.lock().await;
            if state.record.has_next_stage() && reason.is_empty() {
                self.end_stage(&active);
            } else {
                let status = state.record.final_status();
                self.finalize(&active, &mut state, status, reason).await?;
            }
        }
        Ok(Some(active))
    }
}
