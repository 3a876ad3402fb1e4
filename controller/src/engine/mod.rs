//! The engine: job lifecycle from submission to a destroyed machine.
//!
//! - Triggers call [`Engine::submit`]; the job is stored `queued` and pushed on the queue.
//! - `workers` worker tasks pop deliveries ([`workers`]). A worker claims the job by a compare-and-set on
//!   its record (new attempt, `provisioning`, a lease naming this controller), records the machine, asks
//!   the provisioner for it, then supervises: it renews the lease, waits for the agent to end the job,
//!   declares the agent lost after `lost_agent_timeout` of silence, ends a job whose store keeps failing,
//!   enforces the cancel deadline, always destroys the machine at the end, and acknowledges the delivery.
//! - Agent links ([`agents`]) turn the agent's events into log events (appended in batches, durable
//!   before they are acknowledged) and record changes through [`apply`], the one pure reducer that
//!   recovery uses too; the job's [`ActiveJob`] holds the in-memory state they share with the worker.
//! - On start, [`Engine::recover`] re-queues queued jobs, re-attaches to running ones whose lease is this
//!   controller's or expired (their agents reconnect), and destroys machines left over by a crash; while
//!   running it keeps taking over jobs whose lease expired (another controller died).
//!
//! Shutdown: the root token stops workers from taking jobs; running jobs get `shutdown_grace` to finish
//! and are otherwise left to their agents until the next start (their lease runs out meanwhile).

pub mod active;
pub mod agents;
pub mod apply;
pub mod events;
pub mod logs;
pub mod masking;
mod preview;
pub mod recovery;
pub mod reports;
mod workers;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use zeroci::pb;
use zeroci::pki::CertificateAuthority;
use zeroci::resources::Resources;

pub use active::{ActiveJob, AgentLink, AgentTx, LogProgress, Phase, RunState};
use apply::PlanDefaults;

use crate::config::Config;
use crate::error::ControllerError;
use crate::github::GitHubApi;
use crate::jobs::{JobId, JobRecord, JobStatus, NewJob, StepStatus};
use crate::notify::Notifications;
use crate::provisioner::Provisioner;
use crate::queue::JobQueue;
use crate::store::{
    ArtifactStore, JobStore, LogCursor, LogStore, ReportStore, ScheduleStore, Stores,
};

/// How supervising a machine ended.
enum Outcome {
    Final,
    NextStage,
    /// The controller is shutting down and the job goes on without it (or waits in the queue).
    LeftRunning,
}

/// How making a job's machine ended.
#[derive(Debug, PartialEq, Eq)]
enum Provisioned {
    Made,
    /// It could not be made; the job is over.
    Failed,
    /// The controller is stopping: the job is queued again for the next start.
    HandedBack,
}

/// What the engine is built from; everything but the config is a seam.
pub struct EngineParts {
    pub config: Arc<Config>,
    pub stores: Stores,
    pub queue: Arc<dyn JobQueue>,
    pub provisioner: Arc<dyn Provisioner>,
    pub ca: CertificateAuthority,
    /// The address agents dial.
    pub agent_endpoint: String,
    /// Cancelled when the controller stops taking jobs.
    pub shutdown: CancellationToken,
    /// The GitHub API client when `[github]` is configured.
    pub github: Option<Arc<GitHubApi>>,
    pub notifications: Notifications,
}

pub struct Engine {
    pub config: Arc<Config>,
    pub jobs: Arc<dyn JobStore>,
    pub logs: Arc<dyn LogStore>,
    pub reports: Arc<dyn ReportStore>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub schedules: Arc<dyn ScheduleStore>,
    /// Woken when a schedule is added or changed here, so the scheduler looks again at once.
    pub(crate) schedule_changes: tokio::sync::Notify,
    queue: Arc<dyn JobQueue>,
    provisioner: Arc<dyn Provisioner>,
    pub ca: CertificateAuthority,
    /// The address agents dial.
    agent_endpoint: String,
    /// This controller's name in job leases.
    owner: String,
    pub active: StdMutex<HashMap<JobId, Arc<ActiveJob>>>,
    progress: StdMutex<HashMap<JobId, watch::Sender<LogProgress>>>,
    /// Serialises claiming a queued job against cancelling it.
    claim_lock: Mutex<()>,
    workers: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// The GitHub API client when `[github]` is configured.
    pub github: Option<Arc<GitHubApi>>,
    pub notifications: Notifications,
    /// Counters for `GET /metrics`.
    pub metrics: crate::metrics::Metrics,
}

pub(crate) fn sha256_hex(data: &str) -> String {
    sha256_hex_bytes(data.as_bytes())
}

pub(crate) fn sha256_hex_bytes(data: &[u8]) -> String {
    use sha2::Digest;
    zeroci::encoding::hex(&sha2::Sha256::digest(data))
}

impl Engine {
    pub fn new(parts: EngineParts) -> Arc<Engine> {
        let EngineParts {
            config,
            stores,
            queue,
            provisioner,
            ca,
            agent_endpoint,
            shutdown,
            github,
            notifications,
        } = parts;
        Arc::new(Engine {
            workers: Arc::new(Semaphore::new(config.main.workers)),
            owner: config.controller_id(),
            jobs: stores.jobs,
            logs: stores.logs,
            reports: stores.reports,
            artifacts: stores.artifacts,
            schedules: stores.schedules,
            schedule_changes: tokio::sync::Notify::new(),
            github,
            notifications,
            metrics: Default::default(),
            config,
            queue,
            provisioner,
            ca,
            agent_endpoint,
            active: StdMutex::new(HashMap::new()),
            progress: StdMutex::new(HashMap::new()),
            claim_lock: Mutex::new(()),
            shutdown,
        })
    }

    pub(crate) fn provisioner(&self) -> &dyn Provisioner {
        self.provisioner.as_ref()
    }

    pub(crate) fn worker_slots(&self) -> Arc<Semaphore> {
        self.workers.clone()
    }

    /// This controller's name in job leases.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub(crate) async fn requeue(&self, id: JobId) {
        self.open_progress(id);
        if let Err(e) = self.queue.push(id).await {
            // The record is queued in the store; the queue must hear of it too, or nothing runs it
            // until a restart: keep trying in the background (a queue server restarting, say).
            warn!(job_id = id, error = %e, "cannot queue job; retrying");
            let queue = self.queue.clone();
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                let mut pause = Duration::from_millis(250);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    match queue.push(id).await {
                        Ok(()) => {
                            info!(job_id = id, "job queued after a retry");
                            return;
                        }
                        Err(e) => {
                            pause = (pause * 2).min(Duration::from_secs(10));
                            warn!(job_id = id, error = %e, "cannot queue job; retrying");
                        }
                    }
                }
            });
        }
    }

    /// Tells the notifiers about a job's new status (never blocks).
    fn notify(&self, job: &JobRecord) {
        if job.status.is_final() {
            self.metrics.job_finished(job);
        }
        self.notifications.send(job);
    }

    /// The `[provisioner] kind` machines are made by.
    pub fn provisioner_kind(&self) -> &'static str {
        self.provisioner.kind()
    }

    /// Whether the queue's backend answers (`/healthz`).
    pub async fn queue_health(&self) -> Result<(), crate::queue::QueueError> {
        self.queue.health().await
    }

    /// The readings `GET /metrics` takes from the engine's state at scrape time.
    pub async fn gauges(&self) -> crate::metrics::Gauges {
        let (running, agents, machines) = match self.active.lock() {
            Ok(active) => (
                active.len(),
                active
                    .values()
                    .filter(|a| a.connected.load(Ordering::Relaxed))
                    .count(),
                active
                    .values()
                    // A job whose state is busy is counted: it is running on its machine.
                    .filter(|a| {
                        a.state
                            .try_lock()
                            .map_or(true, |s| s.record.machine.is_some())
                    })
                    .count(),
            ),
            Err(_) => (0, 0, 0),
        };
        crate::metrics::Gauges {
            running,
            queued: self.queue.waiting().await,
            agents,
            machines,
            notification_failures: self.notifications.failures(),
        }
    }

    /// What the machine of the job's current pipeline job gets: the controller's `[limits]`, lowered
    /// by what that pipeline job asks once the plan is known; and a line for each request cut down.
    pub fn machine_resources(&self, record: &JobRecord) -> (Resources, Vec<String>) {
        let asked = record
            .stages
            .get(record.stage() as usize)
            .map(|stage| stage.resources)
            .unwrap_or_default();
        self.grant_machine(record, &asked)
    }

    /// What a machine of the job's gets when its pipeline job asks for `asked`: within `[limits]`,
    /// or the repository's own `machine` limits where it sets them.
    pub fn grant_machine(&self, record: &JobRecord, asked: &Resources) -> (Resources, Vec<String>) {
        let mut ceiling = self.config.limits.machine();
        if let Some(repo) = self.config.repo(&record.repo, &record.repo_url) {
            ceiling = ceiling.overridden_by(&repo.machine);
        }
        ceiling.grant(asked)
    }

    pub fn plan_defaults(&self) -> PlanDefaults {
        PlanDefaults {
            step_timeout_secs: self.config.main.step_timeout,
            max_step_timeout_secs: self.config.limits.max_step_timeout,
        }
    }

    pub fn domain(&self) -> &str {
        &self.config.main.domain
    }

    pub fn active_job(&self, id: JobId) -> Option<Arc<ActiveJob>> {
        self.active.lock().ok()?.get(&id).cloned()
    }

    pub fn active_jobs(&self) -> Vec<Arc<ActiveJob>> {
        self.active
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A receiver for the log progress of a job that is not over; `None` once it is.
    pub fn watch_progress(&self, id: JobId) -> Option<watch::Receiver<LogProgress>> {
        self.progress.lock().ok()?.get(&id).map(|tx| tx.subscribe())
    }

    fn open_progress(&self, id: JobId) {
        if let Ok(mut map) = self.progress.lock() {
            map.entry(id)
                .or_insert_with(|| watch::channel(LogProgress::default()).0);
        }
    }

    pub fn publish_progress(&self, id: JobId, last: LogCursor) {
        if let Ok(map) = self.progress.lock()
            && let Some(tx) = map.get(&id)
        {
            tx.send_modify(|p| p.last = last);
        }
    }

    /// Closes the progress of jobs another controller finished (a job queued here and run elsewhere
    /// leaves its entry): those not in `unfinished`, not active here, and final in the store (a job
    /// created since `unfinished` was read is not final, so it keeps its entry).
    pub(crate) async fn sweep_progress(&self, unfinished: &std::collections::HashSet<JobId>) {
        let candidates: Vec<JobId> = match self.progress.lock() {
            Ok(map) => map
                .keys()
                .filter(|id| !unfinished.contains(id) && self.active_job(**id).is_none())
                .copied()
                .collect(),
            Err(_) => return,
        };
        for id in candidates {
            if let Ok(Some(record)) = self.jobs.get(id).await
                && record.status.is_final()
            {
                self.close_progress(id);
            }
        }
    }

    fn close_progress(&self, id: JobId) {
        if let Ok(mut map) = self.progress.lock()
            && let Some(tx) = map.remove(&id)
        {
            tx.send_modify(|p| p.finished = true);
        }
    }

    /// The stored record of job `id`; NotFound when there is none.
    pub async fn job(&self, id: JobId) -> Result<JobRecord, ControllerError> {
        self.jobs
            .get(id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("job {id} not found")))
    }

    /// What notifiers could not deliver for job `id` (empty when everything got through).
    pub async fn notification_failures(
        &self,
        id: JobId,
    ) -> Result<Vec<crate::jobs::NotificationFailure>, ControllerError> {
        Ok(self.jobs.notification_failures(id).await?)
    }

    // === Triggers ===

    pub async fn submit(&self, new: NewJob) -> Result<JobRecord, ControllerError> {
        let wrong = |message: &str| Err(ControllerError::InvalidArgument(message.into()));
        if new.inline_pipeline.is_some() {
            if !new.repo_url.is_empty() || !new.commit.is_empty() {
                return wrong("a job with its own pipeline has no repository or commit");
            }
        } else if new.repo_url.trim().is_empty() {
            return wrong("repo_url is required");
        } else if new.commit.trim().is_empty() {
            return wrong("commit is required");
        }
        if new.repo_url.starts_with('-') || new.commit.starts_with('-') {
            // They end up as git arguments on the machine.
            return Err(ControllerError::InvalidArgument(
                "repo_url and commit must not start with '-'".into(),
            ));
        }
        let coalesce = new.supersede
            && self
                .config
                .repo(&new.repo, &new.repo_url)
                .is_some_and(|r| r.coalesces(&new.ref_name));
        // Under the claim lock, so that superseding and its notifications cannot interleave with
        // another submission for the same branch (statuses must reach GitHub in order).
        let _claim = self.claim_lock.lock().await;
        let job = self.jobs.create(new, zeroci::now_unix_ms()).await?;
        self.open_progress(job.id);
        self.notify(&job);
        if coalesce && let Err(e) = self.supersede_queued(&job).await {
            // The new job runs regardless; older ones may run too.
            warn!(job_id = job.id, error = %e, "cannot supersede queued jobs");
        }
        self.requeue(job.id).await;
        info!(job_id = job.id, repo = %job.repo, commit = %job.commit, "job queued");
        Ok(job)
    }

    /// Queues a new job with the repository, commit and settings of job `id`.
    pub async fn rerun(&self, id: JobId, user: &str) -> Result<JobRecord, ControllerError> {
        let old = self.job(id).await?;
        self.submit(NewJob {
            repo: old.repo,
            repo_url: old.repo_url,
            ref_name: old.ref_name,
            // After its checkout a job holds the full commit id, so the rerun tests exactly that commit.
            commit: old.commit,
            triggered_by: format!("{user} (rerun of job {id})"),
            step_timeout_secs: old.step_timeout_secs,
            github_repo: old.github_repo,
            untrusted: old.untrusted,
            supersede: false,
            committer: old.committer,
            // A job without a repository runs the same commands again.
            inline_pipeline: old.inline_pipeline,
            rerun_of: Some(id),
            ..Default::default()
        })
        .await
    }

    /// Cancels a job. Queued jobs end at once; running ones when their agent has stopped the step (or
    /// after the grace period plus a margin when it does not answer).
    pub async fn cancel(&self, id: JobId, reason: String) -> Result<JobRecord, ControllerError> {
        // Typed by a person, shown to everyone: no secret of the job's in it.
        let reason = match self.jobs.get(id).await? {
            Some(record) => masking::mask_text(&reason, &self.job_secrets(&record)),
            None => reason,
        };
        loop {
            // Under the claim lock a queued job cannot start running while we look at it.
            let claim = self.claim_lock.lock().await;
            let Some(active) = self.active_job(id) else {
                return self.cancel_queued(id, reason).await;
            };
            drop(claim);
            let mut state = active.state.lock().await;
            if !self
                .active_job(id)
                .is_some_and(|current| Arc::ptr_eq(&current, &active))
            {
                continue; // the next pipeline job took over meanwhile: cancel that one
            }
            if state.record.status.is_final() || state.record.cancel_reason.is_some() {
                return Ok(state.record.clone());
            }
            state.record.cancel_reason = Some(reason.clone());
            self.jobs.put(&mut state.record).await?;
            active.provisioning.cancel();
            if active.is_linked() {
                let grace_ms = (self.config.main.cancel_grace as i64 + 10) * 1000;
                let deadline = zeroci::now_unix_ms() + grace_ms;
                active.cancel_deadline_ms.store(deadline, Ordering::Relaxed);
                active.send_to_agent(pb::controller_message::Kind::Cancel(pb::Cancel {
                    reason: reason.clone(),
                    grace_secs: self.config.main.cancel_grace,
                }));
                info!(job_id = id, %reason, "cancel sent to agent");
            } else {
                // Nothing runs yet: end it now; the worker destroys the machine.
                self.finalize(&active, &mut state, JobStatus::Cancelled, reason)
                    .await?;
            }
            return Ok(state.record.clone());
        }
    }

    /// With coalescing on: the commits still queued for the same repository and branch give way to
    /// `newer`. They end `cancelled` with a reason naming it, so nothing disappears without a trace.
    /// The caller holds the claim lock.
    async fn supersede_queued(&self, newer: &JobRecord) -> Result<(), ControllerError> {
        let filter = crate::store::JobFilter {
            repo: Some(newer.repo.clone()),
            status: Some(JobStatus::Queued),
            branch: Some(newer.ref_name.clone()),
            ..Default::default()
        };
        for older in self.jobs.list(&filter).await? {
            if older.id < newer.id
                && older.ref_name == newer.ref_name
                && older.repo_url == newer.repo_url
            {
                let reason = format!(
                    "superseded by job {} (newer commit on {})",
                    newer.id, newer.ref_name
                );
                self.cancel_queued(older.id, reason).await?;
            }
        }
        Ok(())
    }

    /// Cancels a job that is not running (the caller holds the claim lock).
    async fn cancel_queued(&self, id: JobId, reason: String) -> Result<JobRecord, ControllerError> {
        let mut record = self.job(id).await?;
        if let Some(lease) = record.lease.as_ref().filter(|_| !record.status.is_final())
            && record.status != JobStatus::Queued
            && lease.owner != self.owner
        {
            // Saying "cancelled" while it runs on would be a lie; the controller running it can.
            return Err(ControllerError::FailedPrecondition(format!(
                "job {id} runs on controller {}: cancel it there",
                lease.owner
            )));
        }
        if record.status == JobStatus::Queued {
            record.cancel_reason = Some(reason.clone());
            let now = zeroci::now_unix_ms();
            record.finish(JobStatus::Cancelled, reason, now, StepStatus::Cancelled);
            self.jobs.put(&mut record).await?;
            self.close_progress(id);
            self.notify(&record);
            info!(job_id = id, "queued job cancelled");
        }
        Ok(record)
    }

    /// Gives the job its final status (once), stores it, and tells the agent and the worker.
    pub async fn finalize(
        &self,
        active: &ActiveJob,
        state: &mut RunState,
        status: JobStatus,
        reason: String,
    ) -> Result<(), ControllerError> {
        if state.record.status.is_final() {
            // Already over (another path got here first): make sure the worker sees it too.
            active.phase.send_replace(Phase::Final);
            return Ok(());
        }
        let running_as = if status == JobStatus::Cancelled {
            StepStatus::Cancelled
        } else {
            StepStatus::Error
        };
        let reason = match status {
            JobStatus::Success | JobStatus::Failure => String::new(),
            JobStatus::Cancelled => state.record.cancel_reason.clone().unwrap_or(reason),
            JobStatus::Skipped => state.record.skipped.clone().unwrap_or(reason),
            _ => reason,
        };
        // Shown on every page and notification: whatever it quotes, no secret.
        let reason = masking::mask_text(&reason, &self.job_secrets(&state.record));
        state
            .record
            .finish(status, reason, zeroci::now_unix_ms(), running_as);
        // Nothing more is appended to its log: the backend may release what it holds for it.
        self.logs.close(active.id).await;
        let stored = self.jobs.put(&mut state.record).await;
        self.notify(&state.record);
        info!(job_id = active.id, status = %status.word(), "job finished");
        active.send_to_agent(pb::controller_message::Kind::Disconnect(pb::Disconnect {
            reason: format!("job {}", status.word()),
            done: true,
        }));
        active.phase.send_replace(Phase::Final);
        // Followers stop at the final status, not when the machine is gone.
        self.close_progress(active.id);
        stored.map_err(ControllerError::from)
    }

    /// Lets a job go that another controller took over (this one's lease expired, or it wrote over a
    /// revision it no longer held): nothing more is stored through this attempt, the agent is asked to
    /// reconnect (it will find the new holder), and the worker stops supervising without destroying the
    /// machine, which is the new holder's now.
    pub(crate) fn release(&self, active: &ActiveJob, state: &mut RunState) {
        state.retired = true;
        if let Some(machine) = &state.record.machine {
            self.provisioner.forget(machine);
        }
        active.send_to_agent(pb::controller_message::Kind::Disconnect(pb::Disconnect {
            reason: "another controller took this job over".into(),
            done: false,
        }));
        active.phase.send_replace(Phase::Released);
    }

    /// Ends this machine's part of the job; the worker provisions the next pipeline job's machine.
    pub fn end_stage(&self, active: &ActiveJob) {
        active.send_to_agent(pb::controller_message::Kind::Disconnect(pb::Disconnect {
            reason: "pipeline job finished; the next one runs on a fresh machine".into(),
            done: true,
        }));
        active.phase.send_replace(Phase::StageDone);
    }

    /// Destroys the attempt's machine; with `forget`, also clears it from the record (not when the next
    /// pipeline job's machine is about to replace it).
    async fn destroy_machine(&self, active: &ActiveJob, forget: bool) {
        let machine = active.state.lock().await.record.machine.clone();
        let Some(machine) = machine else { return };
        if let Err(e) = self.provisioner.destroy(&machine).await {
            // Keep the record so the next start tries again.
            error!(job_id = active.id, error = %e, "cannot destroy machine");
            return;
        }
        if !forget {
            return;
        }
        let mut state = active.state.lock().await;
        state.record.machine = None;
        if let Err(e) = self.jobs.put(&mut state.record).await {
            error!(job_id = active.id, error = %e, "cannot record machine destruction");
        }
    }

    fn unregister(&self, active: &ActiveJob) {
        if let Ok(mut map) = self.active.lock()
            && map
                .get(&active.id)
                .is_some_and(|a| a.attempt == active.attempt)
        {
            map.remove(&active.id);
        }
        if let Ok(mut link) = active.link.lock() {
            link.take();
        }
    }

    /// Makes an attempt active on this controller: its log continues after `logged`, its agent was
    /// acknowledged through `agent_seq`, and the job's run has stored `output_bytes` of output so far.
    pub(crate) fn register(
        &self,
        record: JobRecord,
        logged: LogCursor,
        agent_seq: u64,
        output_bytes: u64,
    ) -> Arc<ActiveJob> {
        let id = record.id;
        let active = Arc::new(ActiveJob::new(record, logged, agent_seq, output_bytes));
        if let Ok(mut map) = self.active.lock() {
            map.insert(id, active.clone());
        }
        self.open_progress(id);
        active
    }
}

/// Characters of a machine's one-time bootstrap token: 32 random bytes in hex.
pub const BOOTSTRAP_TOKEN_LEN: usize = 64;

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; BOOTSTRAP_TOKEN_LEN / 2];
    rand::rng().fill_bytes(&mut bytes);
    zeroci::encoding::hex(&bytes)
}
