//! Watching a local repository's branch heads, for `[repos."local:/path"]` on hosts where git hooks
//! (`zeroci hook install`) cannot be installed.
//!
//! Role: [`watch_refs`] runs as one task per watched repository until its shutdown token is
//! cancelled, and sends a [`RefUpdate`] for every branch whose head differs from the previous scan
//! (new branches included, deleted branches ignored). The consumer decides what to submit; this module
//! only reports.
//!
//! Concurrency: the task owns its state (the last seen head of every branch) and shares nothing. Each
//! scan is one `git for-each-ref` child process with a timeout and `kill_on_drop`, so cancelling the
//! task (or a hung file system) never leaves a git process behind. Sending waits on the channel (the
//! consumer's backpressure) but still gives way to shutdown.
//!
//! Why a short poll instead of inotify: one `git for-each-ref refs/heads/` costs a few milliseconds,
//! so polling every 250 ms reports a push within a fraction of a second with no new dependency, and it
//! is correct for every ref storage git has. Inotify would need a poll fallback anyway: nested branch
//! names (`feature/a/b`) create directories that must be watched before their first ref is written
//! (a race that needs a rescan), `packed-refs` is replaced by rename, the reftable backend (git 2.45+)
//! keeps refs outside `refs/heads` entirely, network file systems and some bind mounts deliver no
//! events, and `fs.inotify.max_user_watches` is finite. Asking git also handles packed refs,
//! symbolic refs and linked work trees the way git itself sees them.
//!
//! What a poll can see: if a branch moves A→B→C between two scans only C is reported. A head that
//! stays in place for at least one poll interval is never missed, because every scan compares all
//! heads with the previous successful scan. Hooks are the way to see every single commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// One branch whose head changed (or appeared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The watched repository, canonicalised (symlinks resolved) when the watch started.
    pub repo_path: PathBuf,
    /// The branch name with `refs/heads/` stripped; slashes inside the name are kept (`feature/a/b`).
    pub branch: String,
    /// The full object name of the new head (40 hex digits, or 64 in a SHA-256 repository).
    pub commit: String,
}

/// How [`watch_refs`] scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Time between two scans (default 250 ms). Values below 10 ms are raised to 10 ms so a
    /// misconfiguration cannot turn the watch into a busy loop of git processes.
    pub poll_interval: Duration,
    /// Whether the first scan reports every existing branch (otherwise it only records them).
    pub report_existing: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            poll_interval: Duration::from_millis(250),
            report_existing: false,
        }
    }
}

/// Why a watch could not start. Once started, a watch never fails: errors are logged and retried.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{} is not a git repository: {reason}", .path.display())]
    NotARepository { path: PathBuf, reason: String },
    /// Git could not be run at all (not installed) or did not answer in time.
    #[error("cannot run git in {}: {reason}", .path.display())]
    Git { path: PathBuf, reason: String },
}

/// The smallest poll interval honoured (see [`WatchOptions::poll_interval`]).
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Retries of a failing repository back off exponentially up to this delay, so a repository that
/// is gone for good costs one git process (and one log line at most) per half minute.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A scan that takes longer is killed and counted as a failure: a hung (network) file system must
/// not stall the watch forever.
const GIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Variables that would make git look at another repository than the one we name with `-C` (they are
/// set, for example, when the controller is started from inside a git hook).
const REPO_LOCATING_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_INDEX_FILE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_PREFIX",
    "GIT_NAMESPACE",
];

/// Watches `repo` (work tree or bare) until `shutdown` is cancelled; sends one [`RefUpdate`] per
/// branch whose head changed (new branches included, deleted branches ignored). The first successful
/// scan only records the current heads (no updates) unless `options.report_existing` is true.
///
/// Returns `Ok(())` on shutdown, or early when the receiver of `tx` is dropped (nobody listens any
/// more). Returns an error only when, at start, `repo` is not a git repository or git cannot be run;
/// later failures (the repository disappears, is locked, or git times out) are logged with the path
/// and retried with exponential backoff. A branch deleted and later re-created counts as new.
pub async fn watch_refs(
    repo: PathBuf,
    tx: mpsc::Sender<RefUpdate>,
    shutdown: CancellationToken,
    options: WatchOptions,
) -> Result<(), WatchError> {
    watch(repo, tx, shutdown, options, None).await
}

/// [`watch_refs`] with a signal sent once the first scan is recorded, so tests can change the
/// repository knowing the change is not part of the baseline (instead of sleeping and hoping).
async fn watch(
    repo: PathBuf,
    tx: mpsc::Sender<RefUpdate>,
    shutdown: CancellationToken,
    options: WatchOptions,
    mut baseline_recorded: Option<oneshot::Sender<()>>,
) -> Result<(), WatchError> {
    let repo = check_repository(&repo).await?;
    let interval = options.poll_interval.max(MIN_POLL_INTERVAL);
    // None until the first successful scan: a repository unreadable at first has no baseline yet.
    let mut heads: Option<BTreeMap<String, String>> = None;
    let mut failures: u32 = 0;
    let mut last_error = String::new();
    loop {
        let scan = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            scan = read_heads(&repo) => scan,
        };
        let delay = match scan {
            Ok(current) => {
                if failures > 0 {
                    info!(repo = %repo.display(), "branch heads readable again");
                    failures = 0;
                    last_error.clear();
                }
                if heads.is_none() {
                    // Operators (and tests) can tell from this line that later commits are noticed.
                    info!(repo = %repo.display(), branches = current.len(), "branch heads recorded");
                }
                let changed = match &heads {
                    Some(previous) => changes(previous, &current),
                    None if options.report_existing => changes(&BTreeMap::new(), &current),
                    None => Vec::new(),
                };
                heads = Some(current);
                for (branch, commit) in changed {
                    let update = RefUpdate {
                        repo_path: repo.clone(),
                        branch,
                        commit,
                    };
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Ok(()),
                        sent = tx.send(update) => if sent.is_err() {
                            debug!(repo = %repo.display(), "ref update receiver dropped; watch ends");
                            return Ok(());
                        },
                    }
                }
                if let Some(signal) = baseline_recorded.take() {
                    let _ = signal.send(());
                }
                interval
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = backoff(interval, failures);
                // Warn when something new goes wrong; repeats of the same error only at debug level
                // so a repository that stays away does not flood the log.
                let message = error.to_string();
                if message != last_error {
                    warn!(repo = %repo.display(), %error, retry_in = ?delay, "cannot read branch heads; retrying");
                    last_error = message;
                } else {
                    debug!(repo = %repo.display(), %error, retry_in = ?delay, failures, "cannot read branch heads; retrying");
                }
                delay
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The delay before retry number `failures` (1-based): the poll interval doubled per failure, capped.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(16);
    interval.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The branches of `current` whose head differs from `previous` (absent there included), in branch
/// name order. Branches only in `previous` (deleted) are ignored.
fn changes(
    previous: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    current
        .iter()
        .filter(|(branch, commit)| previous.get(*branch) != Some(*commit))
        .map(|(branch, commit)| (branch.clone(), commit.clone()))
        .collect()
}

/// Why one git invocation failed.
#[derive(Debug, thiserror::Error)]
enum GitFailure {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("git did not answer within {}s", GIT_TIMEOUT.as_secs())]
    Timeout,
    #[error("git exited with {status}: {stderr}")]
    Failed {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Resolves `repo` to its canonical path and checks that git sees a repository exactly there.
async fn check_repository(repo: &Path) -> Result<PathBuf, WatchError> {
    let canonical =
        tokio::fs::canonicalize(repo)
            .await
            .map_err(|error| WatchError::NotARepository {
                path: repo.to_path_buf(),
                reason: error.to_string(),
            })?;
    match git(&canonical, &["rev-parse", "--git-dir"]).await {
        Ok(_) => Ok(canonical),
        Err(GitFailure::Failed { stderr, .. }) => Err(WatchError::NotARepository {
            path: canonical,
            reason: stderr,
        }),
        Err(other) => Err(WatchError::Git {
            path: canonical,
            reason: other.to_string(),
        }),
    }
}

/// Every branch head of `repo`, by branch name. `for-each-ref` reads loose and packed refs (and
/// reftable) consistently, which reading `refs/heads` by hand would not.
async fn read_heads(repo: &Path) -> Result<BTreeMap<String, String>, GitFailure> {
    let stdout = git(
        repo,
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/heads/",
        ],
    )
    .await?;
    Ok(parse_heads(repo, &stdout))
}

/// Parses `for-each-ref` output. Ref names cannot contain spaces, so the first space separates the
/// object name from the ref name. Lines that are not valid UTF-8 (git allows such ref names) are
/// skipped with a warning: a lossily decoded name would name a branch that does not exist.
fn parse_heads(repo: &Path, stdout: &[u8]) -> BTreeMap<String, String> {
    let mut heads = BTreeMap::new();
    for line in stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(line) = std::str::from_utf8(line) else {
            warn!(repo = %repo.display(), line = %String::from_utf8_lossy(line), "skipping a branch whose name is not UTF-8");
            continue;
        };
        let parsed = line.split_once(' ').and_then(|(commit, refname)| {
            let branch = refname.strip_prefix("refs/heads/")?;
            let is_object_name =
                !commit.is_empty() && commit.bytes().all(|b| b.is_ascii_hexdigit());
            (is_object_name && !branch.is_empty()).then_some((branch, commit))
        });
        match parsed {
            Some((branch, commit)) => {
                heads.insert(branch.to_string(), commit.to_string());
            }
            None => debug!(repo = %repo.display(), line, "ignoring unexpected for-each-ref line"),
        }
    }
    heads
}

/// Runs `git -C repo args…` and returns its stdout on success.
async fn git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, GitFailure> {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(repo)
        .args(args)
        // Never wait for a credential prompt (a background task has nobody to answer it).
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        // Dropping the future (timeout, shutdown) must not leave the child running.
        .kill_on_drop(true);
    for var in REPO_LOCATING_ENV {
        command.env_remove(var);
    }
    // Stop git's repository discovery at `repo` itself: a plain directory inside some other work
    // tree is not the repository that was configured, and if the watched repository's `.git` is
    // removed later, git must fail rather than report the branches of an enclosing repository.
    if let Some(parent) = repo.parent() {
        command.env("GIT_CEILING_DIRECTORIES", parent);
    }
    let output = tokio::time::timeout(GIT_TIMEOUT, command.output())
        .await
        .map_err(|_| GitFailure::Timeout)?
        .map_err(GitFailure::Spawn)?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(GitFailure::Failed {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// The author of `commit`, for messages; none when git cannot tell (it is only shown).
async fn commit_author(repo: &Path, commit: &str) -> Option<String> {
    let stdout = git(repo, &["show", "-s", "--format=%an", commit, "--"])
        .await
        .ok()?;
    let name = String::from_utf8_lossy(&stdout).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// For every `[repos."local:/path"]`: watch the repository's branch heads and queue a job for each new
/// head (for hosts where `zeroci hook install` cannot be used).
pub fn watch_configured(
    engine: &std::sync::Arc<crate::engine::Engine>,
    config: &crate::config::Config,
    stop: &tokio_util::sync::CancellationToken,
) {
    for key in config.repos.keys() {
        let Some(path) = key.strip_prefix("local:") else {
            continue;
        };
        let path = std::path::PathBuf::from(path);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RefUpdate>(64);
        let (watch_path, watch_stop) = (path.clone(), stop.clone());
        tokio::spawn(async move {
            let options = WatchOptions::default();
            if let Err(e) = watch_refs(watch_path.clone(), tx, watch_stop, options).await {
                tracing::warn!(path = %watch_path.display(), error = %e, "cannot watch local repository");
            }
        });
        let engine = engine.clone();
        tokio::spawn(async move {
            while let Some(update) = rx.recv().await {
                let repo = update
                    .repo_path
                    .file_name()
                    .map(|n| n.to_string_lossy().trim_end_matches(".git").to_string());
                let committer = commit_author(&update.repo_path, &update.commit).await;
                let new = crate::jobs::NewJob {
                    repo: repo.unwrap_or_else(|| update.repo_path.display().to_string()),
                    repo_url: update.repo_path.display().to_string(),
                    ref_name: update.branch,
                    commit: update.commit,
                    triggered_by: "ref watcher".into(),
                    step_timeout_secs: 0,
                    github_repo: None,
                    untrusted: false,
                    supersede: true,
                    committer,
                    ..Default::default()
                };
                if let Err(e) = engine.submit(new).await {
                    tracing::warn!(error = %e, "cannot queue a job for a watched repository");
                }
            }
        });
        tracing::info!(path = %path.display(), "watching local repository");
    }
}

#[cfg(test)]
#[path = "local_refs_tests.rs"]
mod tests;
