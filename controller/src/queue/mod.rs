//! The job queue seam. Triggers `push` job ids; workers `pop` a [`Delivery`] and `ack` it once the job
//! has reached a final status (or turned out to need nothing), so a queue shared by several
//! controllers (Redis streams with a consumer group) can hand the job of a controller that died to
//! another one.
//!
//! The store stays the source of truth: a popped job runs only if its claim on the record succeeds,
//! and after a restart the engine pushes every stored `queued` job again, so the in-process queue
//! needs no persistence of its own. Backends: [`InProcessQueue`] and [`redis::RedisQueue`] (shared by
//! several controllers); a new one is one more module plus one line in [`build`].

mod in_process;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::jobs::JobId;
pub use in_process::InProcessQueue;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue's backend failed (a connection lost); the caller retries later.
    #[error("queue {backend}: {cause}")]
    Backend {
        backend: &'static str,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A job handed to one worker, pending until acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub job: JobId,
    /// The backend's handle for acknowledging it (a stream entry id); empty in process.
    pub receipt: String,
}

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Adds a job at the back.
    async fn push(&self, id: JobId) -> Result<(), QueueError>;
    /// Waits for the next job. It stays pending, charged to this controller, until [`JobQueue::ack`].
    async fn pop(&self) -> Result<Delivery, QueueError>;
    /// The delivery's job is over for this queue (final, or nothing to run).
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;
    /// Jobs waiting now (not counting pending ones).
    async fn waiting(&self) -> usize;
    /// Whether the queue's backend answers now (`/healthz`); a queue in this process always does.
    async fn health(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

/// The queue `[queue] backend` names. One line per backend.
pub async fn build(config: &crate::config::Config) -> Result<Arc<dyn JobQueue>, QueueError> {
    use crate::config::QueueConfig;
    Ok(match &config.queue {
        QueueConfig::InProcess {} => Arc::new(InProcessQueue::default()),
        QueueConfig::Redis { url, stream } => Arc::new(
            redis::RedisQueue::open(
                url,
                stream.as_deref().unwrap_or(redis::DEFAULT_STREAM),
                &config.controller_id(),
                config.lease(),
            )
            .await?,
        ),
    })
}
