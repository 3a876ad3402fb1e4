//! The job model: records as stored, statuses, and how a job's final status follows from its steps.
//!
//! A [`JobRecord`] is the controller's view of one job. It is changed only by the engine and the agent
//! sessions, always through the store, and every change to a step comes from applying a journal event
//! (see [`crate::engine::apply`]), so replaying the journal after a crash rebuilds the same record.

use serde::{Deserialize, Serialize};
use zeroci::pb;
use zeroci::resources::Resources;

/// A job's id: a positive number, unique per controller state directory.
pub type JobId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Provisioning,
    Running,
    Success,
    Failure,
    Error,
    Cancelled,
    /// `run_on` excludes the event that started it (found at the checkout): nothing ran.
    Skipped,
}

impl JobStatus {
    pub fn to_pb(self) -> pb::JobStatus {
        match self {
            JobStatus::Queued => pb::JobStatus::Queued,
            JobStatus::Provisioning => pb::JobStatus::Provisioning,
            JobStatus::Running => pb::JobStatus::Running,
            JobStatus::Success => pb::JobStatus::Success,
            JobStatus::Failure => pb::JobStatus::Failure,
            JobStatus::Error => pb::JobStatus::Error,
            JobStatus::Cancelled => pb::JobStatus::Cancelled,
            JobStatus::Skipped => pb::JobStatus::Skipped,
        }
    }

    pub fn from_pb(status: pb::JobStatus) -> Option<JobStatus> {
        Some(match status {
            pb::JobStatus::Unspecified => return None,
            pb::JobStatus::Queued => JobStatus::Queued,
            pb::JobStatus::Provisioning => JobStatus::Provisioning,
            pb::JobStatus::Running => JobStatus::Running,
            pb::JobStatus::Success => JobStatus::Success,
            pb::JobStatus::Failure => JobStatus::Failure,
            pb::JobStatus::Error => JobStatus::Error,
            pb::JobStatus::Cancelled => JobStatus::Cancelled,
            pb::JobStatus::Skipped => JobStatus::Skipped,
        })
    }

    /// The user-facing word (as the control API's enum spells it).
    pub fn word(self) -> String {
        self.to_pb().word()
    }

    /// True for success, failure, error, cancelled and skipped: nothing changes a job after that.
    pub fn is_final(self) -> bool {
        self.to_pb().is_final()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Checkout,
    Install,
    Script,
    /// The `zeroCI.yaml` step that reports an invalid pipeline file.
    Config,
}

impl StepKind {
    pub fn to_pb(self) -> pb::StepKind {
        match self {
            StepKind::Checkout => pb::StepKind::Checkout,
            StepKind::Install => pb::StepKind::Install,
            StepKind::Script => pb::StepKind::Script,
            StepKind::Config => pb::StepKind::Config,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Pending,
    Running,
    Success,
    Failure,
    /// Could not run, timed out, or (for the config step) the pipeline file is invalid.
    Error,
    /// Never ran because an earlier step stopped the job.
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn to_pb(self) -> pb::StepStatus {
        match self {
            StepStatus::Pending => pb::StepStatus::Pending,
            StepStatus::Running => pb::StepStatus::Running,
            StepStatus::Success => pb::StepStatus::Success,
            StepStatus::Failure => pb::StepStatus::Failure,
            StepStatus::Error => pb::StepStatus::Error,
            StepStatus::Skipped => pb::StepStatus::Skipped,
            StepStatus::Cancelled => pb::StepStatus::Cancelled,
        }
    }
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: u32,
    pub name: String,
    pub kind: StepKind,
    pub status: StepStatus,
    pub exit_code: Option<i32>,
    pub started_at: i64,
    pub finished_at: i64,
    /// What runs: the shell script (empty for checkout and config steps).
    pub script: String,
    /// The shell; empty means the agent's default.
    pub shell: String,
    pub timeout_secs: u64,
    /// Why it ended the way it did, when not a plain exit.
    pub message: String,
    /// The pipeline job (0-based) the step belongs to; each runs on a fresh machine.
    #[serde(default)]
    pub stage: u32,
    /// Totals of the step's test report, when it sent one.
    #[serde(default)]
    pub tests: Option<TestTotals>,
}

/// Totals of a step's JUnit report (as the parser counts them).
pub use crate::junit::TestTotals;

/// Test totals as the control API carries them.
pub fn totals_to_pb(t: &TestTotals) -> pb::TestTotals {
    pb::TestTotals {
        total: t.total,
        passed: t.passed,
        failed: t.failed,
        errors: t.errors,
        skipped: t.skipped,
        time_secs: t.time_secs,
    }
}

/// One pipeline job of the job's plan: its own machine, checkout and steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub image_name: Option<String>,
    pub bin_path: Option<String>,
    /// What the pipeline job asked of its machine (`prerequisites: {cpus, memory_mb, pids}`).
    #[serde(default, skip_serializing_if = "Resources::is_unlimited")]
    pub resources: Resources,
    /// What a pool host must offer (`prerequisites.labels`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Index of the stage's checkout step.
    pub checkout_step: u32,
}

/// A file a job kept (`bin_path`); its bytes are in the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub name: String,
    pub size: u64,
    pub stage: u32,
    /// The last step of the stage that kept it.
    pub after_step: u32,
    /// Why it could not be kept; empty when it was.
    pub error: String,
}

impl StepRecord {
    pub fn new(index: u32, name: impl Into<String>, kind: StepKind) -> StepRecord {
        StepRecord {
            index,
            name: name.into(),
            kind,
            status: StepStatus::Pending,
            exit_code: None,
            started_at: 0,
            finished_at: 0,
            script: String::new(),
            shell: String::new(),
            timeout_secs: 0,
            message: String::new(),
            stage: 0,
            tests: None,
        }
    }

    pub fn to_pb(&self) -> pb::StepInfo {
        pb::StepInfo {
            index: self.index,
            name: self.name.clone(),
            kind: self.kind.to_pb() as i32,
            status: self.status.to_pb() as i32,
            exit_code: self.exit_code,
            started_at_unix_ms: self.started_at,
            finished_at_unix_ms: self.finished_at,
            script: self.script.clone(),
            message: self.message.clone(),
            tests: self.tests.as_ref().map(totals_to_pb),
            stage: self.stage,
        }
    }

    pub fn to_run_step(&self) -> pb::Step {
        pb::Step {
            index: self.index,
            name: self.name.clone(),
            kind: self.kind.to_pb() as i32,
            script: self.script.clone(),
            shell: self.shell.clone(),
            timeout_secs: self.timeout_secs,
            notes: Vec::new(),
        }
    }
}

/// The machine a job attempt runs on, recorded before the provisioner creates it so a crash never
/// leaves a machine nobody knows about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// Provisioner kind that made it (`local`, ...).
    pub provisioner: String,
    /// The provisioner's name for it.
    pub name: String,
    pub attempt: u32,
    /// SHA-256 (hex) of the one-time bootstrap token; cleared once the agent has enrolled.
    pub token_sha256: Option<String>,
    /// Provisioner-specific details (process id, directory, VM contract, ...).
    pub details: serde_json::Value,
}

/// Which controller runs a job's current attempt, and until when unless it renews the claim. Written
/// with the claim (a compare-and-set on the record), renewed while the job runs, taken over by another
/// controller only once `expires_at` has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The controller's `controller_id`.
    pub owner: String,
    /// Unix ms.
    pub expires_at: i64,
}

impl Lease {
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at
    }
}

/// What a trigger asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewJob {
    pub repo: String,
    pub repo_url: String,
    pub ref_name: String,
    pub commit: String,
    pub triggered_by: String,
    pub step_timeout_secs: u64,
    /// `owner/name` when the job is for a GitHub repository (commit statuses are set for it).
    pub github_repo: Option<String>,
    /// Code from outside the repository (a fork's pull request): no token, no secrets.
    pub untrusted: bool,
    /// A newer commit from a trigger: with coalescing on, it supersedes queued commits of its branch
    /// (never for reruns).
    pub supersede: bool,
    /// Who made the change, when the trigger knows: a push's head commit author, a pull request's
    /// opener, a local commit's author.
    pub committer: Option<String>,
    /// The job's zeroCI.yaml itself, for a job without a repository (a schedule's own commands):
    /// `repo_url` and `commit` are empty and the machine starts with an empty workspace.
    pub inline_pipeline: Option<String>,
    /// The schedule run this job is, when a schedule started it.
    pub schedule: Option<ScheduleRun>,
    /// The job this one runs again (`zeroci rerun`).
    pub rerun_of: Option<JobId>,
    /// The event `run_on` must allow, when the trigger could not read zeroCI.yaml itself: it is
    /// checked at the checkout instead.
    pub run_on_check: Option<RunOnCheck>,
}

/// An event a job's `run_on` has yet to allow: a GitHub delivery accepted while GitHub's API could not
/// be reached to read zeroCI.yaml at the commit. The checkout reads the same file from the clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOnCheck {
    /// `push` or `pull_request`: the `run_on` key that must allow the job.
    pub event: String,
    /// The branch that key's `branches` must list: the pushed branch, or a pull request's base.
    pub branch: String,
}

/// Which tick of which schedule a job runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRun {
    /// The schedule's name.
    pub name: String,
    /// The tick (Unix milliseconds) the run is for; 0 for a run asked for by hand.
    pub due_at: i64,
    /// How long after its tick the run started, in milliseconds.
    pub late_ms: i64,
    /// Ticks before this one that got no run of their own (no controller was running): this run
    /// stands for them.
    pub missed: u32,
}

impl ScheduleRun {
    /// A run more than this late counts as late (a tick is otherwise met within milliseconds).
    pub const LATE_AFTER_MS: i64 = 1000;

    /// Whether the run did not start on time: its tick passed while no controller could start it.
    pub fn is_late(&self) -> bool {
        self.missed > 0 || self.late_ms > Self::LATE_AFTER_MS
    }
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub status: JobStatus,
    pub repo: String,
    pub repo_url: String,
    pub ref_name: String,
    pub commit: String,
    pub triggered_by: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    /// 0 before the first machine; each new machine increments it (the fencing token).
    pub attempt: u32,
    pub steps: Vec<StepRecord>,
    /// Why the job ended as error or cancelled.
    pub reason: String,
    /// Set by a cancel request; the job ends `cancelled` once the agent has stopped.
    pub cancel_reason: Option<String>,
    /// Per-step timeout requested at submission (0: pipeline or controller default).
    pub step_timeout_secs: u64,
    /// The machine of the current attempt while it exists.
    pub machine: Option<MachineRecord>,
    /// The pipeline's jobs, known after the first checkout; one machine (attempt) each.
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    /// The first attempt of the current run of the job: journal frames of earlier attempts belong to a
    /// run that was abandoned (a crash before its machine existed) and are not shown.
    #[serde(default)]
    pub first_attempt: u32,
    /// Files kept by the job's stages, in order.
    #[serde(default)]
    pub artifacts: Vec<ArtifactRecord>,
    /// `owner/name` when the job is for a GitHub repository (commit statuses are set for it).
    #[serde(default)]
    pub github_repo: Option<String>,
    /// Code from outside the repository (a fork's pull request): it gets no token and no secrets.
    #[serde(default)]
    pub untrusted: bool,
    /// Advanced by every store write; a write that does not name the stored revision is refused
    /// (compare-and-set), so concurrent writers cannot overwrite each other.
    #[serde(default)]
    pub revision: u64,
    /// The claim on a provisioning or running job; none while queued and once final.
    #[serde(default)]
    pub lease: Option<Lease>,
    /// Who made the change, when the trigger knew ([`NewJob::committer`]).
    #[serde(default)]
    pub committer: Option<String>,
    /// See [`NewJob::inline_pipeline`].
    #[serde(default)]
    pub inline_pipeline: Option<String>,
    /// See [`NewJob::schedule`].
    #[serde(default)]
    pub schedule: Option<ScheduleRun>,
    /// See [`NewJob::rerun_of`].
    #[serde(default)]
    pub rerun_of: Option<JobId>,
    /// Why the job waits for its machine (every machine its provisioner may have is in use); none
    /// once it has one.
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// See [`NewJob::run_on_check`].
    #[serde(default)]
    pub run_on_check: Option<RunOnCheck>,
    /// Why `run_on_check` found the event excluded at the checkout: the job ends skipped with it.
    #[serde(default)]
    pub skipped: Option<String>,
}

/// A notifier that could not deliver a change of a job, after its own retries. Kept beside the job
/// record, not in it, so that a notifier never races the engine's compare-and-set writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationFailure {
    /// The notifier's name (`telegram`, `webhook`, `github-status`).
    pub notifier: String,
    /// What went wrong, as the notifier explains it.
    pub error: String,
    /// Unix milliseconds.
    pub at: i64,
}

impl NotificationFailure {
    pub fn to_pb(&self) -> pb::NotificationFailure {
        pb::NotificationFailure {
            notifier: self.notifier.clone(),
            error: self.error.clone(),
            at_unix_ms: self.at,
        }
    }
}

impl JobRecord {
    pub fn new(id: JobId, new: NewJob, now: i64) -> JobRecord {
        JobRecord {
            id,
            status: JobStatus::Queued,
            repo: new.repo,
            repo_url: new.repo_url,
            ref_name: new.ref_name,
            commit: new.commit,
            triggered_by: new.triggered_by,
            created_at: now,
            started_at: 0,
            finished_at: 0,
            attempt: 0,
            steps: Vec::new(),
            reason: String::new(),
            cancel_reason: None,
            step_timeout_secs: new.step_timeout_secs,
            machine: None,
            stages: Vec::new(),
            first_attempt: 0,
            artifacts: Vec::new(),
            github_repo: new.github_repo,
            untrusted: new.untrusted,
            revision: 0,
            lease: None,
            committer: new.committer,
            inline_pipeline: new.inline_pipeline,
            schedule: new.schedule,
            rerun_of: new.rerun_of,
            waiting_for: None,
            run_on_check: new.run_on_check,
            skipped: None,
        }
    }

    /// The pipeline job (stage) the current attempt runs: one attempt per stage.
    pub fn stage(&self) -> u32 {
        self.attempt.saturating_sub(self.first_attempt)
    }

    /// Index of the current stage's checkout step.
    pub fn checkout_step(&self) -> u32 {
        self.stages
            .get(self.stage() as usize)
            .map(|s| s.checkout_step)
            .unwrap_or(0)
    }

    pub fn step_mut(&mut self, index: u32) -> Option<&mut StepRecord> {
        self.steps.iter_mut().find(|s| s.index == index)
    }

    /// The status the job ends with, from its steps and any cancel request.
    pub fn final_status(&self) -> JobStatus {
        if self.cancel_reason.is_some() {
            return JobStatus::Cancelled;
        }
        if self.skipped.is_some() {
            return JobStatus::Skipped;
        }
        let mut status = JobStatus::Success;
        for step in &self.steps {
            match (step.kind, step.status) {
                (_, StepStatus::Error) => return JobStatus::Error,
                (
                    StepKind::Checkout | StepKind::Install | StepKind::Config,
                    StepStatus::Failure,
                ) => {
                    return JobStatus::Error;
                }
                (_, StepStatus::Cancelled) => return JobStatus::Cancelled,
                (StepKind::Script, StepStatus::Failure) => status = JobStatus::Failure,
                _ => {}
            }
        }
        status
    }

    /// True when the job has a next pipeline job to run on a fresh machine: the current one did not stop
    /// the job (install failure, timeout, cancel, failed checkout) and another one is planned.
    pub fn has_next_stage(&self) -> bool {
        let stopped = matches!(self.final_status(), JobStatus::Error | JobStatus::Cancelled);
        !stopped && (self.stage() as usize + 1) < self.stages.len()
    }

    /// Ends the job: steps that never ran become skipped, running ones are closed with `running_as`.
    pub fn finish(
        &mut self,
        status: JobStatus,
        reason: impl Into<String>,
        now: i64,
        running_as: StepStatus,
    ) {
        for step in &mut self.steps {
            match step.status {
                StepStatus::Pending => step.status = StepStatus::Skipped,
                StepStatus::Running => {
                    step.status = running_as;
                    step.finished_at = now;
                }
                _ => {}
            }
        }
        self.status = status;
        self.reason = reason.into();
        self.finished_at = now;
        // Nothing runs any more: no controller holds the job, and it waits for nothing.
        self.lease = None;
        self.waiting_for = None;
    }

    pub fn to_pb(&self, domain: &str) -> pb::Job {
        pb::Job {
            id: self.id,
            status: self.status.to_pb() as i32,
            repo: self.repo.clone(),
            repo_url: self.repo_url.clone(),
            ref_name: self.ref_name.clone(),
            commit: self.commit.clone(),
            url: job_url(domain, self.id),
            created_at_unix_ms: self.created_at,
            started_at_unix_ms: self.started_at,
            finished_at_unix_ms: self.finished_at,
            steps: self.steps.iter().map(StepRecord::to_pb).collect(),
            reason: self.reason.clone(),
            attempt: self.attempt,
            triggered_by: self.triggered_by.clone(),
            committer: self.committer.clone().unwrap_or_default(),
            notification_failures: Vec::new(),
            schedule: self.schedule.as_ref().map(|run| pb::ScheduleRun {
                name: run.name.clone(),
                due_at_unix_ms: run.due_at,
                late_ms: run.late_ms,
                missed: run.missed,
                late: run.is_late(),
            }),
            waiting_for: self.waiting_for.clone().unwrap_or_default(),
            artifacts: self
                .artifacts
                .iter()
                .map(|a| pb::ArtifactInfo {
                    name: a.name.clone(),
                    size: a.size,
                    after_step: a.after_step,
                    error: a.error.clone(),
                })
                .collect(),
        }
    }
}

/// The result page of a job.
pub fn job_url(domain: &str, id: JobId) -> String {
    format!("{}/jobs/{id}", domain.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with(steps: &[(StepKind, StepStatus)]) -> JobRecord {
        let new = NewJob {
            repo: "r".into(),
            repo_url: "/r".into(),
            ref_name: String::new(),
            commit: "abc".into(),
            triggered_by: "t".into(),
            step_timeout_secs: 0,
            github_repo: None,
            untrusted: false,
            supersede: false,
            ..Default::default()
        };
        let mut job = JobRecord::new(1, new, 0);
        for (i, (kind, status)) in steps.iter().enumerate() {
            let mut step = StepRecord::new(i as u32, "s", *kind);
            step.status = *status;
            job.steps.push(step);
        }
        job
    }

    #[test]
    fn final_status_follows_the_step_rules() {
        use StepKind::*;
        use StepStatus::*;
        assert_eq!(
            job_with(&[(Checkout, Success), (Script, Success)]).final_status(),
            JobStatus::Success
        );
        assert_eq!(
            job_with(&[(Checkout, Success), (Script, Failure), (Script, Success)]).final_status(),
            JobStatus::Failure
        );
        assert_eq!(
            job_with(&[(Checkout, Success), (Install, Failure)]).final_status(),
            JobStatus::Error
        );
        assert_eq!(
            job_with(&[(Checkout, Failure)]).final_status(),
            JobStatus::Error
        );
        assert_eq!(
            job_with(&[(Checkout, Success), (Script, Error)]).final_status(),
            JobStatus::Error
        );
        assert_eq!(
            job_with(&[(Config, Error)]).final_status(),
            JobStatus::Error
        );
        let mut cancelled = job_with(&[(Checkout, Success), (Script, Success)]);
        cancelled.cancel_reason = Some("user".into());
        assert_eq!(cancelled.final_status(), JobStatus::Cancelled);
    }

    #[test]
    fn finish_skips_pending_and_closes_running_steps() {
        use StepKind::*;
        use StepStatus::*;
        let mut job = job_with(&[(Checkout, Success), (Script, Running), (Script, Pending)]);
        job.finish(JobStatus::Error, "agent lost", 5, Error);
        assert_eq!(job.steps[1].status, Error);
        assert_eq!(job.steps[1].finished_at, 5);
        assert_eq!(job.steps[2].status, Skipped);
        assert!(job.status.is_final());
    }
}
