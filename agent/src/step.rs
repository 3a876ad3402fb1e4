//! Running one command of a job and streaming its output into the outbox.
//!
//! [`run_process`] spawns a command in its own process group, reads its stdout and stderr concurrently
//! as raw bytes (one outbox event per read, so the outbox's backpressure reaches the command through its
//! pipes), and enforces the wall-clock timeout, the idle timeout and cancellation by signalling the whole
//! group: SIGTERM, a grace period, then SIGKILL. [`run_step`] wraps it with the step protocol:
//! `StepStarted` before spawning and `StepExited` only after all of the step's output is acknowledged.
//!
//! Concurrency: each pipe is read by its own task (in a `JoinSet`, so they are aborted if the step is
//! dropped); the calling task supervises the process. The readers outlive the process by at most the
//! drain limit, because a background process may keep the pipes open forever.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use zeroci::pb::{self, OutputStream, StepKind, agent_event::Kind};
use zeroci::process::{SIGKILL, SIGTERM};

use crate::control::{CancelInfo, JobCancel, ProcessGroups, group_running};
use crate::mask::{Masker, Secrets};
use crate::outbox::Outbox;

/// Largest single read from a pipe, hence largest `Output` event.
pub const READ_CHUNK: usize = 64 * 1024;
/// How long a read waits for more bytes to fill its chunk once some have arrived.
const COALESCE_WAIT: Duration = Duration::from_micros(500);
/// Exit code reported for a step stopped by a timeout (as `timeout(1)` does).
pub const TIMEOUT_EXIT_CODE: i32 = 124;
/// Most extra drain time granted for waiting on the outbox after the command exited.
const MAX_DRAIN_EXTENSION: Duration = Duration::from_secs(60);
/// How often a stopping group is checked for remaining members.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// Tunables of the step runner (shortened by tests).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Grace between SIGTERM and SIGKILL when a step times out.
    pub kill_grace: Duration,
    /// How long the pipes are still read after the command exited.
    pub drain_limit: Duration,
    /// A fixed report path read after each script step when the step's own `ZEROCI_TEST_XML` is absent.
    pub shared_test_xml: Option<std::path::PathBuf>,
    /// Run each command in a network namespace of its own with only loopback (`network = "none"`).
    pub isolate_network: bool,
    /// The machine does not isolate the job: the checkout log says so.
    pub unisolated: bool,
    /// Commands start from an empty environment plus their own, as under a per-job agent process
    /// started with none: an in-process machine's host environment (its join token) stays out.
    pub clean_environment: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            kill_grace: Duration::from_secs(5),
            drain_limit: Duration::from_secs(2),
            shared_test_xml: None,
            isolate_network: false,
            unisolated: false,
            clean_environment: false,
        }
    }
}

/// What every command of a job shares.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub outbox: Arc<Outbox>,
    pub cancel: JobCancel,
    pub groups: ProcessGroups,
    pub secrets: Secrets,
    pub options: RunOptions,
}

/// One command to run and stream as output of step `step`.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub step: u32,
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Set on top of the agent's own environment.
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
}

/// How a command (or step) ended, in the terms of `StepExited`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub timed_out: bool,
    pub cancelled: bool,
    pub message: String,
    /// Sequence number of the last output event of the command (0 when it printed nothing).
    pub last_seq: u64,
}

impl Outcome {
    /// A command that never started.
    pub fn not_started(message: impl Into<String>) -> Outcome {
        Outcome {
            exit_code: -1,
            message: message.into(),
            ..Outcome::default()
        }
    }

    pub fn succeeded(&self) -> bool {
        self.exit_code == 0 && !self.timed_out && !self.cancelled
    }
}

/// Errors from starting a command.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// Runs `step` as `SHELL [-e] -c SCRIPT`: pushes `StepStarted`, streams its output, waits until that
/// output is acknowledged, pushes `StepExited`, and returns how it ended.
pub async fn run_step(
    step: &pb::Step,
    cwd: &Path,
    env: &[(String, String)],
    idle_timeout: Option<Duration>,
    test_xml: Option<&Path>,
    ctx: &StepContext,
) -> Outcome {
    ctx.outbox
        .push(Kind::StepStarted(pb::StepStarted { step: step.index }))
        .await;
    for note in &step.notes {
        ctx.outbox
            .push(Kind::Output(pb::Output {
                step: step.index,
                stream: pb::OutputStream::Stderr as i32,
                data: format!("zeroci: {note}\n").into(),
            }))
            .await;
    }
    let shell = if step.shell.is_empty() {
        "/bin/sh"
    } else {
        step.shell.as_str()
    };
    let mut args = Vec::new();
    if step.kind() == StepKind::Install {
        // Install steps stop at the first failing command.
        args.push("-e".to_string());
    }
    args.extend(["-c".to_string(), step.script.clone()]);
    let spec = ProcessSpec {
        step: step.index,
        program: shell.to_string(),
        args,
        cwd: cwd.to_path_buf(),
        env: env.to_vec(),
        timeout: (step.timeout_secs > 0).then(|| Duration::from_secs(step.timeout_secs)),
        idle_timeout,
    };
    let mut outcome = match run_process(&spec, ctx).await {
        Ok(outcome) => outcome,
        Err(error) => Outcome::not_started(error.to_string()),
    };
    if step.kind() == StepKind::Script {
        let mut sent = match test_xml {
            Some(path) => {
                crate::artifacts::send_test_report(&ctx.outbox, &ctx.secrets, step.index, path)
                    .await
            }
            None => None,
        };
        if sent.is_none()
            && let Some(shared) = &ctx.options.shared_test_xml
        {
            sent =
                crate::artifacts::send_test_report(&ctx.outbox, &ctx.secrets, step.index, shared)
                    .await;
            if sent.is_some() {
                // Consumed: a later step that writes no report must not resend this one.
                let _ = tokio::fs::remove_file(shared).await;
            }
        }
        if let Some(seq) = sent {
            // The report belongs to the step: its exit waits for the report's acknowledgement too.
            outcome.last_seq = outcome.last_seq.max(seq);
        }
    }
    report_exit(ctx, step.index, &outcome).await;
    outcome
}

/// Pushes `StepExited` for `outcome`, after all of its output was acknowledged.
pub async fn report_exit(ctx: &StepContext, step: u32, outcome: &Outcome) {
    ctx.outbox.wait_acked(outcome.last_seq).await;
    tracing::info!(step, exit_code = outcome.exit_code, timed_out = outcome.timed_out,
        cancelled = outcome.cancelled, message = %outcome.message, "step exited");
    let exited = pb::StepExited {
        step,
        exit_code: outcome.exit_code,
        timed_out: outcome.timed_out,
        cancelled: outcome.cancelled,
        // A message can quote a command or a path, and those can hold a secret.
        message: ctx.secrets.mask_text(&outcome.message),
    };
    ctx.outbox.push(Kind::StepExited(exited)).await;
}

/// Why a command was stopped before it exited on its own.
enum Stop {
    TimedOut(String),
    Cancelled(CancelInfo),
}

/// Runs one command to its end (see the module docs); errors only when it cannot be started.
pub async fn run_process(spec: &ProcessSpec, ctx: &StepContext) -> Result<Outcome, StepError> {
    let spawn_error = |source| StepError::Spawn {
        program: spec.program.clone(),
        source,
    };
    let mut command = Command::new(&spec.program);
    if ctx.options.clean_environment {
        command.env_clear();
    }
    if ctx.options.isolate_network {
        // SAFETY: the hook makes raw syscalls only (unshare, socket, ioctl, close): no allocation.
        unsafe { command.pre_exec(zeroci::process::enter_private_network) };
    }
    let mut child = command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so signals reach everything the command starts, and never the agent.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    let pgid = child
        .id()
        .ok_or_else(|| spawn_error(std::io::Error::other("process has no id")))?;
    ctx.groups.add(pgid);
    tracing::debug!(step = spec.step, pgid, program = %spec.program, "process started");

    let activity = Arc::new(Activity::new());
    let (exited_tx, exited_rx) = watch::channel(None);
    let mut readers = JoinSet::new();
    let pipes = [
        (
            child.stdout.take().map(|p| Box::new(p) as BoxedPipe),
            OutputStream::Stdout,
        ),
        (
            child.stderr.take().map(|p| Box::new(p) as BoxedPipe),
            OutputStream::Stderr,
        ),
    ];
    for (pipe, stream) in pipes {
        let Some(pipe) = pipe else { continue };
        let reader = PipeReader {
            step: spec.step,
            stream,
            outbox: ctx.outbox.clone(),
            masker: Masker::new(ctx.secrets.clone()),
            activity: activity.clone(),
            exited: exited_rx.clone(),
            drain_limit: ctx.options.drain_limit,
        };
        readers.spawn(reader.run(pipe));
    }

    let (status, stop) = supervise(&mut child, pgid, spec, &activity, ctx).await;
    let _ = exited_tx.send(Some(Instant::now()));
    let mut last_seq = 0;
    while let Some(joined) = readers.join_next().await {
        match joined {
            Ok(seq) => last_seq = last_seq.max(seq),
            Err(error) => tracing::warn!(step = spec.step, %error, "output reader failed"),
        }
    }
    ctx.groups.forget_if_gone(pgid);

    let (exit_code, message) = match &status {
        Ok(status) => (exit_code(status), String::new()),
        Err(error) => (-1, format!("cannot wait for the process: {error}")),
    };
    let outcome = match stop {
        None => Outcome {
            exit_code,
            message,
            last_seq,
            ..Outcome::default()
        },
        Some(Stop::TimedOut(message)) => Outcome {
            exit_code: TIMEOUT_EXIT_CODE,
            timed_out: true,
            message,
            last_seq,
            ..Outcome::default()
        },
        Some(Stop::Cancelled(info)) => Outcome {
            exit_code,
            cancelled: true,
            message: info.reason,
            last_seq,
            ..Outcome::default()
        },
    };
    Ok(outcome)
}

/// The exit code, or 128+N for death by signal N.
fn exit_code(status: &ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Waits for the command to exit, or stops it on timeout, idle timeout or cancel.
async fn supervise(
    child: &mut Child,
    pgid: u32,
    spec: &ProcessSpec,
    activity: &Activity,
    ctx: &StepContext,
) -> (std::io::Result<ExitStatus>, Option<Stop>) {
    let wall = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let stop = tokio::select! {
        biased;
        status = child.wait() => return (status, None),
        () = ctx.cancel.cancelled() => Stop::Cancelled(ctx.cancel.info()),
        () = wall => Stop::TimedOut(format!("timed out after {}", human(spec.timeout.unwrap_or_default()))),
        () = idle_watch(activity, spec.idle_timeout) => Stop::TimedOut(format!(
            "no output for {} (idle timeout)",
            human(spec.idle_timeout.unwrap_or_default())
        )),
    };
    let grace = match &stop {
        Stop::TimedOut(message) => {
            tracing::warn!(step = spec.step, pgid, %message, "stopping step");
            ctx.options.kill_grace
        }
        Stop::Cancelled(info) => {
            tracing::info!(step = spec.step, pgid, reason = %info.reason, "cancelling step");
            info.grace
        }
    };
    (terminate(child, pgid, grace).await, Some(stop))
}

/// SIGTERM to the group, up to `grace` for it to go away, then SIGKILL to whatever is left.
async fn terminate(child: &mut Child, pgid: u32, grace: Duration) -> std::io::Result<ExitStatus> {
    signal(pgid, SIGTERM);
    let deadline = Instant::now() + grace;
    let status = tokio::time::timeout_at(deadline, child.wait()).await.ok();
    // The shell may be gone while processes it started are still cleaning up: same deadline for them.
    while group_running(pgid) && Instant::now() < deadline {
        tokio::time::sleep(GROUP_POLL).await;
    }
    if group_running(pgid) {
        tracing::warn!(pgid, "process group outlived its grace period; killing it");
        signal(pgid, SIGKILL);
    }
    match status {
        Some(status) => status,
        None => child.wait().await,
    }
}

fn signal(pgid: u32, signal: i32) {
    if let Err(error) = zeroci::process::signal_group(pgid, signal) {
        tracing::warn!(pgid, signal, %error, "cannot signal process group");
    }
}

/// When the command last showed signs of life, for the idle timeout.
struct Activity {
    last: Mutex<Instant>,
    /// Readers currently waiting for room in the outbox. Output that is stuck behind a slow controller
    /// is not the command being idle.
    pushing: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            last: Mutex::new(Instant::now()),
            pushing: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Resolves when the command has been silent for `idle` (never when `idle` is `None`).
async fn idle_watch(activity: &Activity, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let deadline = activity.last() + idle;
        if Instant::now() < deadline {
            tokio::time::sleep_until(deadline).await;
        } else if activity.pushing.load(Ordering::SeqCst) > 0 {
            activity.touch();
        } else {
            return;
        }
    }
}

type BoxedPipe = Box<dyn AsyncRead + Send + Unpin>;

/// Reads one pipe of a command into `Output` events.
struct PipeReader {
    step: u32,
    stream: OutputStream,
    outbox: Arc<Outbox>,
    masker: Masker,
    activity: Arc<Activity>,
    /// Set to the moment the command exited.
    exited: watch::Receiver<Option<Instant>>,
    drain_limit: Duration,
}

impl PipeReader {
    /// Reads until EOF, or until the drain limit after the command exited; returns the last event's seq.
    async fn run(mut self, mut pipe: BoxedPipe) -> u64 {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut last_seq = 0;
        // Time spent waiting for outbox room after the exit does not count against the drain limit:
        // bytes already in the pipe must not be dropped just because the controller is slow.
        let mut blocked = Duration::ZERO;
        loop {
            // The deadline is checked first: a background process that writes without pause must not
            // keep the reader (and so the step) going forever.
            let limit = self.drain_limit + blocked.min(MAX_DRAIN_EXTENSION);
            let n = tokio::select! {
                biased;
                () = drain_expired(&mut self.exited, limit) => {
                    tracing::info!(step = self.step, stream = ?self.stream,
                        "output pipe still open after the step exited; no longer reading it");
                    break;
                }
                read = pipe.read(&mut buf) => match read {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(error) => {
                        tracing::warn!(step = self.step, %error, "cannot read step output");
                        break;
                    }
                },
            };
            // Take whatever else is already in the pipe (without waiting): a fast command then costs
            // one event per 64 KiB instead of one per small write.
            let mut filled = n;
            let mut eof = false;
            while filled < buf.len() {
                // A writer in full flow refills the pipe within microseconds; waiting up to
                // COALESCE_WAIT for it batches output without a delay anyone could see.
                let more = tokio::time::timeout(COALESCE_WAIT, pipe.read(&mut buf[filled..])).await;
                match more {
                    Ok(Ok(0)) => {
                        eof = true;
                        break;
                    }
                    Ok(Ok(more)) => filled += more,
                    // Nothing more yet, or an error the next read reports.
                    _ => break,
                }
            }
            let n = filled;
            self.activity.touch();
            if let Some(data) = self.masker.feed(Bytes::copy_from_slice(&buf[..n])) {
                let started = Instant::now();
                last_seq = self.push(data).await;
                if let Some(exited_at) = *self.exited.borrow() {
                    blocked += Instant::now().saturating_duration_since(started.max(exited_at));
                }
            }
            if eof {
                break;
            }
        }
        if let Some(data) = self.masker.finish() {
            last_seq = self.push(data).await;
        }
        last_seq
    }

    async fn push(&self, data: Bytes) -> u64 {
        self.activity.pushing.fetch_add(1, Ordering::SeqCst);
        let output = pb::Output {
            step: self.step,
            stream: self.stream as i32,
            data,
        };
        let seq = self.outbox.push(Kind::Output(output)).await;
        self.activity.pushing.fetch_sub(1, Ordering::SeqCst);
        self.activity.touch();
        seq
    }
}

/// Resolves `limit` after the command exited (never before it exited).
async fn drain_expired(exited: &mut watch::Receiver<Option<Instant>>, limit: Duration) {
    let at = match exited.wait_for(Option::is_some).await {
        Ok(at) => *at,
        Err(_) => None,
    };
    match at {
        Some(at) => tokio::time::sleep_until(at + limit).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "step_tests.rs"]
mod tests;
