//! The `local` provisioner: each machine is a private directory under the state directory with its own
//! copy of the agent binary; the agent runs as a session leader of its own, inside a sandbox of fresh
//! Linux namespaces (`zeroci-agent sandbox`, see the agent's `sandbox` module) unless `isolation =
//! "none"`. The agent gets its bootstrap token on an inherited descriptor, never in a file.
//!
//! Agents outlive a controller crash on purpose: they keep running their job and reconnect when the
//! controller is back. `destroy` therefore works from the recorded process id, not from a child handle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use tokio_util::sync::CancellationToken;

use std::os::fd::AsRawFd;

use zeroci::resources::Resources;
use zeroci::sandbox::{SandboxSpec, StepNetwork};

use super::cgroup::{self, MachineGroups};
use super::{MachineLedger, MachineRequest, ProvisionError, Provisioner};
use crate::config::{Config, Isolation, LocalConfig};
use crate::jobs::MachineRecord;

/// How long an agent keeps trying to reach a controller that went away before it gives up.
pub const DEFAULT_AGENT_GIVE_UP_SECS: u64 = 600;

pub struct LocalProvisioner {
    machines_dir: PathBuf,
    agent_logs_dir: PathBuf,
    agent_binary: PathBuf,
    agent_give_up_secs: u64,
    /// `None`: `isolation = "none"`.
    sandbox: Option<SandboxSettings>,
    /// Each machine's control group; `Err`: why machines have none on this host.
    groups: Result<MachineGroups, String>,
}

/// What every sandbox of this controller shares.
#[derive(Debug, Clone)]
struct SandboxSettings {
    network: StepNetwork,
    read_only: Vec<PathBuf>,
    /// The controller's state, keys and config, hidden where they lie under a `read_only` path.
    hidden: Vec<PathBuf>,
    /// Host user of job 0's root when the controller runs as root; `None` otherwise.
    first_uid: Option<u32>,
}

impl SandboxSettings {
    /// Job N's host user: spread over 65536 users so concurrent jobs rarely share one.
    fn uid_for(&self, job_id: u64) -> Option<u32> {
        self.first_uid
            .map(|first| zeroci::sandbox::job_uid(first, job_id))
    }
}

pub use zeroci::sandbox::DEFAULT_FIRST_UID;

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
    /// The machine's control group, recorded before it is made.
    #[serde(default)]
    cgroup: Option<PathBuf>,
    /// Whether the machine runs as a host user of its own, so `RLIMIT_NPROC` counts its processes only.
    #[serde(default)]
    own_user: bool,
}

/// The start time of process `pid` in clock ticks since boot, if it exists and has not ended (a
/// zombie waiting for its parent to reap it has ended).
pub(super) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): the state is field 3 overall, the
    // start time field 22.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The agent binary next to the running executable (`target/<profile>/zeroci-agent` in a build tree).
pub(super) fn default_agent_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("zeroci-agent")))
        .unwrap_or_else(|| PathBuf::from("zeroci-agent"))
}

impl LocalProvisioner {
    /// From `[provisioner.local]`; fails when the agent binary is missing, or when sandboxes are asked
    /// for and the kernel refuses namespaces.
    pub fn from_config(
        whole: &Config,
        config: &LocalConfig,
    ) -> Result<LocalProvisioner, ProvisionError> {
        let state_dir = &whole.main.state_dir;
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
        let sandbox = match config.isolation {
            Isolation::None => {
                warn!(
                    "[provisioner.local] isolation = \"none\": jobs run unisolated, as this controller's user"
                );
                None
            }
            Isolation::Namespaces => {
                check_namespaces(&agent_binary)?;
                let mut hidden = vec![
                    state_dir.clone(),
                    whole.tls.ca.clone(),
                    whole.tls.ca_key.clone(),
                    whole.tls.cert.clone(),
                    whole.tls.key.clone(),
                ];
                hidden.extend(whole.file.clone());
                Some(SandboxSettings {
                    network: config.network,
                    read_only: config
                        .read_only_paths
                        .clone()
                        .unwrap_or_else(zeroci::sandbox::default_read_only_paths),
                    hidden,
                    first_uid: nix_is_root().then(|| config.first_uid.unwrap_or(DEFAULT_FIRST_UID)),
                })
            }
        };
        let groups = MachineGroups::detect(state_dir);
        match &groups {
            Ok(groups) if groups.missing().is_empty() => {}
            Ok(groups) => warn!(
                missing = ?groups.missing(),
                "cgroup v2 on this host lacks controllers (they are held by cgroup v1 hierarchies): \
                 machines' limits on them are not enforced (processes fall back to RLIMIT_NPROC); boot \
                 with systemd.unified_cgroup_hierarchy=1 to enforce them"
            ),
            Err(reason) => warn!(
                %reason,
                "machines get no control group: their memory and CPU limits are not enforced"
            ),
        }
        Ok(LocalProvisioner {
            machines_dir: state_dir.join("machines"),
            agent_logs_dir: state_dir.join("agent-logs"),
            agent_binary,
            agent_give_up_secs: config.agent_give_up.unwrap_or(DEFAULT_AGENT_GIVE_UP_SECS),
            sandbox,
            groups,
        })
    }

    /// What of `resources` this host cannot enforce on a machine, in words for the job's log.
    fn unenforced(&self, resources: &Resources, own_user: bool) -> Vec<String> {
        let wanted = [
            ("memory", resources.memory_mb.is_some()),
            ("pids", resources.pids.is_some() && !own_user),
            ("cpu", resources.cpus.is_some()),
        ];
        let (missing, why) = match &self.groups {
            Ok(groups) => (
                groups.missing(),
                "cgroup v2 has no such controller on this host".to_string(),
            ),
            Err(reason) => (vec!["memory", "pids", "cpu"], reason.clone()),
        };
        let unenforced: Vec<&str> = wanted
            .into_iter()
            .filter(|(name, wanted)| *wanted && missing.contains(name))
            .map(|(name, _)| name)
            .collect();
        let mut notes = Vec::new();
        if !unenforced.is_empty() {
            notes.push(format!(
                "limits not enforced on this host: {} ({why})",
                unenforced.join(", ")
            ));
        }
        if resources.disk_gb.is_some() {
            notes.push(
                "disk limit not enforced: a sandbox writes to the host's file system".to_string(),
            );
        }
        notes
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
        let own_user = self
            .sandbox
            .as_ref()
            .is_some_and(|s| s.uid_for(request.job_id).is_some());
        let mut details = LocalDetails {
            pid: None,
            dir: dir.clone(),
            start_time: None,
            cgroup: self.groups.as_ref().ok().map(|g| g.path_of(&name)),
            own_user,
        };
        ledger.record(details.to_value()).await?;
        // A leftover directory from an earlier crash of the same attempt is replaced.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| prepare(format!("{}: {e}", dir.display())))?;
        let agent = self
            .inject_agent(&dir)
            .map_err(|e| prepare(format!("agent binary {}: {e}", self.agent_binary.display())))?;
        let job_dir = dir.join("job");
        std::fs::create_dir_all(&job_dir)
            .map_err(|e| prepare(format!("{}: {e}", job_dir.display())))?;
        let log =
            std::fs::File::create(dir.join("agent.log")).map_err(|e| prepare(e.to_string()))?;
        // The agent joins its group before it runs a single instruction: nothing it starts is outside.
        let group = match &self.groups {
            Ok(groups) => {
                let group = groups
                    .create(&name, &request.resources)
                    .map_err(|e| prepare(format!("control group of {name}: {e}")))?;
                let open = |path: PathBuf, write: bool| {
                    std::fs::OpenOptions::new()
                        .read(!write)
                        .write(write)
                        .open(&path)
                        .map_err(|e| prepare(format!("{}: {e}", path.display())))
                };
                Some((
                    open(group.clone(), false)?,
                    open(group.join("cgroup.procs"), true)?,
                ))
            }
            Err(_) => None,
        };
        let max_processes = request.resources.pids.filter(|_| own_user);
        let log_err = log.try_clone().map_err(|e| prepare(e.to_string()))?;

        // What the agent reads on descriptor 3: the sandbox spec, or the bootstrap alone.
        let args: Vec<std::ffi::OsString>;
        let env: Vec<(std::ffi::OsString, std::ffi::OsString)>;
        let handover = match &self.sandbox {
            Some(sandbox) => {
                let uid = sandbox.uid_for(request.job_id);
                if let Some(uid) = uid {
                    std::os::unix::fs::chown(&job_dir, Some(uid), Some(uid))
                        .map_err(|e| prepare(format!("{}: {e}", job_dir.display())))?;
                }
                // Nothing of the controller's environment (tokens, paths) enters the sandbox: even
                // /proc/PID/environ of the agent shows what it was started with.
                env = Vec::new();
                args = ["sandbox", "--spec-fd", "3"].map(Into::into).to_vec();
                SandboxSpec {
                    bootstrap: request.bootstrap.clone(),
                    job_dir: job_dir.clone(),
                    uid,
                    gid: uid,
                    read_only: sandbox.read_only.clone(),
                    hidden: sandbox.hidden.clone(),
                    sources: local_source(&request.repo_url).into_iter().collect(),
                    network: sandbox.network,
                    hostname: request.name.clone(),
                    give_up_after_secs: self.agent_give_up_secs,
                }
                .to_json()
            }
            None => {
                if request.untrusted {
                    return Err(ProvisionError::Prepare {
                        name,
                        message: "a fork pull request never runs unisolated; set [provisioner.local] isolation = \"namespaces\"".into(),
                        retryable: false,
                    });
                }
                env = std::env::vars_os().collect();
                args = vec![
                    "run".into(),
                    "--bootstrap-fd".into(),
                    "3".into(),
                    "--unisolated".into(),
                    "--workdir".into(),
                    job_dir.clone().into(),
                    "--give-up-after".into(),
                    self.agent_give_up_secs.to_string().into(),
                ];
                serde_json::to_vec(&request.bootstrap).map_err(|e| prepare(e.to_string()))?
            }
        };
        let (reader, mut writer) = zeroci::process::pipe().map_err(|e| prepare(e.to_string()))?;
        // A few KiB: the pipe holds it all before the agent starts.
        std::io::Write::write_all(&mut writer, &handover).map_err(|e| prepare(e.to_string()))?;
        drop(writer);
        if cancel.is_cancelled() {
            return Err(ProvisionError::Cancelled { name });
        }
        let null = std::fs::File::open("/dev/null").map_err(|e| prepare(e.to_string()))?;
        // A session of its own: destroy finds every process the job started by session id (steps run
        // in process groups of their own), and Ctrl-C on the controller's terminal does not reach jobs.
        // Started inside its control group: nothing it runs is ever outside.
        let spawned = zeroci::spawn::spawn(&zeroci::spawn::Spawn {
            program: &agent,
            args: &args,
            env: &env,
            cwd: &dir,
            stdio: [null.as_raw_fd(), log.as_raw_fd(), log_err.as_raw_fd()],
            handover: Some((reader.as_raw_fd(), 3)),
            cgroup: group
                .as_ref()
                .map(|(dir, procs)| (dir.as_raw_fd(), procs.as_raw_fd())),
            max_processes,
        });
        drop((reader, group, null, log, log_err));
        let spawned = spawned.map_err(|e| ProvisionError::Start {
            name: name.clone(),
            message: e.to_string(),
            retryable: false,
        })?;
        let pid = spawned.pid;
        // Read while the agent is unreaped, so the pid cannot be someone else's yet.
        details.start_time = process_start_time(pid);
        // Reap the agent whenever it exits so it never lingers as a zombie.
        tokio::spawn(async move {
            if let Err(error) = zeroci::spawn::wait(spawned).await {
                tracing::warn!(pid, %error, "cannot wait for a local agent");
            }
        });
        info!(job_id = request.job_id, attempt = request.attempt, pid, machine = %name, "local agent started");
        details.pid = Some(pid);
        Ok(details.to_value())
    }

    async fn limit(
        &self,
        machine: &MachineRecord,
        resources: &Resources,
    ) -> Result<Vec<String>, ProvisionError> {
        let details: LocalDetails =
            serde_json::from_value(machine.details.clone()).map_err(|e| ProvisionError::Start {
                name: machine.name.clone(),
                message: format!("unreadable machine record: {e}"),
                retryable: false,
            })?;
        let failed = |message: String| ProvisionError::Start {
            name: machine.name.clone(),
            message,
            retryable: false,
        };
        if let (Ok(groups), Some(group)) = (&self.groups, &details.cgroup) {
            groups
                .apply(group, resources)
                .map_err(|e| failed(format!("control group {}: {e}", group.display())))?;
        }
        // The recorded agent, still running with its recorded start time: a pid reused by someone
        // else must not be limited.
        let alive = details.pid.filter(|pid| {
            details.start_time.is_some() && process_start_time(*pid) == details.start_time
        });
        if let (true, Some(max), Some(sid)) = (details.own_user, resources.pids, alive) {
            // Every process of the machine: a limit set on the agent alone would not bind the
            // keeper's and init's later children (there are none, but the rule is simple).
            for pid in zeroci::process::session_members(sid) {
                match zeroci::process::limit_processes(pid, max) {
                    Ok(()) => {}
                    // Ended between the listing and now: nothing left to limit.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(failed(format!("process limit of {pid}: {e}"))),
                }
            }
        }
        Ok(self.unenforced(resources, details.own_user))
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
        // Whatever left the session (a daemon of the job's) is still in the machine's group.
        if let Some(group) = details.as_ref().and_then(|d| d.cgroup.as_ref()) {
            cgroup::remove(group)
                .await
                .map_err(|e| ProvisionError::Destroy {
                    name: machine.name.clone(),
                    message: format!("control group {}: {e}", group.display()),
                })?;
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

pub use zeroci::sandbox::local_source;

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finds a kernel that refuses the namespaces a sandbox uses at start-up, with what to do about it,
/// rather than at the first job.
fn check_namespaces(agent_binary: &Path) -> Result<(), ProvisionError> {
    zeroci::sandbox::probe_namespaces(agent_binary).map_err(|reason| ProvisionError::Unavailable {
        kind: "local",
        message: format!(
            "{reason}, or set [provisioner.local] isolation = \"none\" to run jobs unisolated on purpose"
        ),
    })
}

impl LocalDetails {
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// SIGTERM everything in the agent's session, give it a moment to flush, then SIGKILL what is left.
async fn stop_session(sid: u32) {
    let killed = zeroci::process::stop_session(sid, Duration::from_secs(3)).await;
    if killed > 0 {
        warn!(
            sid,
            killed, "machine processes did not stop on SIGTERM; killed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoLedger;

    #[async_trait]
    impl MachineLedger for NoLedger {
        async fn record(&self, _: serde_json::Value) -> Result<(), ProvisionError> {
            Ok(())
        }
    }

    fn request(untrusted: bool) -> MachineRequest {
        MachineRequest {
            job_id: 7,
            attempt: 1,
            name: "job-7-a1".into(),
            bootstrap: zeroci::bootstrap::Bootstrap {
                controller: "127.0.0.1:1".into(),
                ca_pem: String::new(),
                token: "t".into(),
                job_id: 7,
            },
            repo_url: "file:///srv/repo".into(),
            untrusted,
            resources: Resources::default(),
            image_name: None,
            labels: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_fork_pull_request_never_runs_unisolated() {
        let state = tempfile::tempdir().unwrap();
        let provisioner = LocalProvisioner {
            machines_dir: state.path().join("machines"),
            agent_logs_dir: state.path().join("agent-logs"),
            agent_binary: PathBuf::from("/bin/true"),
            agent_give_up_secs: 1,
            sandbox: None,
            groups: Err("none in this test".into()),
        };
        let refused = provisioner
            .create(&request(true), &NoLedger, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(!refused.is_retryable());
        assert!(
            refused.to_string().contains("never runs unisolated"),
            "{refused}"
        );
    }

    #[test]
    fn local_sources_are_paths_and_file_urls_only() {
        assert_eq!(local_source("/srv/repo"), Some(PathBuf::from("/srv/repo")));
        assert_eq!(
            local_source("file:///srv/repo"),
            Some(PathBuf::from("/srv/repo"))
        );
        assert_eq!(local_source("https://github.com/a/b.git"), None);
        assert_eq!(local_source("git@github.com:a/b.git"), None);
    }

    #[test]
    fn concurrent_jobs_get_different_host_users() {
        let settings = SandboxSettings {
            network: StepNetwork::Host,
            read_only: vec![],
            hidden: vec![],
            first_uid: Some(DEFAULT_FIRST_UID),
        };
        assert_eq!(settings.uid_for(0), Some(DEFAULT_FIRST_UID));
        assert_ne!(settings.uid_for(1), settings.uid_for(2));
        assert_eq!(
            SandboxSettings {
                first_uid: None,
                ..settings
            }
            .uid_for(3),
            None
        );
    }
    #[test]
    fn start_time_of_this_process_is_readable_and_stable() {
        let pid = std::process::id();
        let first = super::process_start_time(pid).expect("start time");
        assert_eq!(super::process_start_time(pid), Some(first));
        assert_eq!(super::process_start_time(u32::MAX), None);
    }
}
