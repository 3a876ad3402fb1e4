//! The notifier seam: who hears about a job's progress. The engine calls every notifier when a job is
//! queued and when it ends, on a task of its own, so a slow or failing notifier never delays or fails a
//! job. GitHub commit statuses are the first notifier; Telegram is one more file like this.

use std::sync::Arc;

use async_trait::async_trait;

use crate::github::{GitHubApi, StatusState};
use crate::jobs::{JobRecord, JobStatus, job_url};

#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// A job changed status (queued, or a final status). `domain` makes result links.
    async fn job_changed(&self, job: &JobRecord, domain: &str);
}

/// Sets `pending` / `success` / `failure` / `error` statuses on GitHub commits of GitHub jobs.
pub struct GitHubStatuses {
    pub api: Arc<GitHubApi>,
}

/// The commit status for a job status, with its one-line description.
pub fn status_for(job: &JobRecord) -> (StatusState, String) {
    let took = if job.finished_at > job.started_at && job.started_at > 0 {
        format!(
            " in {:.1}s",
            (job.finished_at - job.started_at) as f64 / 1000.0
        )
    } else {
        String::new()
    };
    match job.status {
        JobStatus::Queued => (
            StatusState::Pending,
            format!("ZeroCI job {} queued", job.id),
        ),
        JobStatus::Provisioning | JobStatus::Running => (
            StatusState::Pending,
            format!("ZeroCI job {} running", job.id),
        ),
        JobStatus::Success => (StatusState::Success, format!("passed{took}")),
        JobStatus::Failure => (StatusState::Failure, format!("tests failed{took}")),
        JobStatus::Error => (StatusState::Error, format!("error: {}", job.reason)),
        JobStatus::Cancelled => (StatusState::Error, format!("cancelled: {}", job.reason)),
    }
}

#[async_trait]
impl Notifier for GitHubStatuses {
    async fn job_changed(&self, job: &JobRecord, domain: &str) {
        let Some(repo) = &job.github_repo else { return };
        let (state, description) = status_for(job);
        // Retried inside with backoff; a final failure is logged and dropped, never fatal to the job.
        self.api
            .report_status(
                repo,
                &job.commit,
                state,
                &job_url(domain, job.id),
                &description,
            )
            .await;
    }
}
