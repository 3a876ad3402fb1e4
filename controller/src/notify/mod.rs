//! The notifier seam: who hears about a job's progress. Every job is heard, whatever triggered it
//! (webhook, CLI, hook, watcher); each notifier decides what concerns it (GitHub statuses only GitHub
//! jobs, say). [`Notifications`] runs the notifiers side by side, each on a task of its own with its own
//! queue, so changes reach each of them in order, a slow or failing one never delays another or a job,
//! and every call is bounded. At shutdown the queued notifications are still delivered, within the
//! drain time. Telegram or a JSON webhook is one more file like [`github_status`].

pub mod github_status;
pub mod telegram;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::jobs::JobRecord;
pub use github_status::{GitHubStatuses, status_for};

#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Short name for logs (`github-status`, `telegram`).
    fn name(&self) -> &'static str;
    /// A job changed status (queued, running, or a final status). `domain` makes result links.
    /// A failure (after the notifier's own retries) is logged and counted by the caller; it never
    /// reaches the job.
    async fn job_changed(&self, job: &JobRecord, domain: &str) -> Result<(), String>;
}

/// `zeroci-controller check-notify`: a test message through every notifier that can send one, with
/// each one's outcome (the exact problem when it fails).
pub async fn check(config: &crate::config::Config) -> Vec<(&'static str, Result<(), String>)> {
    let mut results = Vec::new();
    if let Some(settings) = &config.telegram {
        let outcome = match telegram::Telegram::new(settings) {
            Ok(bot) => {
                let text = format!(
                    "✅ ZeroCI can write here: results of {} will come to this chat.",
                    telegram::escape(&config.main.domain)
                );
                bot.send(&text, &[]).await
            }
            Err(problem) => Err(problem),
        };
        results.push(("telegram", outcome));
    }
    results
}

/// Changes waiting per notifier; beyond this, new ones are dropped with a warning.
const QUEUE_PER_NOTIFIER: usize = 1024;

/// The notifiers at work: one ordered queue and task each.
pub struct Notifications {
    queues: Mutex<Vec<(&'static str, mpsc::Sender<JobRecord>)>>,
    tasks: TaskTracker,
    /// Calls that failed or timed out, and changes dropped on a full queue.
    failures: Arc<AtomicU64>,
}

impl Notifications {
    /// Starts one task per notifier; each call may take at most `per_call`.
    pub fn start(
        notifiers: Vec<Arc<dyn Notifier>>,
        domain: String,
        per_call: Duration,
    ) -> Notifications {
        let tasks = TaskTracker::new();
        let failures = Arc::new(AtomicU64::new(0));
        let mut queues = Vec::new();
        for notifier in notifiers {
            let (tx, mut rx) = mpsc::channel::<JobRecord>(QUEUE_PER_NOTIFIER);
            let failures_of_task = failures.clone();
            let domain = domain.clone();
            let name = notifier.name();
            tasks.spawn(async move {
                while let Some(job) = rx.recv().await {
                    let span = info_span!("notify", notifier = name, job_id = job.id);
                    let call = notifier.job_changed(&job, &domain).instrument(span);
                    let failure = match tokio::time::timeout(per_call, call).await {
                        Ok(Ok(())) => None,
                        Ok(Err(error)) => Some(error),
                        Err(_) => Some("timed out".to_string()),
                    };
                    if let Some(error) = failure {
                        failures_of_task.fetch_add(1, Ordering::Relaxed);
                        warn!(notifier = name, job_id = job.id, %error, "notification failed");
                    }
                }
            });
            queues.push((name, tx));
        }
        tasks.close();
        Notifications {
            queues: Mutex::new(queues),
            tasks,
            failures,
        }
    }

    /// No notifiers.
    pub fn none() -> Notifications {
        Notifications::start(Vec::new(), String::new(), Duration::from_secs(1))
    }

    /// Queues a job's change for every notifier; never blocks.
    pub fn send(&self, job: &JobRecord) {
        let Ok(queues) = self.queues.lock() else {
            return;
        };
        for (name, queue) in queues.iter() {
            if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(job.clone()) {
                self.failures.fetch_add(1, Ordering::Relaxed);
                warn!(
                    notifier = name,
                    job_id = job.id,
                    "notification queue full; change dropped"
                );
            }
        }
    }

    /// Notifications that failed, timed out or were dropped since the start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Takes no more changes and waits, at most `within`, until the queued ones are delivered.
    pub async fn drain(&self, within: Duration) {
        if let Ok(mut queues) = self.queues.lock() {
            queues.clear(); // closing the queues ends each task once it has delivered what is queued
        }
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("notifications still queued at shutdown were not all delivered in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NewJob;

    struct Recorder {
        name: &'static str,
        delay: Duration,
        seen: Arc<Mutex<Vec<u64>>>,
    }

    #[async_trait]
    impl Notifier for Recorder {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn job_changed(&self, job: &JobRecord, _domain: &str) -> Result<(), String> {
            tokio::time::sleep(self.delay).await;
            self.seen.lock().unwrap().push(job.id);
            Ok(())
        }
    }

    fn job(id: u64) -> JobRecord {
        let new = NewJob {
            repo: "r".into(),
            repo_url: "/r".into(),
            ref_name: String::new(),
            commit: "c".into(),
            triggered_by: "t".into(),
            step_timeout_secs: 0,
            github_repo: None,
            untrusted: false,
            supersede: false,
        };
        JobRecord::new(id, new, 0)
    }

    #[tokio::test]
    async fn notifiers_run_side_by_side_in_order_and_drain_at_shutdown() {
        let fast = Arc::new(Mutex::new(Vec::new()));
        let stuck = Arc::new(Mutex::new(Vec::new()));
        let notifications = Notifications::start(
            vec![
                Arc::new(Recorder {
                    name: "fast",
                    delay: Duration::ZERO,
                    seen: fast.clone(),
                }),
                Arc::new(Recorder {
                    name: "stuck",
                    delay: Duration::from_secs(3600),
                    seen: stuck.clone(),
                }),
            ],
            "http://x".into(),
            Duration::from_millis(50),
        );
        for id in 1..=3 {
            notifications.send(&job(id));
        }
        // The stuck notifier times out per call; the fast one is not held up by it.
        notifications.drain(Duration::from_secs(5)).await;
        assert_eq!(*fast.lock().unwrap(), vec![1, 2, 3]);
        assert!(stuck.lock().unwrap().is_empty());
        assert_eq!(notifications.failures(), 3, "each stuck call counted");
        notifications.send(&job(4)); // after the drain: ignored, no panic
    }
}
