//! `zeroci-agent`: runs one job on the machine it was started on and reports it to the controller.
//!
//! [`run`] is the whole life of an agent: read the [`Bootstrap`] file, [enroll](enroll) for a client
//! certificate, then keep a [`session`] with the controller while the [`executor`] runs the job. The two
//! meet in the [`outbox`] (events flow out, acknowledgements prune it) and in [`control::JobControl`]
//! (assignment, steps and cancel flow in).
//!
//! Concurrency and shutdown: the session runs as its own task; the executor is driven by the main task,
//! which also watches for SIGTERM/SIGINT. Everything hangs off one `CancellationToken` tree rooted in
//! [`run`], and every process group the job started is SIGKILLed before [`run`] returns.

pub mod artifacts;
/// The retry pacing, shared with the other binaries.
pub use zeroci::backoff;
pub mod bootstrap;
pub mod control;
pub mod credentials;
pub mod endpoints;
pub mod enroll;
pub mod executor;
pub mod local_checkout;
pub mod mask;
pub mod outbox;
pub mod pool;
#[cfg(target_os = "linux")]
pub mod sandbox;
pub mod session;
pub mod step;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use bootstrap::{Bootstrap, BootstrapError};

use crate::backoff::Backoff;
use crate::control::{DEFAULT_GRACE, JobControl};
use crate::credentials::Credentials;
use crate::enroll::EnrollError;
use crate::executor::Executor;
use crate::mask::Secrets;
use crate::outbox::Outbox;
use crate::session::{Session, SessionConfig, SessionEnd};
use crate::step::{RunOptions, StepContext};

/// How long a shutting-down agent tries to deliver the job's last events, after the step's grace.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished agent waits for its stream to close cleanly.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What `zeroci-agent run` was told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the controller's address, CA and one-time token come from.
    pub bootstrap: BootstrapSource,
    /// Where the job works (`workspace/`, `test-results/`); created if missing.
    pub workdir: PathBuf,
    /// Give up after this long without a working connection.
    pub give_up_after: Duration,
    /// Cap on unacknowledged output held in memory.
    pub outbox_cap_bytes: usize,
    /// Step runner tunables.
    pub run_options: RunOptions,
    /// Set by a pool host whose machines are tasks of it: cancelled when the machine is destroyed,
    /// and handled as a SIGTERM is (the job cancelled, its last events flushed). With it the agent
    /// installs no signal handlers: signals are the host's.
    pub stop: Option<CancellationToken>,
}

impl AgentConfig {
    /// The configuration with default tunables.
    pub fn new(
        bootstrap: BootstrapSource,
        workdir: PathBuf,
        give_up_after: Duration,
    ) -> AgentConfig {
        AgentConfig {
            bootstrap,
            workdir,
            give_up_after,
            outbox_cap_bytes: outbox::DEFAULT_CAP_BYTES,
            run_options: RunOptions::default(),
            stop: None,
        }
    }
}

/// How the agent gets its [`Bootstrap`].
#[derive(Debug, Clone)]
pub enum BootstrapSource {
    /// A file the provisioner wrote (VMs, remote hosts); deleted after a successful enrollment.
    File(PathBuf),
    /// Already read, from a descriptor the provisioner handed over (local machines): nothing on disk.
    Given(Bootstrap),
}

/// Why the agent stopped without finishing its job normally.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error("cannot use work directory {path}: {source}")]
    Workdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the controller refused this agent: {0}")]
    Fenced(String),
    #[error("no connection to the controller for {0:?}; giving up")]
    GaveUp(Duration),
    #[error("interrupted: {0}")]
    Interrupted(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    /// The process exit code: 2 when enrollment was refused (bad token), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Enroll(EnrollError::Refused(_)) => 2,
            _ => 1,
        }
    }
}

/// Runs the agent to the end of its job. `Ok` means the job's `Finished` event was acknowledged or the
/// controller said the job is over (exit code 0).
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let root = CancellationToken::new();
    // Whatever way this function returns, everything hanging off the tree stops.
    let _stop_all = root.clone().drop_guard();
    let shutdown = root.child_token();
    let force = root.child_token();
    let (going_away_tx, going_away) = watch::channel(None);
    let signals = match &config.stop {
        Some(stop) => tokio::spawn(forward_stop(stop.clone(), shutdown.clone(), going_away_tx)),
        None => watch_signals(shutdown.clone(), force.clone(), going_away_tx)
            .map_err(AgentError::Signals)?,
    };
    let _stop_signals = AbortOnDrop(signals);

    let bootstrap = match &config.bootstrap {
        BootstrapSource::File(path) => Bootstrap::read(path)?,
        BootstrapSource::Given(bootstrap) => bootstrap.clone(),
    };
    let workdir_error = |source| AgentError::Workdir {
        path: config.workdir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.workdir).map_err(workdir_error)?;
    let workdir = std::fs::canonicalize(&config.workdir).map_err(workdir_error)?;

    let deadline = Instant::now() + config.give_up_after;
    let mut backoff = Backoff::default();
    let enrolled = tokio::select! {
        enrolled = enroll::enroll(&bootstrap, deadline, &mut backoff) => enrolled?,
        () = shutdown.cancelled() => return Err(AgentError::Interrupted("before enrollment".into())),
    };
    // The token is spent; the file has no further use and should not linger on the machine.
    if let BootstrapSource::File(path) = &config.bootstrap
        && let Err(error) = std::fs::remove_file(path)
    {
        tracing::warn!(path = %path.display(), %error, "cannot delete the bootstrap file");
    }
    let job_id = enrolled.job_id;

    let outbox = Arc::new(Outbox::new(config.outbox_cap_bytes));
    let control = Arc::new(JobControl::new(root.child_token()));
    let _kill_leftovers = KillLeftovers(control.groups().clone());
    let close = root.child_token();
    let credentials = Arc::new(Credentials::new(
        bootstrap.ca_pem.clone(),
        enrolled.cert_pem,
        enrolled.key_pem,
        enrolled.not_after_unix_ms,
    ));
    // Keeps the certificate valid for reconnects however long the job runs; stops with the agent.
    let _renewal = AbortOnDrop(tokio::spawn(
        credentials
            .clone()
            .keep_renewed(crate::endpoints::list(&bootstrap.controller), close.clone()),
    ));
    let session_config = SessionConfig {
        controller: bootstrap.controller.clone(),
        credentials,
        job_id,
        attempt: enrolled.attempt,
        hostname: hostname(),
        give_up_after: config.give_up_after,
    };
    let shutdown_reason = going_away.clone();
    let fetcher = artifacts::Fetcher {
        session: session_config.clone(),
    };
    let session = Session::new(
        session_config,
        outbox.clone(),
        control.clone(),
        close.clone(),
        going_away,
    );
    let mut session = AbortOnDrop(tokio::spawn(session.run()));

    let job = {
        let (outbox, control, options) =
            (outbox.clone(), control.clone(), config.run_options.clone());
        async move {
            let assignment = control.assignment().await;
            let ctx = StepContext {
                outbox: outbox.clone(),
                cancel: control.cancel().clone(),
                groups: control.groups().clone(),
                secrets: Secrets::new(&assignment.secrets),
                options,
            };
            let finished = Executor::new(ctx, control, assignment, workdir)
                .with_fetcher(fetcher)
                .run()
                .await;
            outbox.wait_acked(finished).await;
        }
    };
    tokio::pin!(job);

    let mut flush_deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            joined = &mut session.0 => {
                let end = match joined {
                    Ok(end) => end,
                    Err(error) => break Err(AgentError::Internal(format!("connection task failed: {error}"))),
                };
                break match end {
                    SessionEnd::Done(reason) => {
                        tracing::info!(job_id = %job_id, %reason, "controller says the job is done");
                        Ok(())
                    }
                    SessionEnd::Closed => Ok(()),
                    SessionEnd::Fenced(why) => Err(AgentError::Fenced(why)),
                    SessionEnd::GaveUp => Err(AgentError::GaveUp(config.give_up_after)),
                };
            }
            () = &mut job => {
                tracing::info!(job_id = %job_id, "job reported and acknowledged; closing the connection");
                close.cancel();
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut session.0).await;
                break Ok(());
            }
            () = shutdown.cancelled(), if flush_deadline.is_none() => {
                let reason = shutdown_reason
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| "agent is shutting down".to_string());
                if !control.has_assignment() {
                    break Err(AgentError::Interrupted(reason));
                }
                tracing::info!(job_id = %job_id, %reason, "shutting down: stopping the job and flushing");
                control.cancel().cancel(reason, DEFAULT_GRACE);
                flush_deadline = Some(Instant::now() + DEFAULT_GRACE + FLUSH_TIMEOUT);
            }
            () = force.cancelled() => {
                break Err(AgentError::Interrupted("second signal; not waiting for the flush".into()));
            }
            () = sleep_until(flush_deadline) => {
                break Err(AgentError::Interrupted("could not deliver the job's last events in time".into()));
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Cancels `shutdown` and publishes the `GoingAway` reason on the first SIGTERM or SIGINT; cancels
/// `force` on the second.
fn watch_signals(
    shutdown: CancellationToken,
    force: CancellationToken,
    reason: watch::Sender<Option<String>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    zeroci::signals::watch(shutdown, force, move |name| {
        let _ = reason.send(Some(format!("agent received {name}")));
    })
}

/// A host's stop for its in-process machine, as [`watch_signals`] reports a SIGTERM.
async fn forward_stop(
    stop: CancellationToken,
    shutdown: CancellationToken,
    reason: watch::Sender<Option<String>>,
) {
    stop.cancelled().await;
    let _ = reason.send(Some("machine destroyed by its host".into()));
    shutdown.cancel();
}

/// SIGKILLs every process group the job left when [`run`] ends, also when its future is dropped
/// mid-job (a pool host aborting an in-process machine), where no code after an await would run.
struct KillLeftovers(crate::control::ProcessGroups);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

/// Aborts a task when dropped, so no task outlives [`run`].
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The machine's host name, for the controller's agents list.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe a writable buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
