//! The engine: job lifecycle from submission to a destroyed machine.
//!
//! - Triggers call [`Engine::submit`]; the job is stored `queued` and pushed on the queue.
//! - `workers` worker tasks pop jobs. A worker claims a job (`provisioning`, attempt + 1), records the
//!   machine, asks the provisioner for it, then supervises: it waits for the agent's session to end the
//!   job, declares the agent lost after `lost_agent_timeout` of silence, enforces the cancel deadline, and
//!   always destroys the machine at the end.
//! - Agent sessions (see [`crate::engine::agents`]) turn the agent's events into journal frames and record
//!   changes; the job's [`ActiveJob`] holds the in-memory state they share with the worker.
//! - On start, [`Engine::recover`] re-queues queued jobs, re-attaches to running ones (their agents
//!   reconnect) and destroys machines left over by a crash.
//!
//! Shutdown: the root token stops workers from taking jobs; running jobs get `shutdown_grace` to finish
//! and are otherwise left to their agents until the next start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{error, info, warn};
use zeroci::pb;
use zeroci::pki::CertificateAuthority;

use crate::config::Config;
use crate::error::ControllerError;
use crate::github::GitHubApi;
use crate::jobs::{JobId, JobRecord, JobStatus, MachineRecord, NewJob, StepStatus};
use crate::notify::Notifier;
use crate::provisioner::{MachineRequest, Provisioner};
use crate::queue::JobQueue;
use crate::store::{JobStore, LogStore, LogWriter};
use apply::PlanDefaults;

/// Progress of a job's journal, watched by log followers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogProgress {
    /// Bytes of complete frames in the journal.
    pub len: u64,
    /// The job has reached a final status; nothing more will be appended.
    pub finished: bool,
}

/// The sending half of an agent's response stream.
pub type AgentTx = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// The agent connection currently serving a job.
pub struct Session {
    /// Distinguishes successive connections of the same agent.
    pub id: u64,
    pub tx: AgentTx,
    pub info: pb::AgentInfo,
    /// Cancelled when a newer connection of the same agent replaces this one.
    pub stop: CancellationToken,
}

/// State of one job attempt that is provisioning or running.
pub struct ActiveJob {
    pub id: JobId,
    pub attempt: u32,
    pub state: Mutex<RunState>,
    pub session: StdMutex<Option<Session>>,
    /// Unix ms of the last message from the agent (or of the claim, before it connected).
    pub last_heard_ms: AtomicI64,
    /// The agent has connected at least once (then `lost_agent_timeout` applies, not
    /// `provision_timeout`).
    pub connected: AtomicBool,
    /// Unix ms after which a cancelled job is closed even if its agent never confirms; 0 when none.
    pub cancel_deadline_ms: AtomicI64,
    /// Where this machine's work is; the worker waits on it.
    pub phase: watch::Sender<Phase>,
}

/// Progress of one machine's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// This pipeline job is done and the next one runs on a fresh machine.
    StageDone,
    /// The job has its final status.
    Final,
}

/// How supervising a machine ended.
enum Outcome {
    Final,
    NextStage,
    /// The controller is shutting down and the job goes on without it.
    LeftRunning,
}

/// What the session and the worker change together, under one lock.
pub struct RunState {
    pub record: JobRecord,
    pub writer: Box<dyn LogWriter>,
    /// Highest agent event sequence number stored for this attempt.
    pub last_seq: u64,
}

impl ActiveJob {
    /// Sends a message to the connected agent, if any. A closed stream just means it is gone.
    /// Never blocks: when the agent is not reading its stream fast enough to take a control message, the
    /// stream is closed instead, and the agent's reconnect gets the same state in `Welcome`.
    pub fn send_to_agent(&self, message: pb::controller_message::Kind) {
        let Ok(session) = self.session.lock() else {
            return;
        };
        let Some(session) = session.as_ref() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) =
            session.tx.try_send(Ok(pb::ControllerMessage {
                kind: Some(message),
            }))
        {
            warn!(
                job_id = self.id,
                "agent stream is backed up; closing it so the agent reconnects"
            );
            session.stop.cancel();
        }
    }

    pub fn touch(&self) {
        self.last_heard_ms
            .store(zeroci::now_unix_ms(), Ordering::Relaxed);
    }
}

pub struct Engine {
    pub config: Arc<Config>,
    pub jobs: Arc<dyn JobStore>,
    pub logs: Arc<dyn LogStore>,
    queue: Arc<dyn JobQueue>,
    provisioner: Arc<dyn Provisioner>,
    pub ca: CertificateAuthority,
    /// The address agents dial.
    agent_endpoint: String,
    pub active: StdMutex<HashMap<JobId, Arc<ActiveJob>>>,
    progress: StdMutex<HashMap<JobId, watch::Sender<LogProgress>>>,
    /// Serialises claiming a queued job against cancelling it.
    claim_lock: Mutex<()>,
    workers: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// The GitHub API client when `[github]` is configured.
    pub github: Option<Arc<GitHubApi>>,
    /// Status changes for the notifiers, handled in order by one task.
    notifications: mpsc::Sender<JobRecord>,
}

/// Runs the notifiers on their own task, one job change after another, so that a job's statuses
/// reach GitHub in the order they happened and a slow notifier never holds up a job.
fn spawn_notifier(notifiers: Vec<Arc<dyn Notifier>>, domain: String) -> mpsc::Sender<JobRecord> {
    let (tx, mut rx) = mpsc::channel::<JobRecord>(1024);
    if notifiers.is_empty() {
        return tx; // nothing listens; sends fail quietly once the receiver is gone
    }
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            for notifier in &notifiers {
                notifier.job_changed(&job, &domain).await;
            }
        }
    });
    tx
}

pub(crate) fn sha256_hex(data: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub mod agents;
pub mod apply;
pub mod logs;
pub mod masking;
pub mod recovery;
pub mod reports;
mod workers;

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        jobs: Arc<dyn JobStore>,
        logs: Arc<dyn LogStore>,
        queue: Arc<dyn JobQueue>,
        provisioner: Arc<dyn Provisioner>,
        ca: CertificateAuthority,
        agent_endpoint: String,
        shutdown: CancellationToken,
        github: Option<Arc<GitHubApi>>,
        notifiers: Vec<Arc<dyn Notifier>>,
    ) -> Arc<Engine> {
        let workers = Arc::new(Semaphore::new(config.main.workers));
        let notifications = spawn_notifier(notifiers, config.main.domain.clone());
        Arc::new(Engine {
            github,
            notifications,
            config,
            jobs,
            logs,
            queue,
            provisioner,
            ca,
            agent_endpoint,
            active: StdMutex::new(HashMap::new()),
            progress: StdMutex::new(HashMap::new()),
            claim_lock: Mutex::new(()),
            workers,
            shutdown,
        })
    }

    pub(crate) fn provisioner(&self) -> &dyn Provisioner {
        self.provisioner.as_ref()
    }

    pub(crate) fn worker_slots(&self) -> Arc<Semaphore> {
        self.workers.clone()
    }

    pub(crate) async fn requeue(&self, id: JobId) {
        self.open_progress(id);
        self.queue.push(id).await;
    }

    /// Tells the notifiers about a job's new status (never blocks; a full queue drops with a warning).
    fn notify(&self, job: &JobRecord) {
        if job.github_repo.is_none() {
            return; // only GitHub jobs have a listener today
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.notifications.try_send(job.clone()) {
            warn!(
                job_id = job.id,
                "notification queue full; status update dropped"
            );
        }
    }

    pub fn plan_defaults(&self) -> PlanDefaults {
        PlanDefaults {
            step_timeout_secs: self.config.main.step_timeout,
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

    /// A receiver for the journal progress of a job that is not over; `None` once it is.
    pub fn watch_progress(&self, id: JobId) -> Option<watch::Receiver<LogProgress>> {
        self.progress.lock().ok()?.get(&id).map(|tx| tx.subscribe())
    }

    fn open_progress(&self, id: JobId) {
        if let Ok(mut map) = self.progress.lock() {
            map.entry(id)
                .or_insert_with(|| watch::channel(LogProgress::default()).0);
        }
    }

    pub fn publish_progress(&self, id: JobId, len: u64) {
        if let Ok(map) = self.progress.lock()
            && let Some(tx) = map.get(&id)
        {
            tx.send_modify(|p| p.len = len);
        }
    }

    fn close_progress(&self, id: JobId) {
        if let Ok(mut map) = self.progress.lock()
            && let Some(tx) = map.remove(&id)
        {
            tx.send_modify(|p| p.finished = true);
        }
    }

    // === Triggers ===

    pub async fn submit(&self, new: NewJob) -> Result<JobRecord, ControllerError> {
        if new.repo_url.trim().is_empty() {
            return Err(ControllerError::InvalidArgument(
                "repo_url is required".into(),
            ));
        }
        if new.commit.trim().is_empty() {
            return Err(ControllerError::InvalidArgument(
                "commit is required".into(),
            ));
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
        self.queue.push(job.id).await;
        info!(job_id = job.id, repo = %job.repo, commit = %job.commit, "job queued");
        Ok(job)
    }

    /// Queues a new job with the repository, commit and settings of job `id`.
    pub async fn rerun(&self, id: JobId, user: &str) -> Result<JobRecord, ControllerError> {
        let old = self
            .jobs
            .get(id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("job {id} not found")))?;
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
        })
        .await
    }

    /// Cancels a job. Queued jobs end at once; running ones when their agent has stopped the step (or
    /// after the grace period plus a margin when it does not answer).
    pub async fn cancel(&self, id: JobId, reason: String) -> Result<JobRecord, ControllerError> {
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
            self.jobs.put(&state.record).await?;
            let connected = active.session.lock().map(|s| s.is_some()).unwrap_or(false);
            if connected {
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
            limit: 0,
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
        let mut record = self
            .jobs
            .get(id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("job {id} not found")))?;
        if record.status == JobStatus::Queued {
            record.cancel_reason = Some(reason.clone());
            let now = zeroci::now_unix_ms();
            record.finish(JobStatus::Cancelled, reason, now, StepStatus::Cancelled);
            self.jobs.put(&record).await?;
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
            _ => reason,
        };
        state
            .record
            .finish(status, reason, zeroci::now_unix_ms(), running_as);
        if let Err(e) = state.writer.sync() {
            warn!(job_id = active.id, error = %e, "cannot sync journal");
        }
        let stored = self.jobs.put(&state.record).await;
        self.notify(&state.record);
        info!(job_id = active.id, status = status.as_str(), "job finished");
        active.send_to_agent(pb::controller_message::Kind::Disconnect(pb::Disconnect {
            reason: format!("job {}", status.as_str()),
            done: true,
        }));
        active.phase.send_replace(Phase::Final);
        // Followers stop at the final status, not when the machine is gone.
        self.close_progress(active.id);
        stored.map_err(ControllerError::from)
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
        if let Err(e) = self.jobs.put(&state.record).await {
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
        if let Ok(mut session) = active.session.lock() {
            session.take();
        }
    }

    pub(crate) fn register(
        &self,
        record: JobRecord,
        writer: Box<dyn LogWriter>,
        last_seq: u64,
    ) -> Arc<ActiveJob> {
        let id = record.id;
        let attempt = record.attempt;
        let active = Arc::new(ActiveJob {
            id,
            attempt,
            state: Mutex::new(RunState {
                record,
                writer,
                last_seq,
            }),
            session: StdMutex::new(None),
            last_heard_ms: AtomicI64::new(zeroci::now_unix_ms()),
            connected: AtomicBool::new(false),
            cancel_deadline_ms: AtomicI64::new(0),
            phase: watch::channel(Phase::Running).0,
        });
        if let Ok(mut map) = self.active.lock() {
            map.insert(id, active.clone());
        }
        self.open_progress(id);
        active
    }
}

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
