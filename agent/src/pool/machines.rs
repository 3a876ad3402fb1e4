//! The machines a joined host makes: one directory per machine under `<work_dir>/machines/`, a
//! per-job agent started from this same binary as the leader of a session of its own, in a sandbox of
//! fresh namespaces (`zeroci-agent sandbox`, as the controller's `local` machines) unless the host
//! joined with `--isolation none`. Every machine dies with this process (parent-death signal), so a
//! killed host agent leaves only directories, which the next start removes.
//!
//! With `--isolation in-process` a machine is a task of this process running the same agent code
//! (enrolment, the stream, the executor): no isolation and no process of its own, so one host can
//! hold a thousand connected agents for a load test of a controller. Its steps' process groups are
//! killed when it is destroyed or the host stops; a SIGKILLed host leaves them running (nothing
//! records them for the next start).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};
use zeroci::bootstrap::Bootstrap;
use zeroci::sandbox::{SandboxSpec, StepNetwork, local_source};

/// How long a machine's processes get to stop on SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Where a machine's session id is written, for a later start to clean up after a crash.
const SESSION_FILE: &str = "session";

/// How machines are made on this host.
#[derive(Debug, Clone)]
pub struct MachineSettings {
    /// `<work_dir>/machines`.
    pub dir: PathBuf,
    /// This binary: the per-job agent is the same program.
    pub agent_binary: PathBuf,
    /// Sandboxes (fresh namespaces) or, with `--isolation none`, plain processes.
    pub isolated: bool,
    pub network: StepNetwork,
    /// Host user of job 0's root when running as root.
    pub first_uid: Option<u32>,
    /// Host paths no sandbox may see (the work directory, the token file).
    pub hidden: Vec<PathBuf>,
    /// Whether a job's local repository path (the controller's) is shown in its sandbox: only for a
    /// host that shares the controller's file system, or a submitted `/` would show this host's.
    pub local_repos: bool,
    /// Machines are tasks of this process (see the module docs).
    pub in_process: bool,
}

/// What a failed start says to the controller.
#[derive(Debug)]
pub struct StartFailure {
    pub message: String,
    pub retryable: bool,
}

/// A machine that ended on its own: its name and how its agent exited.
pub type Gone = (String, String);

struct Running {
    /// Which start made it: a failed start removes only its own reservation, not a later machine's
    /// of the same name.
    generation: u64,
    /// The per-job agent's pid, also its session id; `None` while it starts.
    pid: Option<u32>,
    /// The agent's task, for an in-process machine.
    task: Option<Task>,
    dir: PathBuf,
}

/// An in-process machine's agent: its task and the stop it treats as a SIGTERM.
struct Task {
    handle: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

/// The machines this host runs now.
pub struct Machines {
    settings: MachineSettings,
    running: Mutex<HashMap<String, Running>>,
    next_generation: AtomicU64,
    /// Told when a machine's agent exits and the machine is removed by this host.
    gone: mpsc::UnboundedSender<Gone>,
}

/// A machine name: letters, digits, `-`, `_`, `.`, not only dots (it becomes a directory name).
fn check_name(name: &str) -> Result<(), String> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 128 || !plain || name.chars().all(|c| c == '.') {
        return Err(format!("{name:?} is not a machine name"));
    }
    Ok(())
}

impl Machines {
    /// Removes what an earlier life of this host left (its machines died with it) and returns the
    /// machine list, with the receiver of machines that end on their own.
    pub async fn open(
        settings: MachineSettings,
    ) -> std::io::Result<(Arc<Machines>, mpsc::UnboundedReceiver<Gone>)> {
        std::fs::create_dir_all(&settings.dir)?;
        for entry in std::fs::read_dir(&settings.dir)? {
            let dir = entry?.path();
            clean_up(&dir).await;
        }
        let (gone, gone_rx) = mpsc::unbounded_channel();
        Ok((
            Arc::new(Machines {
                settings,
                running: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
                gone,
            }),
            gone_rx,
        ))
    }

    fn running(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether machines are sandboxes.
    pub fn isolated(&self) -> bool {
        self.settings.isolated
    }

    /// Names of the machines running now.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.running().keys().cloned().collect();
        names.sort();
        names
    }

    /// Makes machine `name` and starts its per-job agent; its pid, and whether `max_processes`
    /// (0: none) was applied (only where the machine runs as a host user of its own).
    pub fn start(
        self: &Arc<Self>,
        name: &str,
        bootstrap: Bootstrap,
        repo_url: &str,
        give_up_after_secs: u64,
        max_processes: u64,
    ) -> Result<(u32, bool), StartFailure> {
        let fail = |message: String| StartFailure {
            message,
            retryable: false,
        };
        check_name(name).map_err(fail)?;
        let dir = self.settings.dir.join(name);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        // Reserved before any work, so a second start or a destroy of the same name meets it.
        {
            let mut running = self.running();
            if running.contains_key(name) {
                return Err(fail(format!("machine {name} exists already")));
            }
            running.insert(
                name.to_string(),
                Running {
                    generation,
                    pid: None,
                    task: None,
                    dir: dir.clone(),
                },
            );
        }
        let started = self.spawn(
            name,
            generation,
            &dir,
            bootstrap,
            repo_url,
            give_up_after_secs,
            max_processes,
        );
        if started.is_err() {
            // Unless a later start of the same name holds it now (this one was destroyed while it
            // started), the reservation and whatever was made go. Under the lock: that later start
            // cannot make the directory meanwhile.
            let mut running = self.running();
            if running
                .get(name)
                .is_none_or(|entry| entry.generation == generation)
            {
                running.remove(name);
                remove_dir(&dir);
            }
        }
        started
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        self: &Arc<Self>,
        name: &str,
        generation: u64,
        dir: &Path,
        bootstrap: Bootstrap,
        repo_url: &str,
        give_up_after_secs: u64,
        max_processes: u64,
    ) -> Result<(u32, bool), StartFailure> {
        let fail = |message: String| StartFailure {
            message,
            retryable: false,
        };
        let _ = std::fs::remove_dir_all(dir);
        let job_dir = dir.join("job");
        std::fs::create_dir_all(&job_dir)
            .map_err(|e| fail(format!("{}: {e}", job_dir.display())))?;
        let log = std::fs::File::create(dir.join("agent.log"))
            .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        if self.settings.in_process {
            return self.start_task(name, generation, job_dir, bootstrap, give_up_after_secs);
        }
        let log_err = log.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut command = tokio::process::Command::new(&self.settings.agent_binary);
        // Nothing of this host agent's environment (its token) reaches the job.
        command.env_clear();
        let uid = self
            .settings
            .first_uid
            .filter(|_| self.settings.isolated)
            .map(|first| zeroci::sandbox::job_uid(first, bootstrap.job_id));
        // RLIMIT_NPROC counts the user's processes: it binds one machine only on a user of its own.
        let limit = (max_processes > 0 && uid.is_some()).then_some(max_processes);
        let handover = if self.settings.isolated {
            if let Some(uid) = uid {
                std::os::unix::fs::chown(&job_dir, Some(uid), Some(uid))
                    .map_err(|e| fail(format!("{}: {e}", job_dir.display())))?;
            }
            command.args(["sandbox", "--spec-fd", "3"]);
            SandboxSpec {
                bootstrap,
                job_dir: job_dir.clone(),
                uid,
                gid: uid,
                read_only: zeroci::sandbox::default_read_only_paths(),
                hidden: self.settings.hidden.clone(),
                sources: local_source(repo_url)
                    .filter(|_| self.settings.local_repos)
                    .into_iter()
                    .collect(),
                network: self.settings.network,
                hostname: name.to_string(),
                give_up_after_secs,
            }
            .to_json()
        } else {
            command
                .args(["run", "--bootstrap-fd", "3", "--unisolated", "--workdir"])
                .arg(&job_dir)
                .arg("--give-up-after")
                .arg(give_up_after_secs.to_string());
            serde_json::to_vec(&bootstrap).map_err(|e| fail(e.to_string()))?
        };
        let (reader, mut writer) = zeroci::process::pipe().map_err(|e| fail(e.to_string()))?;
        // A few KiB: the pipe holds it all before the agent starts.
        std::io::Write::write_all(&mut writer, &handover).map_err(|e| fail(e.to_string()))?;
        drop(writer);
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let handover_fd = reader.as_raw_fd();
        // SAFETY: setsid, prctl and dup2/fcntl are async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            command.pre_exec(move || {
                zeroci::process::become_session_leader()?;
                zeroci::process::die_with_parent()?;
                if let Some(max) = limit {
                    zeroci::process::limit_processes(0, max)?;
                }
                zeroci::process::inherit_fd(handover_fd, 3)
            });
        }
        let spawned = command.spawn();
        drop(reader);
        let mut child = spawned.map_err(|e| StartFailure {
            message: format!("cannot start the agent: {e}"),
            retryable: true,
        })?;
        let Some(pid) = child.id() else {
            return Err(StartFailure {
                message: "the agent exited at once".into(),
                retryable: true,
            });
        };
        let _ = std::fs::write(dir.join(SESSION_FILE), session_record(pid));
        let destroyed_meanwhile = match self.running().get_mut(name) {
            Some(entry) if entry.generation == generation => {
                entry.pid = Some(pid);
                false
            }
            _ => true,
        };
        if destroyed_meanwhile {
            // A destroy came while it started and found no process to stop: this one goes too.
            let dir = dir.to_path_buf();
            tokio::spawn(async move {
                stop(pid).await;
                let _ = child.wait().await;
                remove_dir(&dir);
            });
            return Err(StartFailure {
                message: "destroyed while it started".into(),
                retryable: false,
            });
        }
        info!(machine = %name, pid, "machine started");
        let machines = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("cannot wait for the agent: {e}"),
            };
            // Still this machine (not destroyed, nor replaced by a later one of the same name):
            // remove it and say so.
            let ended = {
                let mut running = machines.running();
                match running.get(&name) {
                    Some(entry) if entry.pid == Some(pid) => running.remove(&name),
                    _ => None,
                }
            };
            if let Some(ended) = ended {
                info!(machine = %name, %exit, "machine's agent exited; removing the machine");
                stop(pid).await;
                remove_dir(&ended.dir);
                let _ = machines.gone.send((name, exit));
            }
        });
        Ok((pid, limit.is_some()))
    }

    /// Runs machine `name`'s agent as a task of this process; see the module docs.
    fn start_task(
        self: &Arc<Self>,
        name: &str,
        generation: u64,
        job_dir: PathBuf,
        bootstrap: Bootstrap,
        give_up_after_secs: u64,
    ) -> Result<(u32, bool), StartFailure> {
        let mut config = crate::AgentConfig::new(
            crate::BootstrapSource::Given(bootstrap),
            job_dir,
            Duration::from_secs(give_up_after_secs),
        );
        config.run_options.unisolated = true;
        config.run_options.clean_environment = true;
        let stop = CancellationToken::new();
        config.stop = Some(stop.clone());
        // The task waits until it is on the list, so its end always finds its own entry.
        let (listed, on_list) = tokio::sync::oneshot::channel::<()>();
        let machines = self.clone();
        let machine = name.to_string();
        let task = async move {
            if on_list.await.is_err() {
                return;
            }
            // A panic ends this machine like an agent process's crash, not the host.
            let exit = match std::panic::AssertUnwindSafe(crate::run(config))
                .catch_unwind()
                .await
            {
                Ok(Ok(())) => "finished".to_string(),
                Ok(Err(error)) => error.to_string(),
                Err(_) => "the agent panicked".to_string(),
            };
            let me = tokio::task::id();
            let ended = {
                let mut running = machines.running();
                match running.get(&machine) {
                    Some(entry) if entry.task.as_ref().map(|t| t.handle.id()) == Some(me) => {
                        running.remove(&machine)
                    }
                    _ => None,
                }
            };
            if let Some(ended) = ended {
                info!(%exit, "machine's agent ended; removing the machine");
                remove_dir(&ended.dir);
                let _ = machines.gone.send((machine, exit));
            }
        };
        let handle = tokio::spawn(task.instrument(tracing::info_span!("machine", machine = %name)));
        match self.running().get_mut(name) {
            Some(entry) if entry.generation == generation => {
                entry.task = Some(Task { handle, stop })
            }
            _ => {
                handle.abort();
                return Err(StartFailure {
                    message: "destroyed while it started".into(),
                    retryable: false,
                });
            }
        }
        let _ = listed.send(());
        info!(machine = %name, "machine started in process");
        Ok((std::process::id(), false))
    }

    /// Stops everything in machine `name` and removes it; a machine this host does not run is gone
    /// already.
    pub async fn destroy(&self, name: &str) -> Result<(), String> {
        check_name(name)?;
        let running = self.running().remove(name);
        if let Some(running) = running {
            if let Some(Task { mut handle, stop }) = running.task {
                // As a process gets SIGTERM: the job cancelled and its last events flushed, for as
                // long as a process would get; then aborted, which kills what the job left.
                stop.cancel();
                if tokio::time::timeout(STOP_GRACE, &mut handle).await.is_err() {
                    warn!(machine = %name, "in-process machine did not stop in time; aborting it");
                    handle.abort();
                    let _ = handle.await;
                }
            }
            if let Some(pid) = running.pid {
                stop(pid).await;
            }
        }
        let dir = self.settings.dir.join(name);
        let mut removed = std::fs::remove_dir_all(&dir);
        // Processes killed a moment ago may still be finishing a file operation in it: once more.
        if removed
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTEMPTY))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            removed = std::fs::remove_dir_all(&dir);
        }
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }

    /// Stops and removes every machine (the host agent is leaving).
    pub async fn destroy_all(&self) {
        // All at once: each may take its stop grace.
        let names = self.names();
        let destroyed =
            futures::future::join_all(names.iter().map(|name| self.destroy(name))).await;
        for (name, result) in names.iter().zip(destroyed) {
            if let Err(error) = result {
                warn!(machine = %name, %error, "cannot remove machine");
            }
        }
    }
}

async fn stop(sid: u32) {
    let killed = zeroci::process::stop_session(sid, STOP_GRACE).await;
    if killed > 0 {
        warn!(
            sid,
            killed, "machine processes did not stop on SIGTERM; killed"
        );
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), error = %e, "cannot remove machine directory");
    }
}

/// What is kept of a machine's session: its id and the boot it belongs to.
fn session_record(pid: u32) -> String {
    format!("{pid} {}", boot_id())
}

/// This boot of the kernel: a session id from another boot means nothing now.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A machine left by an earlier life: what is left of its session is stopped and its directory
/// removed. Only when the session is from this boot and its leader (the per-job agent, which died
/// with that life) is gone: a live process with that pid means the pid was handed out again and the
/// session is someone else's, whose members must not be touched.
async fn clean_up(dir: &Path) {
    let record = std::fs::read_to_string(dir.join(SESSION_FILE)).unwrap_or_default();
    let mut fields = record.split_whitespace();
    let sid = fields.next().and_then(|s| s.parse::<u32>().ok());
    let same_boot = fields.next() == Some(boot_id().as_str());
    let leader_alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    if let Some(sid) = sid.filter(|sid| same_boot && !leader_alive(*sid)) {
        let left = zeroci::process::session_members(sid);
        if !left.is_empty() {
            warn!(
                sid,
                processes = left.len(),
                "stopping what a machine of the last run left"
            );
            stop(sid).await;
        }
    }
    info!(dir = %dir.display(), "removing a machine left by an earlier run");
    remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_cannot_leave_the_machines_directory() {
        assert!(check_name("job-12-1").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
