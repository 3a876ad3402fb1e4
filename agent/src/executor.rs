//! The executor: runs one job's checkout and steps, reporting everything as outbox events.
//!
//! Order of events: `StepStarted{0}`, checkout output, `StepExited{0}` (after that output is
//! acknowledged), `CheckedOut` (only when the checkout succeeded), then for each step `StepStarted`,
//! output, `StepExited`, and finally `Finished`, which is always the last event.
//!
//! Concurrency: the executor is one future driven by the agent's main task. It learns about the steps
//! and cancellation through [`JobControl`], which the connection feeds; it never talks to the network
//! itself, so a dropped connection only slows it down (through the outbox's backpressure).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use zeroci::pb::{self, Assignment, StepKind, agent_event::Kind};

use crate::artifacts::{self, Fetcher};
use crate::backoff::Backoff;
use crate::control::JobControl;
use crate::local_checkout::{self, LocalSource};
use crate::step::{Outcome, ProcessSpec, StepContext, report_exit, run_process, run_step};

/// How many times a failing `git clone` is tried before the checkout fails.
const CLONE_ATTEMPTS: u32 = 3;
/// Pacing of clone retries (see [`Executor::clone_with_retries`]).
const CLONE_RETRY_BASE: Duration = Duration::from_millis(100);
const CLONE_RETRY_CAP: Duration = Duration::from_secs(2);
/// The local checkout shortcut's deadline when the job sets no checkout timeout.
const SHORTCUT_LIMIT: Duration = Duration::from_secs(600);

/// The pipeline file read from the root of the checkout.
pub const PIPELINE_FILE: &str = "zeroCI.yaml";

/// Runs one job; see the module docs.
#[derive(Debug)]
pub struct Executor {
    ctx: StepContext,
    control: Arc<JobControl>,
    assignment: Arc<Assignment>,
    workdir: PathBuf,
    /// Downloads earlier pipeline jobs' artifacts; `None` where there is no controller (tests).
    fetcher: Option<Fetcher>,
}

impl Executor {
    /// An executor for `assignment`, working in `workdir` (absolute; the clone goes to
    /// `workdir/workspace`).
    pub fn new(
        ctx: StepContext,
        control: Arc<JobControl>,
        assignment: Arc<Assignment>,
        workdir: PathBuf,
    ) -> Executor {
        Executor {
            ctx,
            control,
            assignment,
            workdir,
            fetcher: None,
        }
    }

    /// Lets the executor fetch artifacts of earlier pipeline jobs.
    pub fn with_fetcher(mut self, fetcher: Fetcher) -> Executor {
        self.fetcher = Some(fetcher);
        self
    }

    fn workspace(&self) -> PathBuf {
        self.workdir.join("workspace")
    }

    fn idle_timeout(&self) -> Option<Duration> {
        let secs = self.assignment.idle_timeout_secs;
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    fn checkout_timeout(&self) -> Option<Duration> {
        let secs = self.assignment.checkout_timeout_secs;
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    /// Runs the whole job and returns the sequence number of its `Finished` event.
    pub async fn run(self) -> u64 {
        let job_id = self.assignment.job_id;
        tracing::info!(job_id = %job_id, repo = %self.assignment.repo_url,
            commit = %self.assignment.commit, "starting job");
        if let Some(commit) = self.checkout().await {
            self.run_steps(&commit).await;
        }
        let seq = self.ctx.outbox.push(Kind::Finished(pb::Finished {})).await;
        tracing::info!(job_id = %job_id, seq, "job finished");
        seq
    }

    /// Step 0: clone and check out; returns the full commit id on success.
    async fn checkout(&self) -> Option<String> {
        self.ctx
            .outbox
            .push(Kind::StepStarted(pb::StepStarted {
                step: self.assignment.checkout_step,
            }))
            .await;
        let (outcome, commit) = self.clone_and_checkout().await;
        report_exit(&self.ctx, self.assignment.checkout_step, &outcome).await;
        let commit = commit.filter(|_| outcome.succeeded())?;
        let checked_out = self.read_pipeline_file(commit.clone()).await;
        tracing::info!(commit = %commit, has_pipeline_file = checked_out.has_pipeline_file,
            too_large = checked_out.pipeline_file_too_large, "checked out");
        self.ctx.outbox.push(Kind::CheckedOut(checked_out)).await;
        Some(commit)
    }

    async fn clone_and_checkout(&self) -> (Outcome, Option<String>) {
        if self.assignment.repo_url.is_empty() {
            return self.empty_workspace().await;
        }
        let commit = self.assignment.commit.as_str();
        if commit.is_empty() || commit.starts_with('-') {
            return (
                Outcome::not_started(format!("invalid commit {commit:?}")),
                None,
            );
        }
        let workspace = self.workspace();
        let mut last_seq = 0;
        if self.ctx.options.unisolated {
            last_seq = self
                .checkout_note("zeroci: this job runs unisolated ([provisioner.local] isolation = \"none\"): its steps run as the controller's user and can read the controller's files\n".into())
                .await;
        }
        // The shortcut starts from nothing: leftovers are the clone path's to handle. One deadline
        // covers it; a timeout or a cancel ends the checkout (a clone would only wait again).
        if let Some(source) = LocalSource::find(&self.assignment.repo_url)
            && local_checkout::is_full_sha1(commit)
            && !workspace.exists()
            && !self.ctx.cancel.is_cancelled()
        {
            let limit = self.checkout_timeout().unwrap_or(SHORTCUT_LIMIT);
            let made = tokio::select! {
                made = local_checkout::check_out(&source, commit, &workspace) => made.map_err(Stopped::Failed),
                () = self.ctx.cancel.cancelled() => Err(Stopped::Cancelled(self.ctx.cancel.info().reason)),
                () = tokio::time::sleep(limit) => Err(Stopped::TimedOut(limit)),
            };
            // Whatever the shortcut made is removed unless it is the checkout.
            if made.is_err()
                && let Err(error) = tokio::fs::remove_dir_all(&workspace).await
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, "cannot remove the half-made workspace");
            }
            match made {
                Ok(head) => {
                    let done = Outcome {
                        last_seq,
                        ..Outcome::default()
                    };
                    return (done, Some(head));
                }
                Err(Stopped::Failed(reason)) => {
                    tracing::info!(%reason, "no shortcut for this local repository; cloning it");
                }
                Err(Stopped::Cancelled(reason)) => {
                    let stopped = Outcome {
                        exit_code: -1,
                        cancelled: true,
                        message: reason,
                        ..Outcome::default()
                    };
                    return (failed(stopped, "checkout cancelled", last_seq), None);
                }
                Err(Stopped::TimedOut(limit)) => {
                    let stopped = Outcome {
                        exit_code: crate::step::TIMEOUT_EXIT_CODE,
                        timed_out: true,
                        message: format!("timed out after {}s", limit.as_secs()),
                        ..Outcome::default()
                    };
                    return (failed(stopped, "git checkout failed", last_seq), None);
                }
            }
        }
        let clone_args = [
            "clone",
            "--no-checkout",
            // Quiet: a successful checkout adds nothing to the log; failures still explain themselves.
            "--quiet",
            "--",
            self.assignment.repo_url.as_str(),
            &workspace.to_string_lossy(),
        ]
        .map(String::from);
        let outcome = self.clone_with_retries(&clone_args, &mut last_seq).await;
        if !outcome.succeeded() {
            return (failed(outcome, "git clone failed", last_seq), None);
        }

        // A commit id or tag is usually in the clone; a branch name exists as origin/NAME; anything
        // else (a commit no branch points to any more, a ref outside refs/heads) has to be fetched.
        let mut target = self.resolve(commit).await;
        if target.is_none() {
            target = self.resolve(&format!("origin/{commit}")).await;
        }
        if target.is_none() {
            tracing::info!(commit, "commit not in the clone; fetching it");
            let fetch = ["fetch", "--quiet", "origin", commit].map(String::from);
            let outcome = self.git(&workspace, &fetch, &mut last_seq).await;
            if !outcome.succeeded() {
                return (failed(outcome, "git fetch failed", last_seq), None);
            }
            target = match self.resolve(commit).await {
                Some(sha) => Some(sha),
                None => self.resolve("FETCH_HEAD").await,
            };
        }
        let Some(target) = target else {
            let message = format!("commit {commit} not found in {}", self.assignment.repo_url);
            return (
                Outcome {
                    exit_code: 1,
                    message,
                    last_seq,
                    ..Outcome::default()
                },
                None,
            );
        };
        let checkout = [
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            "--detach",
            &target,
        ]
        .map(String::from);
        let outcome = self.git(&workspace, &checkout, &mut last_seq).await;
        if !outcome.succeeded() {
            return (failed(outcome, "git checkout failed", last_seq), None);
        }
        match self.resolve("HEAD").await {
            Some(head) => (
                Outcome {
                    last_seq,
                    ..Outcome::default()
                },
                Some(head),
            ),
            None => {
                let message = "cannot read the checked-out commit".to_string();
                (
                    Outcome {
                        exit_code: 1,
                        message,
                        last_seq,
                        ..Outcome::default()
                    },
                    None,
                )
            }
        }
    }

    /// A job without a repository (a schedule's own commands): its workspace starts empty and it has
    /// no commit.
    async fn empty_workspace(&self) -> (Outcome, Option<String>) {
        let mut note = String::new();
        if self.ctx.options.unisolated {
            note.push_str("zeroci: this job runs unisolated ([provisioner.local] isolation = \"none\"): its steps run as the controller's user and can read the controller's files\n");
        }
        note.push_str("zeroci: no repository: the commands run in an empty workspace\n");
        let last_seq = self.checkout_note(note).await;
        match tokio::fs::create_dir_all(self.workspace()).await {
            Ok(()) => (
                Outcome {
                    last_seq,
                    ..Outcome::default()
                },
                Some(String::new()),
            ),
            Err(error) => (
                Outcome {
                    exit_code: 1,
                    message: format!("cannot make the workspace: {error}"),
                    last_seq,
                    ..Outcome::default()
                },
                None,
            ),
        }
    }

    /// `git clone`, tried up to [`CLONE_ATTEMPTS`] times. A clone fails for passing reasons: a network
    /// blip, or — for a repository on the same host — a commit landing while git hard-links the
    /// objects directory (git dies on an object file renamed under it). Each failure stays in the
    /// checkout log with a line saying a retry follows; a cancelled job stops retrying.
    async fn clone_with_retries(&self, clone_args: &[String], last_seq: &mut u64) -> Outcome {
        let mut backoff = Backoff::new(CLONE_RETRY_BASE, CLONE_RETRY_CAP);
        let mut attempt = 1;
        loop {
            let outcome = self.git(&self.workdir, clone_args, last_seq).await;
            // A clone that hung until its timeout is not a passing blip: retrying would only hold the
            // machine for another timeout.
            let timed_out = outcome.exit_code == crate::step::TIMEOUT_EXIT_CODE;
            if outcome.succeeded()
                || timed_out
                || attempt == CLONE_ATTEMPTS
                || self.ctx.cancel.is_cancelled()
            {
                return outcome;
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                attempt,
                exit_code = outcome.exit_code,
                ?delay,
                "git clone failed; retrying"
            );
            let note = format!(
                "zeroci: git clone failed (attempt {attempt} of {CLONE_ATTEMPTS}); retrying\n"
            );
            *last_seq = (*last_seq).max(self.checkout_note(note).await);
            if let Err(error) = tokio::fs::remove_dir_all(self.workspace()).await
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, "cannot remove the failed clone");
                return outcome;
            }
            tokio::select! {
                () = backoff.sleep(delay) => {}
                () = self.ctx.cancel.cancelled() => return outcome,
            }
            attempt += 1;
        }
    }

    /// A line of ZeroCI's own in the checkout's log (stderr); returns its sequence number.
    async fn checkout_note(&self, note: String) -> u64 {
        self.ctx
            .outbox
            .push(Kind::Output(pb::Output {
                step: self.assignment.checkout_step,
                stream: pb::OutputStream::Stderr as i32,
                data: note.into(),
            }))
            .await
    }

    /// Runs git with its output streamed as checkout output.
    async fn git(&self, cwd: &Path, args: &[String], last_seq: &mut u64) -> Outcome {
        let spec = ProcessSpec {
            step: self.assignment.checkout_step,
            program: "git".into(),
            args: args.to_vec(),
            cwd: cwd.to_path_buf(),
            env: git_env(&self.assignment.git_http_header),
            timeout: self.checkout_timeout(),
            idle_timeout: self.idle_timeout(),
        };
        let outcome = match run_process(&spec, &self.ctx).await {
            Ok(outcome) => outcome,
            Err(error) => Outcome::not_started(error.to_string()),
        };
        *last_seq = (*last_seq).max(outcome.last_seq);
        outcome
    }

    /// The full commit id `rev` names in the workspace, if any (output captured, not streamed).
    async fn resolve(&self, rev: &str) -> Option<String> {
        let output = tokio::process::Command::new("git")
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{rev}^{{commit}}"),
            ])
            .current_dir(self.workspace())
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .ok()?;
        let sha = String::from_utf8(output.stdout).ok()?.trim().to_string();
        (output.status.success() && !sha.is_empty()).then_some(sha)
    }

    /// The `CheckedOut` event: the pipeline file's bytes, or the fact that it is missing or too large.
    async fn read_pipeline_file(&self, commit: String) -> pb::CheckedOut {
        let mut checked_out = pb::CheckedOut {
            commit,
            ..Default::default()
        };
        let path = self.workspace().join(PIPELINE_FILE);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "cannot open the pipeline file");
                }
                return checked_out;
            }
        };
        let max = zeroci::pipeline::MAX_FILE_BYTES;
        let mut bytes = Vec::new();
        // Read one byte past the cap so an oversized file is recognised without reading all of it.
        let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        match file.take(limit).read_to_end(&mut bytes).await {
            Ok(n) if n > max => {
                checked_out.has_pipeline_file = true;
                checked_out.pipeline_file_too_large = true;
            }
            Ok(_) => {
                checked_out.has_pipeline_file = true;
                checked_out.pipeline_file = bytes.into();
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the pipeline file")
            }
        }
        checked_out
    }

    /// Waits for the steps, then runs them by the rules of their kinds.
    async fn run_steps(&self, commit: &str) {
        let steps = tokio::select! {
            steps = self.control.steps() => steps,
            () = self.ctx.cancel.cancelled() => {
                tracing::info!("cancelled before the steps arrived");
                return;
            }
        };
        let results = self.workdir.join("test-results");
        if let Err(error) = tokio::fs::create_dir_all(&results).await {
            tracing::warn!(path = %results.display(), %error, "cannot create the test results directory");
        }
        let workspace = self.workspace();
        if let Err(message) = self.fetch_artifacts(&steps.artifacts, &workspace).await {
            // Without its inputs the pipeline job cannot run: the first step reports why and nothing runs.
            if let Some(first) = steps.steps.iter().find(|s| s.kind() != StepKind::Checkout) {
                self.ctx
                    .outbox
                    .push(Kind::StepStarted(pb::StepStarted { step: first.index }))
                    .await;
                let outcome = Outcome::not_started(message);
                report_exit(&self.ctx, first.index, &outcome).await;
            }
            return;
        }
        self.run_each(&steps, &workspace, commit).await;
        if !steps.bin_path.is_empty() && !self.ctx.cancel.is_cancelled() {
            artifacts::upload(
                &self.ctx.outbox,
                &self.ctx.secrets,
                &workspace,
                &steps.bin_path,
            )
            .await;
        }
    }

    /// Downloads the artifacts earlier pipeline jobs kept, to the paths they were kept from.
    async fn fetch_artifacts(&self, names: &[String], workspace: &Path) -> Result<(), String> {
        if names.is_empty() {
            return Ok(());
        }
        let Some(fetcher) = &self.fetcher else {
            return Err("this agent cannot fetch artifacts".to_string());
        };
        for name in names {
            let bytes = fetcher.fetch(workspace, name).await.map_err(|e| {
                format!("cannot fetch artifact {name:?} of an earlier pipeline job: {e}")
            })?;
            tracing::info!(name = %name, bytes, "artifact fetched");
        }
        Ok(())
    }

    async fn run_each(&self, steps: &pb::RunSteps, workspace: &Path, commit: &str) {
        for step in &steps.steps {
            if step.kind() == StepKind::Checkout {
                // The agent did the checkout itself already.
                continue;
            }
            if self.ctx.cancel.is_cancelled() {
                break;
            }
            tracing::info!(step = step.index, name = %step.name, "starting step");
            let env = self.step_env(commit, step);
            let test_xml = self.test_xml(step);
            let outcome = run_step(
                step,
                workspace,
                &env,
                self.idle_timeout(),
                Some(&test_xml),
                &self.ctx,
            )
            .await;
            if outcome.cancelled {
                break;
            }
            if outcome.timed_out {
                tracing::info!(step = step.index, "step timed out; no later step runs");
                break;
            }
            if !outcome.succeeded() && step.kind() == StepKind::Install {
                tracing::info!(step = step.index, "install step failed; no later step runs");
                break;
            }
        }
    }

    /// Where a step is asked to write its JUnit report (`ZEROCI_TEST_XML`).
    fn test_xml(&self, step: &pb::Step) -> PathBuf {
        self.workdir
            .join("test-results")
            .join(format!("step-{}.xml", step.index))
    }

    /// The environment a step runs with, on top of the agent's own.
    fn step_env(&self, commit: &str, step: &pb::Step) -> Vec<(String, String)> {
        let a = &self.assignment;
        let mut env: Vec<(String, String)> =
            a.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // Deterministic order; the ZEROCI_* variables below win over same-named assignment variables.
        env.sort();
        let test_xml = self.test_xml(step);
        let fixed = [
            ("CI", "true".to_string()),
            ("ZEROCI", "true".to_string()),
            (
                "ZEROCI_WORKSPACE",
                self.workspace().to_string_lossy().into_owned(),
            ),
            ("ZEROCI_TEST_XML", test_xml.to_string_lossy().into_owned()),
            ("ZEROCI_JOB_ID", a.job_id.to_string()),
            ("ZEROCI_REPO", a.repo_name.clone()),
            ("ZEROCI_BRANCH", a.branch.clone()),
            ("ZEROCI_COMMIT", commit.to_string()),
            ("ZEROCI_STEP", step.name.clone()),
        ];
        env.extend(fixed.into_iter().map(|(k, v)| (k.to_string(), v)));
        env
    }
}

/// The environment of the agent's own git commands: no prompts, and the controller's credential header
/// (through git's environment-only config, so it never lands in .git/config where steps could read it).
fn git_env(http_header: &str) -> Vec<(String, String)> {
    let mut env = vec![("GIT_TERMINAL_PROMPT".to_string(), "0".to_string())];
    if !http_header.is_empty() {
        env.extend([
            ("GIT_CONFIG_COUNT".to_string(), "1".to_string()),
            (
                "GIT_CONFIG_KEY_0".to_string(),
                "http.extraHeader".to_string(),
            ),
            ("GIT_CONFIG_VALUE_0".to_string(), http_header.to_string()),
        ]);
    }
    env
}

/// Why the local checkout shortcut made no checkout.
enum Stopped {
    /// It cannot be used here (its reason); the clone path runs instead.
    Failed(String),
    /// The job was cancelled (the reason given).
    Cancelled(String),
    /// The checkout's deadline passed.
    TimedOut(Duration),
}

/// A failed git command as the checkout's outcome, with a timeout's or cancel's own message after
/// what failed ("git fetch failed: timed out after 10m").
fn failed(outcome: Outcome, what: &str, last_seq: u64) -> Outcome {
    let message = if outcome.message.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", outcome.message)
    };
    Outcome {
        message,
        last_seq,
        ..outcome
    }
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
