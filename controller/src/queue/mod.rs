//! The job queue seam. Workers `pop` job ids; triggers `push` them. The in-process queue is the default;
//! a Redis-streams queue shared by controller replicas is one more implementation.
//!
//! The store stays the source of truth: after a restart the engine pushes every stored `queued` job
//! again, so the in-process queue needs no persistence of its own.

use std::collections::VecDeque;

use async_trait::async_trait;
use tokio::sync::{Mutex, Notify};

use crate::jobs::JobId;

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Adds a job at the back.
    async fn push(&self, id: JobId);
    /// Waits for the next job.
    async fn pop(&self) -> JobId;
    /// Jobs waiting now.
    async fn waiting(&self) -> usize;
}

/// FIFO queue inside the controller process.
#[derive(Default)]
pub struct InProcessQueue {
    items: Mutex<VecDeque<JobId>>,
    available: Notify,
}

#[async_trait]
impl JobQueue for InProcessQueue {
    async fn push(&self, id: JobId) {
        self.items.lock().await.push_back(id);
        // notify_one stores a permit when nobody waits, so a push between a pop's check and its wait
        // is not lost.
        self.available.notify_one();
    }

    async fn pop(&self) -> JobId {
        loop {
            if let Some(id) = self.items.lock().await.pop_front() {
                return id;
            }
            self.available.notified().await;
        }
    }

    async fn waiting(&self) -> usize {
        self.items.lock().await.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn pops_in_order_and_wakes_waiters() {
        let q = Arc::new(InProcessQueue::default());
        q.push(1).await;
        q.push(2).await;
        assert_eq!(q.pop().await, 1);
        assert_eq!(q.pop().await, 2);
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.push(3).await;
        assert_eq!(waiter.await.unwrap(), 3);
        assert_eq!(q.waiting().await, 0);
    }
}
