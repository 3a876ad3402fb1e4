//! Schedules: test suites that run on a timetable, exactly once per tick, never silently missed.
//!
//! A schedule runs either a repository's zeroCI.yaml at the head of a ref (made through the API, or
//! declared by a repository's `run_on.schedule`), or its own install and test commands with no
//! repository (the original's nightly "projects"). Its next fire time is stored with it; firing is a
//! compare-and-set on the stored schedule, so of several controllers sharing a store exactly one
//! starts each run ([`scheduler`]). After an outage one late run stands for every tick that passed
//! ([`timing`]).
//!
//! - [`timing`]: what is due when (pure);
//! - [`scheduler`]: the task that fires them;
//! - [`service`]: adding, removing, pausing, running by hand, following `run_on.schedule`.

pub mod scheduler;
pub mod service;
pub mod timing;

use serde::{Deserialize, Serialize};
use zeroci::cron::CronSchedule;

use crate::jobs::JobId;

/// The longest name a schedule may have (the embedded store names its file by the name's hex).
pub const MAX_NAME_LEN: usize = 100;

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Unique; `owner/repo@branch` for one declared by `run_on.schedule`.
    pub name: String,
    /// The cron expression as given (five fields, or six with seconds first).
    pub cron: String,
    /// The IANA zone the expression is read in.
    pub time_zone: String,
    pub target: Target,
    /// Seconds per step for its runs; 0: the pipeline's or the controller's default.
    pub step_timeout_secs: u64,
    /// Whether a run may start while the previous one is still going; otherwise that tick is skipped.
    pub allow_overlap: bool,
    pub paused: bool,
    pub origin: Origin,
    /// The next tick (Unix milliseconds). Kept while paused; recomputed on resume.
    pub next_at: i64,
    /// A run claimed but whose job is not recorded yet (see [`scheduler`]).
    pub firing: Option<Firing>,
    /// The latest run's job.
    pub last_job: Option<JobId>,
    /// Ticks skipped because the previous run was still going.
    pub skipped: u64,
    /// For `run_on`: when the commit whose file it follows was seen (see
    /// [`service::PushedBranch::seen_at`]).
    #[serde(default)]
    pub declared_at: i64,
    pub created_at: i64,
    /// Advanced by every store write (compare-and-set, as for job records).
    pub revision: u64,
}

/// What a schedule runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A repository's zeroCI.yaml at the head of `ref_name` when the tick comes.
    Repository {
        /// Display name (`owner/name` for GitHub).
        repo: String,
        /// A local path or a URL git clones.
        repo_url: String,
        /// The branch (or any ref); empty: the repository's default branch.
        ref_name: String,
        /// `owner/name` when it is a configured GitHub repository (its head is read from GitHub and
        /// statuses are set).
        github_repo: Option<String>,
    },
    /// Commands with no repository: the workspace starts empty.
    Commands {
        /// The machine image (`prerequisites: {image_name}`), when one is asked for.
        image_name: Option<String>,
        /// Install commands, run as one step that stops at the first failure.
        install: Vec<String>,
        /// Test commands, one step each.
        test: Vec<String>,
    },
}

/// Who made a schedule, which decides what may change it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// The CLI, the gRPC API or the HTTP API, by this user.
    Api { created_by: String },
    /// A repository's `run_on.schedule`: updated by pushes to its branch, removed when the key goes.
    RunOn,
}

/// A run being started: written before its job is created, cleared once the job is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    /// The tick the run is for.
    pub due_at: i64,
    pub late_ms: i64,
    pub missed: u32,
    /// The controller starting it, and since when (another takes over after [`scheduler::FIRING_LEASE_MS`]).
    pub by: String,
    pub since: i64,
}

impl Schedule {
    /// A new schedule from a checked spec; its first run is at the expression's next tick after `now`.
    pub fn new(spec: ScheduleSpec, cron: &CronSchedule, origin: Origin, now: i64) -> Schedule {
        Schedule {
            time_zone: spec.zone().to_string(),
            name: spec.name,
            cron: spec.cron.trim().to_string(),
            target: spec.target,
            step_timeout_secs: spec.step_timeout_secs,
            allow_overlap: spec.allow_overlap,
            paused: false,
            origin,
            next_at: cron.next_after(now).unwrap_or(timing::NEVER),
            firing: None,
            last_job: None,
            skipped: 0,
            declared_at: now,
            created_at: now,
            revision: 0,
        }
    }
}

/// What a user asks for; checked by [`ScheduleSpec::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    pub name: String,
    pub cron: String,
    /// Empty: UTC.
    pub time_zone: String,
    pub target: Target,
    pub step_timeout_secs: u64,
    pub allow_overlap: bool,
}

impl ScheduleSpec {
    /// The parsed expression, or what is wrong with the spec, in words.
    pub fn check(&self) -> Result<CronSchedule, String> {
        check_name(&self.name)?;
        let cron = CronSchedule::parse(&self.cron, self.zone())?;
        match &self.target {
            Target::Repository {
                repo_url, ref_name, ..
            } => {
                if repo_url.trim().is_empty() {
                    return Err(
                        "a schedule needs a repository, or install and test commands".into(),
                    );
                }
                // Both end up as git arguments on the machine.
                if repo_url.starts_with('-') || ref_name.starts_with('-') {
                    return Err("the repository and the ref must not start with '-'".into());
                }
            }
            Target::Commands { .. } => {
                inline_pipeline(&self.target)
                    .map(|yaml| zeroci::pipeline::parse(yaml.as_bytes()).map_err(|e| e.to_string()))
                    .transpose()?;
            }
        }
        Ok(cron)
    }

    /// The zone, UTC when none was given.
    pub fn zone(&self) -> &str {
        if self.time_zone.trim().is_empty() {
            zeroci::cron::DEFAULT_TIME_ZONE
        } else {
            self.time_zone.trim()
        }
    }
}

/// Names are shown in URLs, files and commands: letters, digits and `._-@:/+`, at most
/// [`MAX_NAME_LEN`].
pub fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-@:/+".contains(c);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a schedule's name must have 1 to {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "a schedule's name may hold letters, digits and `._-@:/+`, not {bad:?}"
        ));
    }
    Ok(())
}

/// The zeroCI.yaml a commands schedule runs (JSON, which YAML reads as is and which escapes every
/// command safely); `None` for a repository.
pub fn inline_pipeline(target: &Target) -> Option<String> {
    let Target::Commands {
        image_name,
        install,
        test,
    } = target
    else {
        return None;
    };
    let mut pipeline = serde_json::json!({ "script": test });
    if !install.is_empty() {
        pipeline["install"] = serde_json::json!(install);
    }
    if let Some(image) = image_name {
        pipeline["prerequisites"] = serde_json::json!({ "image_name": image });
    }
    Some(pipeline.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(install: &[&str], test: &[&str]) -> Target {
        Target::Commands {
            image_name: Some("ubuntu:22.04".into()),
            install: install.iter().map(|c| c.to_string()).collect(),
            test: test.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn spec(name: &str, cron: &str, zone: &str, target: Target) -> ScheduleSpec {
        ScheduleSpec {
            name: name.into(),
            cron: cron.into(),
            time_zone: zone.into(),
            target,
            step_timeout_secs: 0,
            allow_overlap: false,
        }
    }

    #[test]
    fn commands_become_a_pipeline_that_parses_whatever_they_hold() {
        let target = commands(
            &["apt-get install -y \"x\"", "echo 'a: b' # not yaml"],
            &["pytest -k 'not slow'", "{ echo [x]; }"],
        );
        let yaml = inline_pipeline(&target).unwrap();
        let pipeline = zeroci::pipeline::parse(yaml.as_bytes()).unwrap();
        let job = &pipeline.jobs[0];
        assert_eq!(job.image_name.as_deref(), Some("ubuntu:22.04"));
        assert_eq!(
            job.install,
            ["apt-get install -y \"x\"", "echo 'a: b' # not yaml"]
        );
        let commands: Vec<&str> = job.steps.iter().map(|s| s.cmd.as_str()).collect();
        assert_eq!(commands, ["pytest -k 'not slow'", "{ echo [x]; }"]);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let good = spec("nightly", "0 2 * * *", "", commands(&[], &["true"]));
        assert!(good.check().is_ok());
        assert_eq!(good.zone(), "UTC");
        for (bad, why) in [
            (
                spec("", "0 2 * * *", "", commands(&[], &["true"])),
                "1 to 100 characters",
            ),
            (
                spec("a b", "0 2 * * *", "", commands(&[], &["true"])),
                "not ' '",
            ),
            (
                spec("n", "0 25 * * *", "", commands(&[], &["true"])),
                "hour field `25`",
            ),
            (
                spec("n", "0 2 * * *", "Mars/Base", commands(&[], &["true"])),
                "unknown time zone",
            ),
            (spec("n", "0 2 * * *", "", commands(&[], &[])), "script"),
            (
                spec(
                    "n",
                    "0 2 * * *",
                    "",
                    Target::Repository {
                        repo: String::new(),
                        repo_url: " ".into(),
                        ref_name: String::new(),
                        github_repo: None,
                    },
                ),
                "needs a repository",
            ),
        ] {
            let error = bad.check().unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }
}
