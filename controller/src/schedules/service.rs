//! What users and pushes do to schedules, as engine operations: every entry point (gRPC, the HTTP API,
//! `run_on.schedule`) goes through these, so the same checks apply everywhere. Every change is a
//! compare-and-set, retried on a fresh read when the scheduler (here or on another controller) wrote
//! the schedule meanwhile.

use tracing::{info, warn};
use zeroci::cron::CronSchedule;
use zeroci::pipeline::ScheduleTrigger;

use super::timing::NEVER;
use super::{Origin, Schedule, ScheduleSpec, Target, check_name, inline_pipeline};
use crate::engine::Engine;
use crate::error::ControllerError;
use crate::jobs::{JobRecord, NewJob, ScheduleRun};
use crate::store::{JobFilter, StoreError};

/// The fields of a schedule request that say what it runs (gRPC and the HTTP API alike).
#[derive(Debug, Clone, Default)]
pub struct TargetRequest {
    pub repo_url: String,
    pub repo_name: String,
    pub ref_name: String,
    pub image_name: String,
    pub install: Vec<String>,
    pub test: Vec<String>,
}

/// A branch whose newest commit was seen, for `run_on.schedule`.
#[derive(Debug, Clone)]
pub struct PushedBranch {
    pub repo: String,
    pub repo_url: String,
    pub ref_name: String,
    pub github_repo: Option<String>,
    /// A fork's code: never touches schedules.
    pub untrusted: bool,
    /// When the commit was seen (its job created, its push delivered): what an older commit declares
    /// never replaces what a newer one did.
    pub seen_at: i64,
}

impl PushedBranch {
    /// A branch of a configured GitHub repository, as a push delivery shows it now.
    pub fn on_github(repo: &str, clone_url: &str, branch: &str, untrusted: bool) -> PushedBranch {
        PushedBranch {
            repo: repo.to_string(),
            repo_url: clone_url.to_string(),
            ref_name: branch.to_string(),
            github_repo: Some(repo.to_string()),
            untrusted,
            seen_at: zeroci::now_unix_ms(),
        }
    }

    /// The branch as a job saw it; none for a rerun, which may be of any old commit.
    pub fn of(job: &JobRecord) -> Option<PushedBranch> {
        job.rerun_of.is_none().then(|| PushedBranch {
            repo: job.repo.clone(),
            repo_url: job.repo_url.clone(),
            ref_name: job.ref_name.clone(),
            github_repo: job.github_repo.clone(),
            untrusted: job.untrusted,
            seen_at: job.created_at,
        })
    }
}

/// Compare-and-set attempts of one change before giving up (each follows a fresh read).
const CHANGE_ATTEMPTS: usize = 10;
/// The longest wait for GitHub's answer about a branch head before a run tests the branch by name:
/// well within the scheduler's firing lease.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The next tick after `now`, or [`NEVER`].
fn next_tick(cron: &CronSchedule, now: i64) -> i64 {
    cron.next_after(now).unwrap_or(NEVER)
}

impl Engine {
    /// Adds a schedule; its first run is at the expression's next tick.
    pub async fn add_schedule(
        &self,
        spec: ScheduleSpec,
        user: &str,
    ) -> Result<Schedule, ControllerError> {
        let cron = spec.check().map_err(ControllerError::InvalidArgument)?;
        let origin = Origin::Api {
            created_by: user.to_string(),
        };
        let mut schedule = Schedule::new(spec, &cron, origin, zeroci::now_unix_ms());
        match self.schedules.put_schedule(&mut schedule).await {
            Ok(()) => {}
            Err(StoreError::ScheduleChanged { name }) => {
                return Err(ControllerError::FailedPrecondition(format!(
                    "a schedule named {name:?} exists already; remove it first"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        info!(schedule = %schedule.name, cron = %schedule.cron, zone = %schedule.time_zone, user, "schedule added");
        self.schedule_changes.notify_waiters();
        Ok(schedule)
    }

    pub async fn schedule(&self, name: &str) -> Result<Schedule, ControllerError> {
        self.schedules
            .get_schedule(name)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("no schedule named {name:?}")))
    }

    pub async fn list_schedules(&self) -> Result<Vec<Schedule>, ControllerError> {
        Ok(self.schedules.schedules().await?)
    }

    /// What a request asks a schedule to run: a repository by URL, a configured GitHub repository by
    /// name (`repo_url` empty), or commands (no repository at all).
    pub fn schedule_target(&self, request: TargetRequest) -> Result<Target, ControllerError> {
        let TargetRequest {
            repo_url,
            repo_name,
            ref_name,
            image_name,
            install,
            test,
        } = request;
        let invalid = |m: &str| Err(ControllerError::InvalidArgument(m.to_string()));
        let commands = !install.is_empty() || !test.is_empty() || !image_name.is_empty();
        if repo_url.is_empty() && repo_name.is_empty() {
            if !ref_name.is_empty() {
                return invalid("a ref needs a repository");
            }
            return Ok(Target::Commands {
                image_name: Some(image_name).filter(|i| !i.is_empty()),
                install,
                test,
            });
        }
        if commands {
            return invalid(
                "a schedule runs a repository's zeroCI.yaml or its own commands, not both",
            );
        }
        if repo_url.is_empty() {
            let Some(api) = &self.github else {
                return invalid(
                    "a repository URL is required: this controller has no [github] section for repository names",
                );
            };
            let configured = self
                .config
                .github
                .as_ref()
                .is_some_and(|g| g.repos.iter().any(|r| r.eq_ignore_ascii_case(&repo_name)));
            if !configured {
                return Err(ControllerError::InvalidArgument(format!(
                    "{repo_name} is not in [github] repos"
                )));
            }
            let repo_url = api
                .clone_url(&repo_name)
                .map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
            return Ok(Target::Repository {
                repo: repo_name.clone(),
                repo_url,
                ref_name,
                github_repo: Some(repo_name),
            });
        }
        self.config
            .check_repo_pairing(&repo_name, &repo_url)
            .map_err(ControllerError::InvalidArgument)?;
        Ok(Target::Repository {
            repo: if repo_name.is_empty() {
                crate::api::control_service::repo_name(&repo_url)
            } else {
                repo_name
            },
            repo_url,
            ref_name,
            github_repo: None,
        })
    }

    /// The schedule's latest runs, newest first.
    pub async fn schedule_runs(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<JobRecord>, ControllerError> {
        Ok(self
            .jobs
            .list(&JobFilter {
                schedule: Some(name.to_string()),
                limit,
                ..JobFilter::default()
            })
            .await?)
    }

    /// Removes a schedule; its runs stay.
    pub async fn remove_schedule(&self, name: &str) -> Result<(), ControllerError> {
        if !self.schedules.delete_schedule(name).await? {
            return Err(ControllerError::NotFound(format!(
                "no schedule named {name:?}"
            )));
        }
        info!(schedule = name, "schedule removed");
        self.schedule_changes.notify_waiters();
        Ok(())
    }

    /// Pauses or resumes. A resumed schedule continues at its next tick from now: the ticks that
    /// passed while it was paused get no run.
    pub async fn pause_schedule(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<Schedule, ControllerError> {
        let now = zeroci::now_unix_ms();
        let schedule = self
            .change_schedule(name, |schedule| {
                if schedule.paused == paused {
                    return Ok(false);
                }
                schedule.paused = paused;
                if !paused {
                    let cron = CronSchedule::parse(&schedule.cron, &schedule.time_zone)
                        .map_err(ControllerError::FailedPrecondition)?;
                    schedule.next_at = next_tick(&cron, now);
                }
                Ok(true)
            })
            .await?;
        info!(schedule = name, paused, "schedule paused or resumed");
        self.schedule_changes.notify_waiters();
        Ok(schedule)
    }

    /// Starts a run now, by hand (the next tick stays as it was). Refused while a run is still going,
    /// unless the schedule allows overlapping runs.
    pub async fn run_schedule_now(
        &self,
        name: &str,
        user: &str,
    ) -> Result<JobRecord, ControllerError> {
        let schedule = self.schedule(name).await?;
        if !schedule.allow_overlap {
            if let Some(running) = self.unfinished_run(&schedule).await? {
                return Err(ControllerError::FailedPrecondition(format!(
                    "schedule {name:?} is still running job {running}; wait for it or cancel it"
                )));
            }
            if schedule.firing.is_some() {
                return Err(ControllerError::FailedPrecondition(format!(
                    "schedule {name:?} is starting a run right now; try again in a moment"
                )));
            }
        }
        let run = ScheduleRun {
            name: name.to_string(),
            due_at: 0,
            late_ms: 0,
            missed: 0,
        };
        let job = self
            .start_run(&schedule, run, format!("{user} (schedule {name}, by hand)"))
            .await?;
        let id = job.id;
        self.change_schedule(name, |schedule| {
            schedule.last_job = Some(id);
            Ok(true)
        })
        .await?;
        Ok(job)
    }

    /// The status of the schedule's latest run, if it had one.
    pub async fn last_run_status(
        &self,
        schedule: &Schedule,
    ) -> Result<Option<crate::jobs::JobStatus>, ControllerError> {
        let Some(id) = schedule.last_job else {
            return Ok(None);
        };
        Ok(self.jobs.get(id).await?.map(|job| job.status))
    }

    /// The schedule's latest run when it has not finished.
    pub(crate) async fn unfinished_run(
        &self,
        schedule: &Schedule,
    ) -> Result<Option<u64>, ControllerError> {
        let Some(id) = schedule.last_job else {
            return Ok(None);
        };
        let running = self
            .jobs
            .get(id)
            .await?
            .is_some_and(|job| !job.status.is_final());
        Ok(running.then_some(id))
    }

    /// Submits the job of one run.
    pub(crate) async fn start_run(
        &self,
        schedule: &Schedule,
        run: ScheduleRun,
        triggered_by: String,
    ) -> Result<JobRecord, ControllerError> {
        let mut new = NewJob {
            triggered_by,
            step_timeout_secs: schedule.step_timeout_secs,
            schedule: Some(run),
            ..NewJob::default()
        };
        match &schedule.target {
            Target::Repository {
                repo,
                repo_url,
                ref_name,
                github_repo,
            } => {
                new.repo = repo.clone();
                new.repo_url = repo_url.clone();
                new.ref_name = ref_name.clone();
                new.github_repo = github_repo.clone();
                new.commit = self.head_to_test(github_repo.as_deref(), ref_name).await;
            }
            Target::Commands { .. } => {
                new.repo = schedule.name.clone();
                new.inline_pipeline = inline_pipeline(&schedule.target);
            }
        }
        self.submit(new).await
    }

    /// The commit a repository run tests: for GitHub, the branch's head read from its API, so that
    /// statuses name a commit; otherwise the ref itself, which the machine resolves when it clones.
    async fn head_to_test(&self, github_repo: Option<&str>, ref_name: &str) -> String {
        let by_name = if ref_name.is_empty() {
            "HEAD".to_string()
        } else {
            ref_name.to_string()
        };
        let (Some(api), Some(repo)) = (&self.github, github_repo) else {
            return by_name;
        };
        if ref_name.is_empty() {
            return by_name;
        }
        match tokio::time::timeout(HEAD_TIMEOUT, api.branch_head(repo, ref_name)).await {
            Ok(Ok(commit)) => commit,
            Ok(Err(error)) => {
                warn!(repo, branch = ref_name, %error, "cannot read the branch head from GitHub; the machine resolves the branch");
                by_name
            }
            Err(_) => {
                warn!(
                    repo,
                    branch = ref_name,
                    "GitHub did not say the branch head in time; the machine resolves the branch"
                );
                by_name
            }
        }
    }

    /// `run_on.schedule` as a branch's newest commit declares it (`declared`): registers or updates
    /// `repo@branch` when it names this branch, removes one registered that way when it does not any
    /// more. Seen at a job's checkout and in GitHub push deliveries (also those `run_on` filters out).
    /// Code from outside the repository (a fork) never touches schedules. Problems are logged: they
    /// never fail a job or a delivery.
    pub(crate) async fn follow_run_on_schedule(
        &self,
        branch: &PushedBranch,
        declared: Option<ScheduleTrigger>,
    ) {
        if branch.untrusted || branch.ref_name.is_empty() || branch.repo_url.is_empty() {
            return;
        }
        let name = format!("{}@{}", branch.repo, branch.ref_name);
        if let Err(why) = check_name(&name) {
            warn!(schedule = %name, %why, "run_on.schedule not followed: the branch makes no valid schedule name");
            return;
        }
        let outcome = match declared.filter(|d| d.branch == branch.ref_name) {
            Some(declared) => self.register_run_on(&name, branch, declared).await,
            None => self.unregister_run_on(&name, branch.seen_at).await,
        };
        if let Err(error) = outcome {
            warn!(schedule = %name, %error, "cannot follow run_on.schedule");
        }
    }

    async fn register_run_on(
        &self,
        name: &str,
        branch: &PushedBranch,
        declared: ScheduleTrigger,
    ) -> Result<(), ControllerError> {
        let cron = CronSchedule::parse(&declared.cron, &declared.timezone)
            .map_err(ControllerError::InvalidArgument)?;
        let target = Target::Repository {
            repo: branch.repo.clone(),
            repo_url: branch.repo_url.clone(),
            ref_name: branch.ref_name.clone(),
            github_repo: branch.github_repo.clone(),
        };
        let now = zeroci::now_unix_ms();
        match self.schedules.get_schedule(name).await? {
            None => {
                let spec = ScheduleSpec {
                    name: name.to_string(),
                    cron: declared.cron,
                    time_zone: declared.timezone,
                    target,
                    step_timeout_secs: 0,
                    allow_overlap: false,
                };
                let mut schedule = Schedule::new(spec, &cron, Origin::RunOn, now);
                schedule.declared_at = branch.seen_at;
                match self.schedules.put_schedule(&mut schedule).await {
                    // Registered meanwhile by a job of the same push on another controller.
                    Ok(()) | Err(StoreError::ScheduleChanged { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                info!(schedule = name, cron = %schedule.cron, "schedule registered from run_on.schedule");
            }
            Some(existing) if existing.origin != Origin::RunOn => {
                warn!(
                    schedule = name,
                    "run_on.schedule names a schedule made through the API; left as it is"
                );
                return Ok(());
            }
            Some(_) => {
                self.change_schedule(name, |schedule| {
                    if branch.seen_at < schedule.declared_at {
                        // An older commit's file, seen after a newer one's (a job that ran late).
                        return Ok(false);
                    }
                    let timing_changed =
                        schedule.cron != declared.cron || schedule.time_zone != declared.timezone;
                    schedule.declared_at = branch.seen_at;
                    if !timing_changed && schedule.target == target {
                        return Ok(true);
                    }
                    schedule.cron = declared.cron.clone();
                    schedule.time_zone = declared.timezone.clone();
                    schedule.target = target.clone();
                    if timing_changed {
                        schedule.next_at = next_tick(&cron, now);
                    }
                    Ok(true)
                })
                .await?;
            }
        }
        self.schedule_changes.notify_waiters();
        Ok(())
    }

    async fn unregister_run_on(&self, name: &str, seen_at: i64) -> Result<(), ControllerError> {
        let Some(existing) = self.schedules.get_schedule(name).await? else {
            return Ok(());
        };
        // Not when a newer commit declared it (an older commit's job that ran late).
        let stale = seen_at < existing.declared_at;
        if existing.origin == Origin::RunOn
            && !stale
            && self.schedules.delete_schedule(name).await?
        {
            info!(
                schedule = name,
                "schedule removed: run_on.schedule is gone from the branch"
            );
            self.schedule_changes.notify_waiters();
        }
        Ok(())
    }

    /// Applies `change` to the stored schedule (it returns whether it changed anything) and writes it
    /// back, again on a fresh read when someone wrote it meanwhile.
    pub(crate) async fn change_schedule(
        &self,
        name: &str,
        mut change: impl FnMut(&mut Schedule) -> Result<bool, ControllerError>,
    ) -> Result<Schedule, ControllerError> {
        for _ in 0..CHANGE_ATTEMPTS {
            let mut schedule = self.schedule(name).await?;
            if !change(&mut schedule)? {
                return Ok(schedule);
            }
            match self.schedules.put_schedule(&mut schedule).await {
                Ok(()) => return Ok(schedule),
                Err(StoreError::ScheduleChanged { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::Unavailable(format!(
            "schedule {name:?} keeps changing; try again"
        )))
    }
}
