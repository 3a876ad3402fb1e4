//! The notifier seam: who hears about a job's progress. Every job is heard, whatever triggered it
//! (webhook, CLI, hook, watcher); each notifier decides what concerns it (GitHub statuses only GitHub
//! jobs, say). [`Notifications`] runs the notifiers side by side, each on a task of its own with its own
//! queue, so changes reach each of them in order, a slow or failing one never delays another or a job,
//! and every call is bounded. At shutdown the queued notifications are still delivered, within the
//! drain time. Telegram or a JSON webhook is one more file like [`github_status`].

pub mod github_status;
pub mod telegram;
pub mod webhook;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::jobs::{JobId, JobRecord, NotificationFailure};
use crate::store::JobStore;
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

/// One notifier's task: delivers its queue in order and records what it could not deliver.
struct Delivery {
    notifier: Arc<dyn Notifier>,
    domain: String,
    per_call: Duration,
    jobs: Arc<dyn JobStore>,
    failures: Arc<AtomicU64>,
}

impl Delivery {
    async fn run(self, mut queue: mpsc::Receiver<JobRecord>) {
        let name = self.notifier.name();
        // Unfinished jobs with a failure on record, to forget it when a later change gets through; a
        // delivered final change forgets any failure on record (also one from before a restart, or
        // from another controller), so no job ends with a failure that was made good.
        let mut failed: HashSet<JobId> = HashSet::new();
        while let Some(job) = queue.recv().await {
            let span = info_span!("notify", notifier = name, job_id = job.id);
            let call = self
                .notifier
                .job_changed(&job, &self.domain)
                .instrument(span);
            let outcome = match tokio::time::timeout(self.per_call, call).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!(
                    "no answer within {} s",
                    self.per_call.as_secs_f32()
                )),
            };
            let record = match outcome {
                Err(error) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(notifier = name, job_id = job.id, %error, "notification failed");
                    failed.insert(job.id);
                    let failure = NotificationFailure {
                        notifier: name.to_string(),
                        error,
                        at: zeroci::now_unix_ms(),
                    };
                    Some(self.jobs.put_notification_failure(job.id, failure))
                }
                Ok(()) if failed.remove(&job.id) || job.status.is_final() => {
                    Some(self.jobs.clear_notification_failure(job.id, name))
                }
                Ok(()) => None,
            };
            if job.status.is_final() {
                failed.remove(&job.id); // no later change will come
            }
            if let Some(record) = record {
                match tokio::time::timeout(self.per_call, record).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        warn!(notifier = name, job_id = job.id, %error, "cannot record the notification's outcome on the job")
                    }
                    Err(_) => {
                        warn!(
                            notifier = name,
                            job_id = job.id,
                            "recording the notification's outcome on the job timed out"
                        )
                    }
                }
            }
        }
    }
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
    /// Starts one task per notifier; each call may take at most `per_call`. What a notifier could
    /// not deliver is recorded with the job in `jobs` (shown by `zeroci show` and the job page) and
    /// forgotten once a later change of that job gets through.
    pub fn start(
        notifiers: Vec<Arc<dyn Notifier>>,
        domain: String,
        per_call: Duration,
        jobs: Arc<dyn JobStore>,
    ) -> Notifications {
        let tasks = TaskTracker::new();
        let failures = Arc::new(AtomicU64::new(0));
        let mut queues = Vec::new();
        for notifier in notifiers {
            let (tx, rx) = mpsc::channel::<JobRecord>(QUEUE_PER_NOTIFIER);
            let delivery = Delivery {
                notifier,
                domain: domain.clone(),
                per_call,
                jobs: jobs.clone(),
                failures: failures.clone(),
            };
            let name = delivery.notifier.name();
            tasks.spawn(delivery.run(rx));
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
        Notifications::start(
            Vec::new(),
            String::new(),
            Duration::from_secs(1),
            Arc::new(crate::store::memory::MemoryStore::default()),
        )
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
    use crate::jobs::JobStatus;
    use crate::store::conformance::new_job;
    use crate::store::memory::MemoryStore;

    /// Takes `delay` per change and refuses changes of running jobs.
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
            if job.status == JobStatus::Running {
                return Err("the receiver said no".into());
            }
            Ok(())
        }
    }

    fn recorder(name: &'static str, delay: Duration) -> (Arc<dyn Notifier>, Arc<Mutex<Vec<u64>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let notifier = Recorder {
            name,
            delay,
            seen: seen.clone(),
        };
        (Arc::new(notifier), seen)
    }

    /// One notifier that refuses changes of running jobs, recording on `store`.
    fn flaky(store: &Arc<MemoryStore>) -> Notifications {
        let (notifier, _) = recorder("flaky", Duration::ZERO);
        Notifications::start(
            vec![notifier],
            "http://x".into(),
            Duration::from_secs(5),
            store.clone(),
        )
    }

    #[tokio::test]
    async fn notifiers_run_side_by_side_in_order_and_drain_at_shutdown() {
        let store = Arc::new(MemoryStore::default());
        let mut jobs = Vec::new();
        for _ in 1..=3 {
            jobs.push(store.create(new_job("r"), 0).await.unwrap());
        }
        let (fast, fast_seen) = recorder("fast", Duration::ZERO);
        let (stuck, stuck_seen) = recorder("stuck", Duration::from_secs(3600));
        let notifications = Notifications::start(
            vec![fast, stuck],
            "http://x".into(),
            Duration::from_millis(50),
            store.clone(),
        );
        for job in &jobs {
            notifications.send(job);
        }
        // The stuck notifier times out per call; the fast one is not held up by it.
        notifications.drain(Duration::from_secs(5)).await;
        assert_eq!(*fast_seen.lock().unwrap(), vec![1, 2, 3]);
        assert!(stuck_seen.lock().unwrap().is_empty());
        assert_eq!(notifications.failures(), 3, "each stuck call counted");
        for job in &jobs {
            let failures = store.notification_failures(job.id).await.unwrap();
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert_eq!(failures[0].notifier, "stuck");
            assert_eq!(failures[0].error, "no answer within 0.05 s");
        }
        notifications.send(&jobs[0]); // after the drain: ignored, no panic
    }

    #[tokio::test]
    async fn a_failure_is_kept_with_the_job_until_a_later_change_gets_through() {
        let store = Arc::new(MemoryStore::default());
        let mut job = store.create(new_job("r"), 0).await.unwrap();
        let mut other = store.create(new_job("r"), 0).await.unwrap();
        let notifications = flaky(&store);
        job.status = JobStatus::Running;
        other.status = JobStatus::Running;
        notifications.send(&job);
        notifications.send(&other);
        job.status = JobStatus::Success;
        notifications.send(&job);
        notifications.drain(Duration::from_secs(5)).await;
        assert!(
            store
                .notification_failures(job.id)
                .await
                .unwrap()
                .is_empty(),
            "the final status got through: the earlier failure is forgotten"
        );
        let kept = store.notification_failures(other.id).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].notifier.as_str(), kept[0].error.as_str()),
            ("flaky", "the receiver said no")
        );
        assert_eq!(notifications.failures(), 2);
    }

    #[tokio::test]
    async fn a_delivered_final_change_clears_a_failure_recorded_before_a_restart() {
        let store = Arc::new(MemoryStore::default());
        let mut job = store.create(new_job("r"), 0).await.unwrap();
        let failure = NotificationFailure {
            notifier: "flaky".into(),
            error: "recorded by the previous process".into(),
            at: 1,
        };
        store
            .put_notification_failure(job.id, failure)
            .await
            .unwrap();
        let notifications = flaky(&store);
        job.status = JobStatus::Success;
        notifications.send(&job);
        notifications.drain(Duration::from_secs(5)).await;
        assert!(
            store
                .notification_failures(job.id)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
