//! Storage seams. The engine sees four traits, bundled in [`Stores`]:
//! - [`JobStore`]: job records (compare-and-set on a revision, leases for claims), webhook deliveries;
//! - [`LogStore`]: each job's log, appended in batches and read as a stream from a [`LogCursor`];
//! - [`ReportStore`]: test reports as sent (bounded: 3 MiB each);
//! - [`ArtifactStore`]: files jobs kept, of any size;
//! - [`ScheduleStore`]: schedules, compare-and-set like job records;
//! - [`JoinTokenStore`]: the tokens pool hosts join with (hashes only).
//!
//! Durability rule, for every backend: a call that writes returns only once what it wrote survives a
//! crash of the controller and of the machine it runs on (embedded: `fsync` of the file and, for new
//! files, of their directory; a database: its acknowledged write). The engine acknowledges agent events
//! only after the log append that holds them returned, and appends everything that arrived together in
//! one call, so the cost of that rule is paid once per batch, not per event.
//!
//! Backends: [`embedded`] (files under the state directory, the default) and [`memory`] (nothing kept
//! across restarts; for tests, benchmarks and throw-away controllers). A new backend is one more
//! module plus one line in [`Stores::open`].

#[cfg(test)]
pub(crate) mod conformance;
pub mod embedded;
mod log;
pub mod memory;
pub mod mongo;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::config::{Config, DbConfig};
use crate::jobs::{JobId, JobRecord, JobStatus, NewJob, NotificationFailure};
use crate::provisioner::pool::tokens::JoinToken;
use crate::schedules::Schedule;
pub use log::{ArtifactNote, ArtifactPiece, EventKind, LogCursor, LogEvent, Payloads, ReportNote};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("corrupt record {path}: {message}")]
    Corrupt { path: String, message: String },
    /// The record changed since it was read: another writer (a controller that took the job over, a
    /// cancel) got there first. Read it again and decide again.
    #[error("job {id} changed meanwhile (revision {expected} expected, {found} stored)")]
    Conflict {
        id: JobId,
        expected: u64,
        found: u64,
    },
    /// The schedule changed since it was read (another controller fired it, a user paused it), or
    /// was created when `revision` 0 asked for a new one.
    #[error("schedule {name:?} changed meanwhile")]
    ScheduleChanged { name: String },
    /// Events appended out of order: a bug in the caller, refused so the log stays readable.
    #[error("log of job {id}: {message}")]
    OutOfOrder { id: JobId, message: String },
    /// A backend's own failure (a database driver, a network), kept whole for the log (in Display,
    /// not as `source()`, so an error chain prints it once).
    #[error("{backend}: {cause}")]
    Backend {
        backend: &'static str,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Matches the display name or the URL.
    pub repo: Option<String>,
    pub status: Option<JobStatus>,
    /// Only jobs of this branch (`ref_name`).
    pub branch: Option<String>,
    /// Only jobs older than this one (the next page after it).
    pub before: Option<JobId>,
    /// Only runs of this schedule.
    pub schedule: Option<String>,
    pub limit: usize,
}

/// Job records and webhook deliveries.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new queued job under an id never used before by this store (also not by a record that
    /// was set aside as corrupt). Durable on return.
    async fn create(&self, new: NewJob, now_ms: i64) -> Result<JobRecord, StoreError>;
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError>;
    /// Compare-and-set: replaces the stored record when its revision is `job.revision`, then advances
    /// `job.revision`. [`StoreError::Conflict`] when someone else wrote it meanwhile. Durable on
    /// return. Claims and lease renewals are puts of a record whose lease changed, so two controllers
    /// can never both think they hold one attempt.
    async fn put(&self, job: &mut JobRecord) -> Result<(), StoreError>;
    /// Newest first.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError>;
    /// Jobs whose status is not final, oldest first (recovery, lease take-over).
    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError>;
    /// Jobs that still have a machine recorded (for cleaning up after a crash).
    async fn with_machines(&self) -> Result<Vec<JobRecord>, StoreError>;
    /// Remembers a webhook delivery id; false when it was seen before (a redelivery). Durable.
    async fn claim_delivery(&self, id: &str) -> Result<bool, StoreError>;
    /// Forgets a claimed delivery whose job could not be created, so a redelivery can try again.
    async fn release_delivery(&self, id: &str) -> Result<(), StoreError>;
    /// Records what a notifier could not deliver for job `id`, replacing that notifier's earlier
    /// failure; nothing for a job that does not exist. Kept apart from the record, so that notifiers
    /// never race the engine's compare-and-set writes. Durable on return.
    async fn put_notification_failure(
        &self,
        id: JobId,
        failure: NotificationFailure,
    ) -> Result<(), StoreError>;
    /// Forgets `notifier`'s failure for job `id` (a later change got through).
    async fn clear_notification_failure(&self, id: JobId, notifier: &str)
    -> Result<(), StoreError>;
    /// The failures recorded for job `id`, ordered by notifier name.
    async fn notification_failures(
        &self,
        id: JobId,
    ) -> Result<Vec<NotificationFailure>, StoreError>;
}

/// A stream of a job's log events.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogEvent, StoreError>> + Send>>;
/// A stream of an artifact's bytes, in order.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// Job logs. The engine is the only writer of a job's log (it holds the job's lease), and appends the
/// cursors of an attempt in order without gaps.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Appends `events`, which follow everything stored for the job, and returns once they are
    /// durable. On an error nothing of the batch may be visible after a restart as a partial event
    /// (whole events may be: the caller resends the batch, and cursors already stored are skipped).
    async fn append(&self, job: JobId, events: Vec<LogEvent>) -> Result<(), StoreError>;
    /// The job's events after `after`, in order, up to what is stored when the stream gets there.
    /// A job with no log yet gives an empty stream.
    fn read(&self, job: JobId, after: LogCursor, payloads: Payloads) -> LogStream;
    /// The job's log gets no more appends from this controller (it ended, or another one took it
    /// over): release what was held open for it.
    async fn close(&self, job: JobId);
}

/// Test reports as the agent sent them (JUnit XML, capped at 3 MiB by the agent), keyed by the log
/// cursor of their [`EventKind::TestReport`] event.
#[async_trait]
pub trait ReportStore: Send + Sync + 'static {
    /// Keeps a report; writing the same key again replaces it with the same bytes (a resend after a
    /// crash). Durable on return.
    async fn put_report(&self, job: JobId, at: LogCursor, xml: Bytes) -> Result<(), StoreError>;
    /// The report kept at `at`, if any.
    async fn report(&self, job: JobId, at: LogCursor) -> Result<Option<Bytes>, StoreError>;
}

/// Files jobs kept (`bin_path`), of any size, keyed by job, attempt and name.
#[async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Writes pieces at their offsets (writing a piece again writes the same bytes) and returns once
    /// they are durable.
    async fn put_pieces(&self, job: JobId, pieces: Vec<ArtifactPiece>) -> Result<(), StoreError>;
    /// The artifact's bytes in order; an error item when it does not exist.
    fn read_artifact(&self, job: JobId, attempt: u32, name: &str) -> ByteStream;
}

/// Schedules by name. Every write is a compare-and-set on the schedule's revision, like job records:
/// firing a tick is such a write, so of several controllers sharing the store exactly one fires it.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Creates the schedule when `schedule.revision` is 0 and the name is free, otherwise replaces
    /// the stored one when its revision is `schedule.revision`; then advances `schedule.revision`.
    /// [`StoreError::ScheduleChanged`] when either does not hold. Durable on return.
    async fn put_schedule(&self, schedule: &mut Schedule) -> Result<(), StoreError>;
    async fn get_schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError>;
    /// Every schedule, ordered by name.
    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError>;
    /// Removes the schedule (its runs stay, as jobs); false when there was none.
    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError>;
}

/// Join tokens of pool hosts, by id; names are unique. Revoking one removes it.
#[async_trait]
pub trait JoinTokenStore: Send + Sync + 'static {
    /// Stores a new token; false (and nothing stored) when a token of that name exists. Durable on
    /// return.
    async fn add_join_token(&self, token: &JoinToken) -> Result<bool, StoreError>;
    async fn join_token(&self, id: &str) -> Result<Option<JoinToken>, StoreError>;
    /// Every token, ordered by name.
    async fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError>;
    /// Removes the token named `name` and returns it; `None` when there is none. Durable on return.
    async fn remove_join_token(&self, name: &str) -> Result<Option<JoinToken>, StoreError>;
}

/// The stores the engine works with.
#[derive(Clone)]
pub struct Stores {
    pub jobs: Arc<dyn JobStore>,
    pub logs: Arc<dyn LogStore>,
    pub reports: Arc<dyn ReportStore>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub schedules: Arc<dyn ScheduleStore>,
    pub join_tokens: Arc<dyn JoinTokenStore>,
}

impl Stores {
    /// The backend `[db] backend` names. One line per backend.
    pub async fn open(config: &Config) -> Result<Stores, StoreError> {
        match &config.db {
            DbConfig::Embedded {} => Ok(Stores::all(Arc::new(embedded::EmbeddedStore::open(
                &config.main.state_dir,
            )?))),
            DbConfig::Memory {} => Ok(Stores::all(Arc::new(memory::MemoryStore::default()))),
            db @ DbConfig::Mongodb { retention_days, .. } => {
                let (uri, name) = db.mongodb().expect("a mongodb section");
                let retention = retention_days
                    .map(|days| std::time::Duration::from_secs(u64::from(days) * 86_400));
                Ok(Stores::all(Arc::new(
                    mongo::MongoStore::open(&uri, &name, retention).await?,
                )))
            }
        }
    }

    /// Every seam served by one backend object.
    pub fn all<S>(store: Arc<S>) -> Stores
    where
        S: JobStore + LogStore + ReportStore + ArtifactStore + ScheduleStore + JoinTokenStore,
    {
        Stores {
            jobs: store.clone(),
            logs: store.clone(),
            reports: store.clone(),
            artifacts: store.clone(),
            schedules: store.clone(),
            join_tokens: store,
        }
    }
}

/// Reads every event of a stream into a vector (for small logs and tests).
pub async fn collect_log(mut stream: LogStream) -> Result<Vec<LogEvent>, StoreError> {
    use futures::StreamExt;
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event?);
    }
    Ok(events)
}
