//! What `GET /metrics` reports, in Prometheus's text format: counters the engine and the front doors
//! bump as things happen (lock-free), and gauges read at scrape time from the engine's own state.
//! Counters start at zero with the process, as Prometheus expects of counters.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::jobs::{JobRecord, JobStatus};

/// Upper bounds (seconds) of the step duration histogram's buckets.
const STEP_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Every final status, in the order they are reported.
const FINAL: [JobStatus; 5] = [
    JobStatus::Success,
    JobStatus::Failure,
    JobStatus::Error,
    JobStatus::Cancelled,
    JobStatus::Skipped,
];

#[derive(Default)]
pub struct Metrics {
    /// Jobs that reached each of [`FINAL`], by index.
    finished: [AtomicU64; FINAL.len()],
    steps: Mutex<Histogram>,
    /// Webhook deliveries by the HTTP status they were answered with.
    deliveries: Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Output bytes agents sent, stored or dropped past a job's limit.
    output_received: AtomicU64,
    /// The part of `output_received` dropped past a job's limit.
    output_dropped: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; STEP_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What is read from the engine when scraped.
pub struct Gauges {
    pub running: usize,
    pub queued: usize,
    pub agents: usize,
    pub machines: usize,
    /// Notifications that failed, timed out or were dropped (the notifiers count their own).
    pub notification_failures: u64,
}

impl Metrics {
    /// A job reached its final status: counts it and observes its steps' durations.
    pub fn job_finished(&self, job: &JobRecord) {
        if let Some(i) = FINAL.iter().position(|s| *s == job.status) {
            self.finished[i].fetch_add(1, Ordering::Relaxed);
        }
        let Ok(mut steps) = self.steps.lock() else {
            return;
        };
        for step in &job.steps {
            // 0: the step never started or never ended.
            let (started, finished) = (step.started_at, step.finished_at);
            if started == 0 || finished == 0 {
                continue;
            }
            let secs = (finished - started).max(0) as f64 / 1000.0;
            steps.count += 1;
            steps.sum += secs;
            for (bound, bucket) in STEP_BUCKETS.iter().zip(steps.buckets.iter_mut()) {
                if secs <= *bound {
                    *bucket += 1;
                }
            }
        }
    }

    /// Agents sent `received` output bytes, `dropped` of them past their job's limit.
    pub fn agent_output(&self, received: u64, dropped: u64) {
        self.output_received.fetch_add(received, Ordering::Relaxed);
        self.output_dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    /// A webhook delivery was answered with `status`.
    pub fn webhook_delivery(&self, status: u16) {
        if let Ok(mut deliveries) = self.deliveries.lock() {
            *deliveries.entry(status).or_default() += 1;
        }
    }

    /// The whole exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut text = String::new();
        let name = "zeroci_jobs_finished_total";
        let _ = writeln!(
            text,
            "# HELP {name} Jobs that reached a final status since the controller started.\n# TYPE {name} counter"
        );
        for (status, count) in FINAL.iter().zip(&self.finished) {
            let _ = writeln!(
                text,
                "{name}{{status=\"{}\"}} {}",
                status.word(),
                count.load(Ordering::Relaxed)
            );
        }
        for (name, help, value) in [
            (
                "zeroci_jobs_running",
                "Jobs this controller runs now.",
                gauges.running,
            ),
            (
                "zeroci_jobs_queued",
                "Jobs waiting in the queue.",
                gauges.queued,
            ),
            (
                "zeroci_agents_connected",
                "Agents connected to this controller now.",
                gauges.agents,
            ),
            (
                "zeroci_machines",
                "Machines this controller has made and not yet destroyed.",
                gauges.machines,
            ),
        ] {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let name = "zeroci_step_duration_seconds";
        let _ = writeln!(
            text,
            "# HELP {name} Durations of the steps of finished jobs.\n# TYPE {name} histogram"
        );
        if let Ok(steps) = self.steps.lock() {
            for (bound, count) in STEP_BUCKETS.iter().zip(steps.buckets.iter()) {
                let _ = writeln!(text, "{name}_bucket{{le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(text, "{name}_bucket{{le=\"+Inf\"}} {}", steps.count);
            let _ = writeln!(text, "{name}_sum {}", steps.sum);
            let _ = writeln!(text, "{name}_count {}", steps.count);
        }
        let name = "zeroci_webhook_deliveries_total";
        let _ = writeln!(
            text,
            "# HELP {name} GitHub webhook deliveries by the HTTP status they were answered with.\n# TYPE {name} counter"
        );
        if let Ok(deliveries) = self.deliveries.lock() {
            for (code, count) in deliveries.iter() {
                let _ = writeln!(text, "{name}{{code=\"{code}\"}} {count}");
            }
        }
        for (name, help, counter) in [
            (
                "zeroci_agent_output_bytes_total",
                "Output bytes agents sent, stored or dropped.",
                &self.output_received,
            ),
            (
                "zeroci_agent_output_dropped_bytes_total",
                "Output bytes agents sent past their job's max_log_bytes (not stored).",
                &self.output_dropped,
            ),
        ] {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let name = "zeroci_notification_failures_total";
        let _ = writeln!(
            text,
            "# HELP {name} Notifications that failed, timed out or were dropped.\n# TYPE {name} counter\n{name} {}",
            gauges.notification_failures
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{NewJob, StepKind, StepRecord};

    #[test]
    fn the_exposition_counts_jobs_steps_deliveries_and_failures() {
        let metrics = Metrics::default();
        let new = NewJob {
            repo: "r".into(),
            repo_url: "/r".into(),
            ref_name: "main".into(),
            commit: "c".into(),
            triggered_by: "t".into(),
            step_timeout_secs: 0,
            github_repo: None,
            untrusted: false,
            supersede: false,
            ..Default::default()
        };
        let mut job = JobRecord::new(1, new, 0);
        job.status = JobStatus::Failure;
        let mut step = StepRecord::new(0, "s", StepKind::Script);
        step.started_at = 1_000;
        step.finished_at = 3_000;
        job.steps.push(step);
        metrics.job_finished(&job);
        metrics.webhook_delivery(202);
        metrics.webhook_delivery(202);
        metrics.webhook_delivery(401);
        let text = metrics.render(&Gauges {
            running: 2,
            queued: 3,
            agents: 1,
            machines: 2,
            notification_failures: 1,
        });
        for line in [
            "zeroci_jobs_finished_total{status=\"failure\"} 1",
            "zeroci_jobs_finished_total{status=\"success\"} 0",
            "zeroci_jobs_running 2",
            "zeroci_jobs_queued 3",
            "zeroci_agents_connected 1",
            "zeroci_machines 2",
            "zeroci_step_duration_seconds_bucket{le=\"1\"} 0",
            "zeroci_step_duration_seconds_bucket{le=\"5\"} 1",
            "zeroci_step_duration_seconds_sum 2",
            "zeroci_step_duration_seconds_count 1",
            "zeroci_webhook_deliveries_total{code=\"202\"} 2",
            "zeroci_webhook_deliveries_total{code=\"401\"} 1",
            "zeroci_notification_failures_total 1",
            "# TYPE zeroci_step_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }
}
