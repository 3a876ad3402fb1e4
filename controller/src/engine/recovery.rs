//! Start-up recovery: make the stored state true again after a crash or a restart.
//!
//! - jobs still `queued` go back on the queue;
//! - jobs that were `provisioning`/`running` get their record rebuilt from the journal (so a step event
//!   that reached the journal but not the record is not lost) and wait, with a worker slot, for their
//!   agent to reconnect; an agent that does not is declared lost like any other;
//! - machines still recorded for jobs that are over are destroyed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::engine::Engine;
use crate::engine::apply::{self, Effect};
use crate::error::ControllerError;
use crate::jobs::{JobRecord, JobStatus};

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
                        self.jobs.put(&job).await?;
                    }
                    Err(e) => {
                        error!(job_id = job.id, error = %e, "cannot destroy leftover machine")
                    }
                }
            }
        }
        for mut job in self.jobs.unfinished().await? {
            match job.status {
                JobStatus::Queued => self.requeue(job.id).await,
                JobStatus::Provisioning | JobStatus::Running if job.machine.is_none() => {
                    job.status = JobStatus::Queued;
                    self.jobs.put(&job).await?;
                    self.requeue(job.id).await;
                }
                JobStatus::Provisioning | JobStatus::Running => {
                    let id = job.id;
                    let permit = self.worker_slots().acquire_owned().await.map_err(|_| {
                        ControllerError::FailedPrecondition(
                            "worker pool closed during recovery".into(),
                        )
                    })?;
                    let engine = self.clone();
                    let active = self.reattach(job).await?;
                    info!(
                        job_id = id,
                        attempt = active.attempt,
                        "waiting for the agent of a running job to reconnect"
                    );
                    tracker.spawn(async move {
                        let _permit = permit;
                        if let Err(e) = engine.supervise_recovered(active).await {
                            error!(job_id = id, error = %e, "recovered job failed inside the controller");
                        }
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Rebuilds a running job's record from its journal and registers it.
    async fn reattach(
        &self,
        mut record: JobRecord,
    ) -> Result<Arc<crate::engine::ActiveJob>, ControllerError> {
        let id = record.id;
        let writer = self.logs.writer(id)?;
        // Every stage's steps come back from the first checkout's frame; earlier runs are not replayed.
        record.steps = vec![apply::checkout_step()];
        record.stages.clear();
        record.artifacts.clear();
        let mut last_seq = 0;
        let mut ended = None;
        if let Some(mut reader) = self.logs.reader(id, 0, true)? {
            while let Some(frame) = reader.next_frame()? {
                if frame.header.attempt < record.first_attempt
                    || frame.header.attempt > record.attempt
                {
                    continue;
                }
                let current = frame.header.attempt == record.attempt;
                if current {
                    last_seq = last_seq.max(frame.header.seq);
                }
                match apply::apply_frame(&mut record, &frame, self.plan_defaults()) {
                    Effect::Finished if current => ended = Some(String::new()),
                    Effect::ConfigError { message, .. } => ended = Some(message),
                    _ => {}
                }
            }
        }
        let enrolled = record
            .machine
            .as_ref()
            .is_some_and(|m| m.token_sha256.is_none());
        self.jobs.put(&record).await?;
        let active = self.register(record, writer, last_seq);
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
        Ok(active)
    }
}
