//! The `local` provisioner: each machine is a private directory under the state directory with its own
//! copy of the agent binary, and the agent runs as a child process in its own process group.
//!
//! Agents outlive a controller crash on purpose: they keep running their job and reconnect when the
//! controller is back. `destroy` therefore works from the recorded process id, not from a child handle.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use tokio_util::sync::CancellationToken;

use super::{MachineLedger, MachineRequest, ProvisionError, Provisioner};
use crate::config::LocalConfig;
use crate::jobs::MachineRecord;

/// How long an agent keeps trying to reach a controller that went away before it gives up.
pub const DEFAULT_AGENT_GIVE_UP_SECS: u64 = 600;

pub struct LocalProvisioner {
    machines_dir: PathBuf,
    agent_logs_dir: PathBuf,
    agent_binary: PathBuf,
    agent_give_up_secs: u64,
}

/// What is recorded of a local machine: the directory before it is made, then the agent's process.
#[derive(Debug, Serialize, Deserialize)]
struct LocalDetails {
    #[serde(default)]
    pid: Option<u32>,
    dir: PathBuf,
    /// The agent's start time (field 22 of /proc/PID/stat): after a reboot the pid may belong to
    /// someone else, and destroy must not touch that process's session.
    #[serde(default)]
    start_time: Option<u64>,
}

/// The start time of process `pid` in clock ticks since boot, if it exists.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces); start time is field 22 overall.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The agent binary next to the running executable (`target/<profile>/zeroci-agent` in a build tree).
fn default_agent_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("zeroci-agent")))
        .unwrap_or_else(|| PathBuf::from("zeroci-agent"))
}

impl LocalProvisioner {
    /// From `[provisioner.local]`; fails when the agent binary is missing.
    pub fn from_config(
        state_dir: &Path,
        config: &LocalConfig,
    ) -> Result<LocalProvisioner, ProvisionError> {
        let agent_binary = config
            .agent_binary
            .clone()
            .unwrap_or_else(default_agent_binary);
        if !agent_binary.is_file() {
            return Err(ProvisionError::Unavailable {
                kind: "local",
                message: format!(
                    "agent binary {} not found; build it (cargo build --bins) or set [provisioner.local] agent_binary",
                    agent_binary.display()
                ),
            });
        }
        Ok(LocalProvisioner::new(
            state_dir,
            agent_binary,
            config.agent_give_up.unwrap_or(DEFAULT_AGENT_GIVE_UP_SECS),
        ))
    }

    pub fn new(
        state_dir: &Path,
        agent_binary: PathBuf,
        agent_give_up_secs: u64,
    ) -> LocalProvisioner {
        LocalProvisioner {
            machines_dir: state_dir.join("machines"),
            agent_logs_dir: state_dir.join("agent-logs"),
            agent_binary,
            agent_give_up_secs,
        }
    }

    /// Puts the agent binary into the machine: a hard link when possible (instant, no extra disk), else a
    /// copy.
    fn inject_agent(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let target = dir.join("zeroci-agent");
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(&self.agent_binary, &target).is_err() {
            std::fs::copy(&self.agent_binary, &target)?;
        }
        Ok(target)
    }
}

#[async_trait]
impl Provisioner for LocalProvisioner {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn create(
        &self,
        request: &MachineRequest,
        ledger: &dyn MachineLedger,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, ProvisionError> {
        let name = request.name.clone();
        // Local failures are the host's (disk full, permissions): trying again at once rarely helps.
        let prepare = |message: String| ProvisionError::Prepare {
            name: name.clone(),
            message,
            retryable: false,
        };
        let dir = self.machines_dir.join(&request.name);
        let mut details = LocalDetails {
            pid: None,
            dir: dir.clone(),
            start_time: None,
        };
        ledger.record(details.to_value()).await?;
        // A leftover directory from an earlier crash of the same attempt is replaced.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| prepare(format!("{}: {e}", dir.display())))?;
        let agent = self
            .inject_agent(&dir)
            .map_err(|e| prepare(format!("agent binary {}: {e}", self.agent_binary.display())))?;
        let bootstrap_path = dir.join("bootstrap.json");
        request
            .bootstrap
            .write(&bootstrap_path)
            .map_err(|e| prepare(e.to_string()))?;
        let log =
            std::fs::File::create(dir.join("agent.log")).map_err(|e| prepare(e.to_string()))?;
        let log_err = log.try_clone().map_err(|e| prepare(e.to_string()))?;

        let mut command = tokio::process::Command::new(&agent);
        command
            .arg("run")
            .arg("--bootstrap")
            .arg(&bootstrap_path)
            .arg("--workdir")
            .arg(&dir)
            .arg("--give-up-after")
            .arg(self.agent_give_up_secs.to_string())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if cancel.is_cancelled() {
            return Err(ProvisionError::Cancelled { name });
        }
        // A session of its own: destroy finds every process the job started by session id (steps run
        // in process groups of their own), and Ctrl-C on the controller's terminal does not reach jobs.
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(zeroci::process::become_session_leader);
        }
        let mut child = command.spawn().map_err(|e| ProvisionError::Start {
            name: name.clone(),
            message: e.to_string(),
            retryable: false,
        })?;
        let pid = child.id().ok_or_else(|| ProvisionError::Start {
            name: name.clone(),
            message: "agent exited immediately".into(),
            retryable: true,
        })?;
        // Reap the child whenever it exits so it never lingers as a zombie.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        info!(job_id = request.job_id, attempt = request.attempt, pid, machine = %name, "local agent started");
        details.pid = Some(pid);
        details.start_time = process_start_time(pid);
        Ok(details.to_value())
    }

    async fn destroy(&self, machine: &MachineRecord) -> Result<(), ProvisionError> {
        let details: Option<LocalDetails> = serde_json::from_value(machine.details.clone()).ok();
        let dir = details
            .as_ref()
            .map(|d| d.dir.clone())
            .unwrap_or_else(|| self.machines_dir.join(&machine.name));
        if let Some((details, pid)) = details.as_ref().and_then(|d| Some((d, d.pid?))) {
            // The kernel never hands out a pid that still names a live session, so: the leader alive
            // with its recorded start time, or gone (its orphaned steps may live on in the session),
            // means the session is ours; a leader pid with another start time was reused by someone
            // else, and our session is empty.
            let same_process = match (details.start_time, process_start_time(pid)) {
                (_, None) => true,
                (Some(recorded), Some(now)) => recorded == now,
                // Recorded by an older controller: trust the pid only while it runs in the machine.
                (None, Some(_)) => std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(&dir)),
            };
            if same_process {
                stop_session(pid).await;
            } else {
                info!(machine = %machine.name, pid, "agent process already gone");
            }
        }
        // Keep the agent's own log for diagnosis; the job's output is in the journal already.
        if std::fs::create_dir_all(&self.agent_logs_dir).is_ok() {
            let _ = std::fs::rename(
                dir.join("agent.log"),
                self.agent_logs_dir.join(format!("{}.log", machine.name)),
            );
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProvisionError::Destroy {
                name: machine.name.clone(),
                message: e.to_string(),
            }),
        }
    }
}

impl LocalDetails {
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// SIGTERM everything in the agent's session, give it a moment to flush, then SIGKILL what is left.
async fn stop_session(sid: u32) {
    use zeroci::process::{SIGKILL, SIGTERM, session_members, signal_session};
    if signal_session(sid, SIGTERM) == 0 {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        if session_members(sid).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = signal_session(sid, SIGKILL);
    warn!(
        sid,
        killed, "machine processes did not stop on SIGTERM; killed"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_time_of_this_process_is_readable_and_stable() {
        let pid = std::process::id();
        let first = super::process_start_time(pid).expect("start time");
        assert_eq!(super::process_start_time(pid), Some(first));
        assert_eq!(super::process_start_time(u32::MAX), None);
    }
}
