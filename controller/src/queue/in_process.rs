//! FIFO queue inside the controller process.

use std::collections::{HashMap, VecDeque};

use async_trait::async_trait;
use tokio::sync::{Mutex, Notify};

use super::{Delivery, JobQueue, QueueError};
use crate::jobs::JobId;

#[derive(Default)]
pub struct InProcessQueue {
    state: Mutex<State>,
    available: Notify,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<JobId>,
    /// Popped and not yet acknowledged, with how many times each.
    pending: HashMap<JobId, usize>,
}

#[async_trait]
impl JobQueue for InProcessQueue {
    async fn push(&self, id: JobId) -> Result<(), QueueError> {
        self.state.lock().await.waiting.push_back(id);
        // notify_one stores a permit when nobody waits, so a push between a pop's check and its wait
        // is not lost.
        self.available.notify_one();
        Ok(())
    }

    async fn pop(&self) -> Result<Delivery, QueueError> {
        loop {
            {
                let mut state = self.state.lock().await;
                if let Some(job) = state.waiting.pop_front() {
                    *state.pending.entry(job).or_default() += 1;
                    return Ok(Delivery {
                        job,
                        receipt: String::new(),
                    });
                }
            }
            self.available.notified().await;
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let mut state = self.state.lock().await;
        if let Some(count) = state.pending.get_mut(&delivery.job) {
            *count -= 1;
            if *count == 0 {
                state.pending.remove(&delivery.job);
            }
        }
        Ok(())
    }

    async fn waiting(&self) -> usize {
        self.state.lock().await.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn pops_in_order_wakes_waiters_and_keeps_deliveries_pending_until_acked() {
        let q = Arc::new(InProcessQueue::default());
        q.push(1).await.unwrap();
        q.push(2).await.unwrap();
        let first = q.pop().await.unwrap();
        assert_eq!(first.job, 1);
        assert_eq!(q.pop().await.unwrap().job, 2);
        assert_eq!(q.state.lock().await.pending.len(), 2);
        q.ack(&first).await.unwrap();
        assert_eq!(q.state.lock().await.pending.len(), 1);
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await.unwrap().job }
        });
        tokio::task::yield_now().await;
        q.push(3).await.unwrap();
        assert_eq!(waiter.await.unwrap(), 3);
        assert_eq!(q.waiting().await, 0);
    }
}
