//! Storage seams. The engine sees two traits: [`JobStore`] for job records and [`LogStore`] for each
//! job's event journal (output and step events, see [`journal`]). The embedded backend
//! ([`embedded::EmbeddedStore`]) keeps both under the state directory; a MongoDB backend is one more
//! implementation of the same traits.
//!
//! Journal access is synchronous (plain file I/O, fast enough for the agent session's hot path); long
//! reads by followers run on the blocking pool.

pub mod embedded;

use async_trait::async_trait;

use crate::jobs::{JobId, JobRecord, JobStatus, NewJob};
pub use embedded::journal::{Frame, FrameHeader, FrameKind};

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
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Matches the display name or the URL.
    pub repo: Option<String>,
    pub status: Option<JobStatus>,
    pub limit: usize,
}

/// Job records.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new queued job under a fresh id.
    async fn create(&self, new: NewJob, now_ms: i64) -> Result<JobRecord, StoreError>;
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError>;
    /// Replaces the stored record (durably before returning).
    async fn put(&self, job: &JobRecord) -> Result<(), StoreError>;
    /// Newest first.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError>;
    /// Jobs whose status is not final, oldest first (for recovery after a restart).
    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError>;
    /// Jobs that still have a machine recorded (for cleaning up after a crash).
    async fn with_machines(&self) -> Result<Vec<JobRecord>, StoreError>;
    /// Remembers a webhook delivery id; false when it was seen before (a redelivery), durably.
    async fn claim_delivery(&self, id: &str) -> Result<bool, StoreError>;
    /// Forgets a claimed delivery whose job could not be created, so a redelivery can try again.
    async fn release_delivery(&self, id: &str) -> Result<(), StoreError>;
}

/// Appends to one job's journal.
pub trait LogWriter: Send {
    /// Appends a frame; returns the journal's new length in bytes.
    fn append(&mut self, header: &FrameHeader, payload: &[u8]) -> Result<u64, StoreError>;
    fn end_offset(&self) -> u64;
    /// Makes everything appended durable.
    fn sync(&self) -> Result<(), StoreError>;
}

/// The writer left behind when a job's journal writer moved to its next attempt: nothing may append
/// through it any more.
pub struct ClosedWriter;

impl LogWriter for ClosedWriter {
    fn append(&mut self, _header: &FrameHeader, _payload: &[u8]) -> Result<u64, StoreError> {
        Err(StoreError::Io {
            path: "journal".into(),
            source: std::io::Error::other("this attempt's journal writer went to the next attempt"),
        })
    }

    fn end_offset(&self) -> u64 {
        0
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Reads one job's journal from an offset.
pub trait LogReader: Send {
    /// The next complete, valid frame; `None` at the end of what is written so far.
    fn next_frame(&mut self) -> Result<Option<Frame>, StoreError>;
    /// Offset just after the last frame returned.
    fn offset(&self) -> u64;
}

/// Job journals.
pub trait LogStore: Send + Sync + 'static {
    /// Opens the journal for appending, repairing a torn tail first. One writer per job at a time.
    fn writer(&self, id: JobId) -> Result<Box<dyn LogWriter>, StoreError>;
    /// Reads from `offset`; output payloads are left empty when `skip_output`. `None` when the job has
    /// no journal yet.
    fn reader(
        &self,
        id: JobId,
        offset: u64,
        skip_output: bool,
    ) -> Result<Option<Box<dyn LogReader>>, StoreError>;
}
