//! `ControlService`: what the CLI calls. Every method checks the caller's role first.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use zeroci::pb;

use crate::api::auth::{Access, authorize_user};
use crate::engine::Engine;
use crate::error::ControllerError;
use crate::jobs::{JobStatus, NewJob};
use crate::provisioner::pool::membership::PoolMembership;
use crate::schedules::ScheduleSpec;
use crate::schedules::service::TargetRequest;
use crate::store::JobFilter;

use super::schedules::schedule_info;

/// Runs `GetSchedule` returns.
const SCHEDULE_RUNS_SHOWN: usize = 20;

pub struct ControlApi {
    engine: Arc<Engine>,
    pool: Arc<PoolMembership>,
}

impl ControlApi {
    pub fn new(engine: Arc<Engine>, pool: Arc<PoolMembership>) -> ControlApi {
        ControlApi { engine, pool }
    }

    /// A configured GitHub repository's clone URL and the latest commit of `branch`.
    async fn github_branch_head(
        &self,
        repo: &str,
        branch: &str,
    ) -> Result<(String, String), ControllerError> {
        let Some(api) = &self.engine.github else {
            return Err(ControllerError::InvalidArgument(
                "repo_url is required: this controller has no [github] section for repository names".into(),
            ));
        };
        let configured = self
            .engine
            .config
            .github
            .as_ref()
            .is_some_and(|g| g.repos.iter().any(|r| r.eq_ignore_ascii_case(repo)));
        if !configured {
            return Err(ControllerError::InvalidArgument(format!(
                "{repo} is not in [github] repos"
            )));
        }
        if branch.is_empty() {
            return Err(ControllerError::InvalidArgument(
                "a branch is required with a repository name".into(),
            ));
        }
        let commit = api.branch_head(repo, branch).await.map_err(|e| {
            ControllerError::FailedPrecondition(format!(
                "cannot read branch {branch} of {repo} from GitHub: {e}"
            ))
        })?;
        let url = api
            .clone_url(repo)
            .map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
        Ok((url, commit))
    }

    /// See [`Config::check_repo_pairing`](crate::config::Config::check_repo_pairing).
    fn check_name_belongs_to_url(&self, name: &str, url: &str) -> Result<(), ControllerError> {
        self.engine
            .config
            .check_repo_pairing(name, url)
            .map_err(ControllerError::InvalidArgument)
    }

    async fn job(&self, id: u64) -> Result<pb::Job, ControllerError> {
        let job = self.engine.job(id).await?;
        let mut shown = job.to_pb(self.engine.domain());
        shown.notification_failures = self
            .engine
            .notification_failures(id)
            .await?
            .iter()
            .map(|f| f.to_pb())
            .collect();
        Ok(shown)
    }
}

/// The display name of a repository: its last path segment without `.git`.
pub(crate) fn repo_name(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    last.strip_suffix(".git").unwrap_or(last).to_string()
}

#[tonic::async_trait]
impl pb::control_service_server::ControlService for ControlApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let user = authorize_user(&request, Access::Write)?;
        let mut r = request.into_inner();
        let mut github_repo = None;
        if r.repo_url.is_empty() && !r.repo_name.is_empty() {
            let (url, commit) = self.github_branch_head(&r.repo_name, &r.ref_name).await?;
            r.repo_url = url;
            r.commit = commit;
            github_repo = Some(r.repo_name.clone());
        }
        if github_repo.is_none() {
            self.check_name_belongs_to_url(&r.repo_name, &r.repo_url)?;
        }
        let repo = if r.repo_name.is_empty() {
            repo_name(&r.repo_url)
        } else {
            r.repo_name
        };
        let new = NewJob {
            repo,
            repo_url: r.repo_url,
            ref_name: r.ref_name,
            commit: r.commit,
            triggered_by: user,
            step_timeout_secs: r.step_timeout_secs,
            github_repo,
            untrusted: false,
            supersede: true,
            // Shown only; a name longer than any real one is cut.
            committer: Some(r.committer.chars().take(200).collect::<String>())
                .filter(|c| !c.trim().is_empty()),
            ..NewJob::default()
        };
        let job = self.engine.submit(new).await?;
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job.to_pb(self.engine.domain())),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        authorize_user(&request, Access::Read)?;
        let r = request.into_inner();
        let status = match pb::JobStatus::try_from(r.status) {
            Ok(pb::JobStatus::Unspecified) => None,
            Ok(status) => JobStatus::from_pb(status),
            Err(_) => {
                return Err(ControllerError::InvalidArgument(format!(
                    "unknown job status {}: this controller knows {}",
                    r.status,
                    pb::JobStatus::ALL
                        .iter()
                        .map(|s| s.word())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
            }
        };
        let filter = JobFilter {
            repo: (!r.repo.is_empty()).then_some(r.repo),
            status,
            limit: if r.limit == 0 { 50 } else { r.limit as usize },
            ..Default::default()
        };
        let jobs = self
            .engine
            .jobs
            .list(&filter)
            .await
            .map_err(ControllerError::from)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(|j| j.to_pb(self.engine.domain())).collect(),
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        authorize_user(&request, Access::Read)?;
        Ok(Response::new(self.job(request.into_inner().id).await?))
    }

    type StreamLogsStream = ReceiverStream<Result<pb::LogEvent, Status>>;

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        authorize_user(&request, Access::Read)?;
        let r = request.into_inner();
        // Fail fast on unknown jobs, before the stream starts.
        self.engine.job(r.id).await?;
        let (tx, rx) = mpsc::channel(32);
        let after = r
            .after
            .map(|c| crate::store::LogCursor::new(c.attempt, c.seq))
            .unwrap_or(crate::store::LogCursor::START);
        let request = crate::engine::logs::LogRequest {
            id: r.id,
            follow: r.follow,
            step: r.step,
            after,
        };
        tokio::spawn(crate::engine::logs::stream_logs(
            self.engine.clone(),
            request,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let user = authorize_user(&request, Access::Write)?;
        let r = request.into_inner();
        let reason = if r.reason.is_empty() {
            format!("cancelled by {user}")
        } else {
            r.reason
        };
        let job = self.engine.cancel(r.id, reason).await?;
        Ok(Response::new(job.to_pb(self.engine.domain())))
    }

    async fn get_test_report(
        &self,
        request: Request<pb::GetTestReportRequest>,
    ) -> Result<Response<pb::GetTestReportResponse>, Status> {
        authorize_user(&request, Access::Read)?;
        let r = request.into_inner();
        let steps = crate::engine::reports::test_reports(&self.engine, r.id, r.step).await?;
        Ok(Response::new(pb::GetTestReportResponse { steps }))
    }

    type DownloadArtifactStream = ReceiverStream<Result<pb::ArtifactData, Status>>;

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        authorize_user(&request, Access::Read)?;
        let r = request.into_inner();
        let record = self.engine.job(r.id).await?;
        let (name, attempt) = crate::engine::reports::find_artifact(&record, &r.name)?;
        let pieces =
            crate::engine::reports::artifact_stream(self.engine.clone(), record, name, attempt);
        Ok(Response::new(pieces))
    }

    async fn rerun_job(
        &self,
        request: Request<pb::RerunJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let user = authorize_user(&request, Access::Write)?;
        let job = self.engine.rerun(request.into_inner().id, &user).await?;
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job.to_pb(self.engine.domain())),
        }))
    }

    async fn add_schedule(
        &self,
        request: Request<pb::AddScheduleRequest>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        let user = authorize_user(&request, Access::Write)?;
        let r = request.into_inner();
        let target = self.engine.schedule_target(TargetRequest {
            repo_url: r.repo_url,
            repo_name: r.repo_name,
            ref_name: r.ref_name,
            image_name: r.image_name,
            install: r.install,
            test: r.test,
        })?;
        let spec = ScheduleSpec {
            name: r.name,
            cron: r.cron,
            time_zone: r.time_zone,
            target,
            step_timeout_secs: r.step_timeout_secs,
            allow_overlap: r.allow_overlap,
        };
        let schedule = self.engine.add_schedule(spec, &user).await?;
        Ok(Response::new(schedule_info(&schedule, None)))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        authorize_user(&request, Access::Read)?;
        let mut schedules = Vec::new();
        for schedule in self.engine.list_schedules().await? {
            let last = self.engine.last_run_status(&schedule).await?;
            schedules.push(schedule_info(&schedule, last));
        }
        Ok(Response::new(pb::ListSchedulesResponse { schedules }))
    }

    async fn get_schedule(
        &self,
        request: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        authorize_user(&request, Access::Read)?;
        let name = request.into_inner().name;
        let schedule = self.engine.schedule(&name).await?;
        let runs = self
            .engine
            .schedule_runs(&name, SCHEDULE_RUNS_SHOWN)
            .await?;
        let last = self.engine.last_run_status(&schedule).await?;
        Ok(Response::new(pb::GetScheduleResponse {
            schedule: Some(schedule_info(&schedule, last)),
            runs: runs
                .iter()
                .map(|job| job.to_pb(self.engine.domain()))
                .collect(),
        }))
    }

    async fn remove_schedule(
        &self,
        request: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::RemoveScheduleResponse>, Status> {
        authorize_user(&request, Access::Write)?;
        self.engine
            .remove_schedule(&request.into_inner().name)
            .await?;
        Ok(Response::new(pb::RemoveScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        authorize_user(&request, Access::Write)?;
        let r = request.into_inner();
        let schedule = self.engine.pause_schedule(&r.name, r.paused).await?;
        let last = self.engine.last_run_status(&schedule).await?;
        Ok(Response::new(schedule_info(&schedule, last)))
    }

    async fn run_schedule(
        &self,
        request: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let user = authorize_user(&request, Access::Write)?;
        let job = self
            .engine
            .run_schedule_now(&request.into_inner().name, &user)
            .await?;
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job.to_pb(self.engine.domain())),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        authorize_user(&request, Access::Read)?;
        let mut agents: Vec<pb::AgentInfo> = self
            .engine
            .active_jobs()
            .iter()
            .filter_map(|active| {
                let link = active.link.lock().ok()?;
                let mut info = link.as_ref()?.info.clone();
                info.last_seen_unix_ms = active
                    .last_heard_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                Some(info)
            })
            .collect();
        agents.sort_by_key(|a| a.job_id);
        let pool_hosts = self.pool.hosts().map(|h| h.list()).unwrap_or_default();
        Ok(Response::new(pb::ListAgentsResponse { agents, pool_hosts }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        authorize_user(&request, Access::Write)?;
        let name = request.into_inner().name;
        let (token, info) = self.pool.create_token(&name, zeroci::now_unix_ms()).await?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token,
            info: Some(info),
            ca_pem: self.engine.ca.cert_pem().to_string(),
        }))
    }

    async fn list_join_tokens(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        authorize_user(&request, Access::Write)?;
        let tokens = self.pool.tokens().await?;
        Ok(Response::new(pb::ListJoinTokensResponse { tokens }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenInfo>, Status> {
        authorize_user(&request, Access::Write)?;
        let name = request.into_inner().name;
        Ok(Response::new(self.pool.revoke(&name).await?))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repo_names_come_from_the_last_path_segment() {
        assert_eq!(
            super::repo_name("https://github.com/threefoldtech/zeroCI.git"),
            "zeroCI"
        );
        assert_eq!(super::repo_name("/home/me/src/project/"), "project");
        assert_eq!(super::repo_name("git@github.com:org/x.git"), "x");
    }
}
