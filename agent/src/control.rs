//! The shared handles between the connection (which hears the controller) and the executor (which runs
//! the job): the assignment and the steps as they arrive, the job's cancellation, and the process groups
//! the job started.
//!
//! Concurrency: everything here is cheap to clone or sits behind an `Arc`; values that arrive once use
//! `watch` channels so a late reader still sees them; the cancellation is a `CancellationToken` from the
//! agent's token tree, with its reason stored beside it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zeroci::pb::{Assignment, RunSteps};

/// Default seconds between SIGTERM and SIGKILL when a step is stopped.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Why and how the job is being cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelInfo {
    /// Recorded as the cancelled step's message.
    pub reason: String,
    /// Time between SIGTERM and SIGKILL of the running step.
    pub grace: Duration,
}

/// Cancellation of the job. The first reason wins; later calls only cancel again (a no-op).
#[derive(Debug, Clone)]
pub struct JobCancel {
    token: CancellationToken,
    info: Arc<Mutex<Option<CancelInfo>>>,
}

impl JobCancel {
    /// A cancellation hanging off `token` (cancelling a parent also cancels the job).
    pub fn new(token: CancellationToken) -> JobCancel {
        JobCancel {
            token,
            info: Arc::default(),
        }
    }

    /// Cancels the job with `reason`; the running step gets SIGTERM, then SIGKILL after `grace`.
    pub fn cancel(&self, reason: impl Into<String>, grace: Duration) {
        {
            let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
            if info.is_none() {
                *info = Some(CancelInfo {
                    reason: reason.into(),
                    grace,
                });
            }
        }
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the job is cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// The reason and grace period; defaults when the token was cancelled from above without a reason.
    pub fn info(&self) -> CancelInfo {
        self.info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| CancelInfo {
                reason: "cancelled".into(),
                grace: DEFAULT_GRACE,
            })
    }
}

/// The process groups the job started, so they can all be killed when the agent leaves (a step's
/// background processes may outlive the step; they must not outlive the job).
#[derive(Debug, Clone, Default)]
pub struct ProcessGroups(Arc<Mutex<Vec<u32>>>);

impl ProcessGroups {
    pub fn add(&self, pgid: u32) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(pgid);
    }

    /// Forgets a group whose members are all gone (so its id, if reused later, is never signalled).
    pub fn forget_if_gone(&self, pgid: u32) {
        if !group_running(pgid) {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|g| *g != pgid);
        }
    }

    /// The groups still tracked.
    pub fn list(&self) -> Vec<u32> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGKILLs every tracked group that still has a member.
    pub fn kill_all(&self) {
        let groups = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for pgid in groups {
            if zeroci::process::group_alive(pgid) {
                tracing::info!(pgid, "killing leftover process group");
                if let Err(error) = zeroci::process::signal_group(pgid, zeroci::process::SIGKILL) {
                    tracing::warn!(pgid, %error, "cannot kill process group");
                }
            }
        }
    }
}

/// True when the process group has a member that is not a zombie. `kill(-pgid, 0)` also counts zombies,
/// which linger when nobody reaps orphans (for example when the agent is PID 1 in a container), so on
/// Linux the process table is read instead; elsewhere it falls back to the signal check.
pub fn group_running(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return zeroci::process::group_alive(pgid);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Format: "pid (comm) state ppid pgrp ...", where comm may itself contain spaces and ')'.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
        if pgrp == Some(pgid) && !matches!(state, Some("Z" | "X")) {
            return true;
        }
    }
    false
}

/// What the connection hands the executor: the assignment, then the steps, then possibly a cancel.
#[derive(Debug)]
pub struct JobControl {
    assignment: watch::Sender<Option<Arc<Assignment>>>,
    steps: watch::Sender<Option<Arc<RunSteps>>>,
    cancel: JobCancel,
    groups: ProcessGroups,
}

impl JobControl {
    /// Job control whose cancellation hangs off `token`.
    pub fn new(token: CancellationToken) -> JobControl {
        JobControl {
            assignment: watch::Sender::new(None),
            steps: watch::Sender::new(None),
            cancel: JobCancel::new(token),
            groups: ProcessGroups::default(),
        }
    }

    /// Stores the assignment; returns false (and ignores it) when one is already held.
    pub fn assign(&self, assignment: Assignment) -> bool {
        self.assignment.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(Arc::new(assignment));
            true
        })
    }

    pub fn has_assignment(&self) -> bool {
        self.assignment.borrow().is_some()
    }

    /// Waits for the assignment.
    pub async fn assignment(&self) -> Arc<Assignment> {
        let mut rx = self.assignment.subscribe();
        loop {
            if let Some(a) = rx.borrow_and_update().clone() {
                return a;
            }
            // The sender is `self.assignment`, alive as long as we are borrowed.
            let _ = rx.changed().await;
        }
    }

    /// Delivers the steps; returns false (and ignores them) when steps were already delivered, since the
    /// executor runs one list once.
    pub fn deliver_steps(&self, steps: RunSteps) -> bool {
        self.steps.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(Arc::new(steps));
            true
        })
    }

    /// Waits for the steps.
    pub async fn steps(&self) -> Arc<RunSteps> {
        let mut rx = self.steps.subscribe();
        loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                return s;
            }
            let _ = rx.changed().await;
        }
    }

    pub fn cancel(&self) -> &JobCancel {
        &self.cancel
    }

    pub fn groups(&self) -> &ProcessGroups {
        &self.groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_assignment_steps_and_reason_win() {
        let control = JobControl::new(CancellationToken::new());
        assert!(!control.has_assignment());
        assert!(control.assign(Assignment {
            job_id: 1,
            ..Default::default()
        }));
        assert!(!control.assign(Assignment {
            job_id: 2,
            ..Default::default()
        }));
        assert_eq!(control.assignment().await.job_id, 1);
        assert!(control.deliver_steps(RunSteps::default()));
        assert!(!control.deliver_steps(RunSteps::default()));
        control.steps().await;
        control.cancel().cancel("first", Duration::from_secs(1));
        control.cancel().cancel("second", Duration::from_secs(9));
        assert!(control.cancel().is_cancelled());
        assert_eq!(control.cancel().info().reason, "first");
    }

    #[test]
    fn own_group_is_running_and_unknown_group_is_not() {
        // SAFETY: getpgrp has no preconditions.
        let own = unsafe { libc::getpgrp() } as u32;
        assert!(group_running(own));
        assert!(!group_running(u32::MAX - 7));
    }
}
