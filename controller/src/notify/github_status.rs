//! Setting GitHub commit statuses: `pending` while queued or running, then `success` / `failure` /
//! `error` with a one-line description and a link to the result page.

use std::sync::Arc;

use async_trait::async_trait;

use super::Notifier;
use crate::github::{GitHubApi, StatusState};
use crate::jobs::{JobRecord, JobStatus, job_url};

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
        // Never sent (see `job_changed`); described for completeness.
        JobStatus::Skipped => (StatusState::Success, format!("skipped: {}", job.reason)),
    }
}

#[async_trait]
impl Notifier for GitHubStatuses {
    fn name(&self) -> &'static str {
        "github-status"
    }

    async fn job_changed(&self, job: &JobRecord, domain: &str) -> Result<(), String> {
        let Some(repo) = &job.github_repo else {
            return Ok(());
        };
        // A job whose `run_on` is decided at its checkout says nothing before that, and nothing when
        // it is skipped: the same as a delivery `run_on` filtered out at the door (a skipped job must
        // not turn a required check green).
        let undecided =
            job.run_on_check.is_some() && job.stages.is_empty() && !job.status.is_final();
        if undecided || job.status == JobStatus::Skipped {
            return Ok(());
        }
        let (state, description) = status_for(job);
        // Retried inside with backoff; a final failure is counted and logged, never fatal to the job.
        self.api
            .set_status(
                repo,
                &job.commit,
                state,
                &job_url(domain, job.id),
                &description,
            )
            .await
            .map_err(|e| format!("GitHub commit status of {repo}@{} not set: {e}", job.commit))
    }
}
