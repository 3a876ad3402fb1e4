//! The in-memory state of one job attempt that is provisioning or running on this controller, shared
//! by the worker that supervises it and the agent link that feeds it events.

use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::warn;
use zeroci::pb;

use crate::jobs::{JobId, JobRecord};
use crate::store::LogCursor;

/// Progress of a job's log, watched by log followers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogProgress {
    /// The last event stored.
    pub last: LogCursor,
    /// The job has reached a final status; nothing more will be appended.
    pub finished: bool,
}

/// The sending half of an agent's response stream.
pub type AgentTx = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// The agent's stream currently serving a job (an agent that reconnects gets a new one).
pub struct AgentLink {
    /// Distinguishes successive streams of the same agent.
    pub id: u64,
    pub tx: AgentTx,
    pub info: pb::AgentInfo,
    /// Cancelled when a newer stream of the same agent replaces this one.
    pub stop: CancellationToken,
    /// `OutputLimitReached` went out on this stream.
    pub told_output_full: bool,
}

/// Progress of one machine's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// This pipeline job is done and the next one runs on a fresh machine.
    StageDone,
    /// The job has its final status.
    Final,
    /// Another controller took the job over (this one lost its lease): let it go, machine and all.
    Released,
}

/// What the agent link and the worker change together, under one lock.
pub struct RunState {
    pub record: JobRecord,
    /// Cursor of the last log event stored for this attempt.
    pub logged: LogCursor,
    /// Highest agent event sequence number stored for this attempt (what the agent is acknowledged).
    pub agent_seq: u64,
    /// The next pipeline job took over: nothing more is stored through this attempt.
    pub retired: bool,
    /// Output bytes stored for the job (every stage of this run, before a restart too), against
    /// `[limits] max_log_bytes`.
    pub output_bytes: u64,
}

/// When the store started refusing this job's events, and why.
#[derive(Debug, Clone)]
pub struct StoreTrouble {
    pub since_ms: i64,
    /// Unix ms of the latest refusal: trouble nobody ran into for a while says nothing any more.
    pub last_ms: i64,
    pub error: String,
}

/// State of one job attempt that is provisioning or running.
pub struct ActiveJob {
    pub id: JobId,
    pub attempt: u32,
    pub state: Mutex<RunState>,
    pub link: StdMutex<Option<AgentLink>>,
    /// Unix ms of the last message from the agent (or of the claim, before it connected).
    pub last_heard_ms: AtomicI64,
    /// The agent has connected at least once (then `lost_agent_timeout` applies, not
    /// `provision_timeout`).
    pub connected: AtomicBool,
    /// Unix ms after which a cancelled job is closed even if its agent never confirms; 0 when none.
    pub cancel_deadline_ms: AtomicI64,
    /// Set while the store refuses the job's events; the supervisor ends the job when it lasts.
    pub store_trouble: StdMutex<Option<StoreTrouble>>,
    /// The job's output reached `[limits] max_log_bytes`; the supervisor cancels it when so configured.
    pub output_limit_reached: AtomicBool,
    /// Fired when the job is cancelled or the controller stops: a machine being made stops.
    pub provisioning: CancellationToken,
    /// Where this machine's work is; the worker waits on it.
    pub phase: watch::Sender<Phase>,
    /// SHA-256 of the machine's bootstrap token until its agent enrolled: checked without waiting on
    /// the job's state, so a valid token is recognised however busy the job or the enrolment door.
    pub bootstrap_token_sha256: StdMutex<Option<String>>,
}

impl ActiveJob {
    pub fn new(
        record: JobRecord,
        logged: LogCursor,
        agent_seq: u64,
        output_bytes: u64,
    ) -> ActiveJob {
        let bootstrap_token_sha256 = record.machine.as_ref().and_then(|m| m.token_sha256.clone());
        ActiveJob {
            id: record.id,
            attempt: record.attempt,
            bootstrap_token_sha256: StdMutex::new(bootstrap_token_sha256),
            state: Mutex::new(RunState {
                record,
                logged,
                agent_seq,
                retired: false,
                output_bytes,
            }),
            link: StdMutex::new(None),
            last_heard_ms: AtomicI64::new(zeroci::now_unix_ms()),
            connected: AtomicBool::new(false),
            cancel_deadline_ms: AtomicI64::new(0),
            store_trouble: StdMutex::new(None),
            output_limit_reached: AtomicBool::new(false),
            provisioning: CancellationToken::new(),
            phase: watch::channel(Phase::Running).0,
        }
    }

    /// Sends a message to the connected agent, if any. A closed stream just means it is gone.
    /// Never blocks: when the agent is not reading its stream fast enough to take a control message, the
    /// stream is closed instead, and the agent's reconnect gets the same state in `Welcome`.
    pub fn send_to_agent(&self, message: pb::controller_message::Kind) {
        let Ok(link) = self.link.lock() else {
            return;
        };
        let Some(link) = link.as_ref() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) =
            link.tx.try_send(Ok(pb::ControllerMessage {
                kind: Some(message),
            }))
        {
            warn!(
                job_id = self.id,
                "agent stream is backed up; closing it so the agent reconnects"
            );
            link.stop.cancel();
        }
    }

    /// Tells the agent, once per stream, that the job's output is full so it keeps the rest on its
    /// machine. Only advice: a stream too backed up to take it now is told with a later batch
    /// (never closed for it).
    pub fn tell_output_full(&self, limit_bytes: u64) {
        let Ok(mut link) = self.link.lock() else {
            return;
        };
        let Some(link) = link.as_mut().filter(|l| !l.told_output_full) else {
            return;
        };
        let message = pb::ControllerMessage {
            kind: Some(pb::controller_message::Kind::OutputLimitReached(
                pb::OutputLimitReached { limit_bytes },
            )),
        };
        if link.tx.try_send(Ok(message)).is_ok() {
            link.told_output_full = true;
        }
    }

    pub fn touch(&self) {
        self.last_heard_ms
            .store(zeroci::now_unix_ms(), Ordering::Relaxed);
    }

    pub fn is_linked(&self) -> bool {
        self.link.lock().map(|l| l.is_some()).unwrap_or(false)
    }

    /// Notes that the store refused the job's events (keeps the first time it happened).
    pub fn store_failed(&self, error: String) {
        if let Ok(mut trouble) = self.store_trouble.lock() {
            let now = zeroci::now_unix_ms();
            let since_ms = trouble.as_ref().map(|t| t.since_ms).unwrap_or(now);
            *trouble = Some(StoreTrouble {
                since_ms,
                last_ms: now,
                error,
            });
        }
    }

    pub fn store_recovered(&self) {
        if let Ok(mut trouble) = self.store_trouble.lock() {
            trouble.take();
        }
    }

    pub fn store_trouble(&self) -> Option<StoreTrouble> {
        self.store_trouble.lock().ok().and_then(|t| t.clone())
    }
}
