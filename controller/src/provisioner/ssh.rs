//! `ssh` machines: existing hosts reached over SSH (russh, a pure-Rust client). Per job: a directory
//! `<work_dir>/<machine>` on the next host in turn (one that cannot be reached is passed over), the agent binary copied once per host and version
//! (`<work_dir>/agent-<sha256>`, checked by its sha256 after every copy), the bootstrap written with
//! mode 600, and the agent started detached in a session of its own. `destroy` kills that session
//! (every process the job started) and removes the directory.
//!
//! Host keys are pinned in the config: a host showing another key is refused before anything is sent.
//! An SSH host is as isolated as the account the jobs run as: give them a host (or VM) of their own.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use tracing::info;
use zeroci::resources::Resources;

use super::{MachineLedger, MachineRequest, ProvisionError, Provisioner};
use crate::config::SshConfig;
use crate::jobs::MachineRecord;

/// Connecting and logging in may take at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// One command on a host (copying the agent included) may take at most this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

pub struct SshProvisioner {
    hosts: Vec<Host>,
    user: String,
    key: Arc<russh::keys::PrivateKey>,
    work_dir: String,
    agent_binary: PathBuf,
    /// The agent binary's sha256 (hex): its name on the hosts, and what a copy is checked against.
    agent_sha256: String,
    agent_give_up_secs: u64,
    /// The host the next machine goes to.
    next_host: AtomicUsize,
}

struct Host {
    address: String,
    key: PublicKey,
}

/// What is recorded of an SSH machine: the host and directory before anything is made, then the
/// agent's session.
#[derive(Debug, Serialize, Deserialize)]
struct SshDetails {
    host: String,
    dir: String,
    /// The agent's pid, which is also its session id.
    pid: Option<u32>,
}

impl SshDetails {
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Accepts the server only when it shows the pinned key.
struct PinnedKey {
    expected: PublicKey,
    shown: Option<String>,
}

impl client::Handler for PinnedKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let shown = server_public_key.public_key();
        self.shown = shown.to_openssh().ok();
        Ok(shown.key_data() == self.expected.key_data())
    }
}

/// One logged-in connection to a host.
struct Connection {
    session: client::Handle<PinnedKey>,
}

/// What a command printed and how it exited.
struct Ran {
    status: Option<u32>,
    stdout: String,
    stderr: String,
}

impl Connection {
    /// Runs `command` under the login shell, feeding it `input`, and waits for its end.
    async fn run(&self, command: &str, input: Option<Input>) -> Result<Ran, String> {
        let mut channel = self
            .session
            .channel_open_session()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| format!("cannot run a command: {e}"))?;
        match input {
            Some(Input::File(path)) => {
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                channel
                    .data(file)
                    .await
                    .map_err(|e| format!("cannot send {}: {e}", path.display()))?;
            }
            Some(Input::Bytes(bytes)) => channel
                .data(&bytes[..])
                .await
                .map_err(|e| format!("cannot send input: {e}"))?,
            None => {}
        }
        channel
            .eof()
            .await
            .map_err(|e| format!("cannot end the input: {e}"))?;
        let mut ran = Ran {
            status: None,
            stdout: String::new(),
            stderr: String::new(),
        };
        while let Some(message) = channel.wait().await {
            match message {
                russh::ChannelMsg::Data { data } => {
                    ran.stdout.push_str(&String::from_utf8_lossy(&data))
                }
                russh::ChannelMsg::ExtendedData { data, .. } => {
                    ran.stderr.push_str(&String::from_utf8_lossy(&data))
                }
                russh::ChannelMsg::ExitStatus { exit_status } => ran.status = Some(exit_status),
                _ => {}
            }
        }
        Ok(ran)
    }

    /// Runs `command`; an error with what it said unless it exits 0.
    async fn check(&self, command: &str, input: Option<Input>) -> Result<String, String> {
        let ran = tokio::time::timeout(COMMAND_TIMEOUT, self.run(command, input))
            .await
            .map_err(|_| format!("no end within {} s", COMMAND_TIMEOUT.as_secs()))??;
        match ran.status {
            Some(0) => Ok(ran.stdout),
            status => Err(format!(
                "exit {}: {}",
                status.map_or("unknown".to_string(), |s| s.to_string()),
                ran.stderr.trim()
            )),
        }
    }
}

enum Input {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// `'text'` for a POSIX shell.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

impl SshProvisioner {
    pub fn from_config(config: &SshConfig) -> Result<SshProvisioner, ProvisionError> {
        let unavailable = |message: String| ProvisionError::Unavailable {
            kind: "ssh",
            message,
        };
        let hosts = config
            .hosts
            .iter()
            .map(|host| {
                let key = PublicKey::from_openssh(host.host_key.trim())
                    .map_err(|e| unavailable(format!("host key of {}: {e}", host.address)))?;
                let address = if host.address.contains(':') {
                    host.address.clone()
                } else {
                    format!("{}:22", host.address)
                };
                Ok(Host { address, key })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key = russh::keys::load_secret_key(&config.key_file, None)
            .map_err(|e| unavailable(format!("key_file {}: {e}", config.key_file.display())))?;
        let agent_binary = config
            .agent_binary
            .clone()
            .unwrap_or_else(super::local::default_agent_binary);
        let agent = std::fs::read(&agent_binary).map_err(|e| {
            unavailable(format!(
                "agent binary {}: {e}; build it (cargo build --bins) or set [provisioner.ssh] agent_binary",
                agent_binary.display()
            ))
        })?;
        let agent_sha256 = zeroci::encoding::hex(&sha2::Sha256::digest(&agent));
        Ok(SshProvisioner {
            hosts,
            user: config.user.clone(),
            key: Arc::new(key),
            work_dir: config.work_dir.trim_end_matches('/').to_string(),
            agent_binary,
            agent_sha256,
            agent_give_up_secs: config.agent_give_up.unwrap_or(600),
            next_host: AtomicUsize::new(0),
        })
    }

    fn host(&self, address: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.address == address)
    }

    /// Connects to `host`, checks its key and logs in.
    async fn connect(&self, host: &Host) -> Result<Connection, String> {
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        let handler = PinnedKey {
            expected: host.key.clone(),
            shown: None,
        };
        let login = async {
            let mut session = client::connect(config, host.address.as_str(), handler)
                .await
                .map_err(|e| match e {
                    russh::Error::UnknownKey => format!(
                        "{} showed a host key other than the one pinned in [provisioner.ssh] hosts",
                        host.address
                    ),
                    e => format!("cannot connect to {}: {e}", host.address),
                })?;
            let hash = session
                .best_supported_rsa_hash()
                .await
                .map_err(|e| e.to_string())?
                .flatten();
            let key = PrivateKeyWithHashAlg::new(self.key.clone(), hash);
            let auth = session
                .authenticate_publickey(&self.user, key)
                .await
                .map_err(|e| format!("cannot log in to {}: {e}", host.address))?;
            if !auth.success() {
                return Err(format!(
                    "{} refused the key of [provisioner.ssh] key_file for user {}",
                    host.address, self.user
                ));
            }
            Ok(Connection { session })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, login)
            .await
            .map_err(|_| {
                format!(
                    "{} did not answer within {} s",
                    host.address,
                    CONNECT_TIMEOUT.as_secs()
                )
            })?
    }

    /// The agent on the host, copied there unless this version is there already; its path.
    async fn ensure_agent(&self, connection: &Connection) -> Result<String, String> {
        let path = format!("{}/agent-{}", self.work_dir, self.agent_sha256);
        let sum = format!("sha256sum {} 2>/dev/null || true", quoted(&path));
        if connection
            .check(&sum, None)
            .await?
            .starts_with(&self.agent_sha256)
        {
            return Ok(path);
        }
        let partial = format!("{path}.{}", rand::random::<u32>());
        // The work directory is this account's alone: nobody else may swap the agent after its check.
        let copy = format!(
            "umask 077 && mkdir -p {dir} && [ -O {dir} ] && chmod 700 {dir} && cat > {partial} && chmod 700 {partial} && mv -f {partial} {path}",
            dir = quoted(&self.work_dir),
            partial = quoted(&partial),
            path = quoted(&path)
        );
        connection
            .check(&copy, Some(Input::File(self.agent_binary.clone())))
            .await?;
        if !connection
            .check(&sum, None)
            .await?
            .starts_with(&self.agent_sha256)
        {
            return Err(format!(
                "the agent copied to {path} does not have the expected sha256"
            ));
        }
        info!(%path, "agent copied to the host");
        Ok(path)
    }
}

#[async_trait]
impl Provisioner for SshProvisioner {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    async fn create(
        &self,
        request: &MachineRequest,
        ledger: &dyn MachineLedger,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, ProvisionError> {
        if request.untrusted {
            return Err(ProvisionError::Prepare {
                name: request.name.clone(),
                message: "a fork pull request never runs on an ssh host (no sandbox there)".into(),
                retryable: false,
            });
        }
        // A host that cannot be reached, or a command that fails there, may work on the next try.
        let failed = |message: String| ProvisionError::Start {
            name: request.name.clone(),
            message,
            retryable: true,
        };
        // The hosts in turn, from the next one: a host that is down is passed over for the others.
        let first = self.next_host.fetch_add(1, Ordering::Relaxed);
        let connect = async {
            let mut refusals = Vec::new();
            for n in 0..self.hosts.len() {
                let host = &self.hosts[(first + n) % self.hosts.len()];
                match self.connect(host).await {
                    Ok(connection) => return Ok((host, connection)),
                    Err(refusal) => {
                        tracing::warn!(machine = %request.name, %refusal, "ssh host passed over");
                        refusals.push(refusal);
                    }
                }
            }
            Err(failed(refusals.join("; ")))
        };
        let (host, connection) = tokio::select! {
            connection = connect => connection?,
            () = cancel.cancelled() => {
                return Err(ProvisionError::Cancelled { name: request.name.clone() });
            }
        };
        let mut details = SshDetails {
            host: host.address.clone(),
            dir: format!("{}/{}", self.work_dir, request.name),
            pid: None,
        };
        // Recorded once the host is known to be the pinned one, before anything is made there: a
        // machine refused at every door leaves nothing to destroy.
        ledger.record(details.to_value()).await?;
        let make = async {
            let agent = self.ensure_agent(&connection).await?;
            let bootstrap = serde_json::to_vec(&request.bootstrap).map_err(|e| e.to_string())?;
            let dir = quoted(&details.dir);
            // Nothing of a job is for other accounts of the host: the token least of all.
            let prepare = format!(
                "umask 077 && rm -rf {dir} && mkdir -p {dir}/job && cat > {dir}/bootstrap.json"
            );
            connection
                .check(&prepare, Some(Input::Bytes(bootstrap)))
                .await?;
            // `setsid`: the agent leads a session of its own, which `destroy` ends whole. The shell
            // it runs in writes its own pid (the session's id) to `agent.pid` and prints it, then
            // becomes the agent; `destroy` reads the file, so it finds the session even when this
            // answer never arrived.
            let start = format!(
                "umask 077; cd {dir} || exit 1; setsid sh -c 'echo $$ > \"$1/agent.pid\"; echo $$; exec \"$0\" run --bootstrap \"$1/bootstrap.json\" --workdir \"$1/job\" --give-up-after {give_up} > \"$1/agent.log\" 2>&1' {agent} {dir} < /dev/null &",
                agent = quoted(&agent),
                give_up = self.agent_give_up_secs
            );
            let pid = connection.check(&start, None).await?;
            pid.trim()
                .parse::<u32>()
                .map_err(|_| format!("the host did not say the agent's pid: {pid:?}"))
        };
        let pid = tokio::select! {
            pid = make => pid.map_err(failed)?,
            () = cancel.cancelled() => {
                return Err(ProvisionError::Cancelled { name: request.name.clone() });
            }
        };
        details.pid = Some(pid);
        ledger.record(details.to_value()).await?;
        info!(machine = %request.name, host = %details.host, pid, "agent started on the ssh host");
        Ok(details.to_value())
    }

    async fn limit(
        &self,
        _machine: &MachineRecord,
        resources: &Resources,
    ) -> Result<Vec<String>, ProvisionError> {
        let mut unenforced = Vec::new();
        if resources.cpus.is_some() {
            unenforced.push("cpus");
        }
        if resources.memory_mb.is_some() {
            unenforced.push("memory");
        }
        if resources.pids.is_some() {
            unenforced.push("processes");
        }
        Ok(if unenforced.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "ssh hosts do not enforce limits on {}",
                unenforced.join(", ")
            )]
        })
    }

    async fn destroy(&self, machine: &MachineRecord) -> Result<(), ProvisionError> {
        let failed = |message: String| ProvisionError::Destroy {
            name: machine.name.clone(),
            message,
        };
        let Ok(details) = serde_json::from_value::<SshDetails>(machine.details.clone()) else {
            return Ok(()); // nothing was recorded: nothing was made
        };
        let Some(host) = self.host(&details.host) else {
            return Err(failed(format!(
                "host {} is not in [provisioner.ssh] hosts any more",
                details.host
            )));
        };
        let connection = self.connect(host).await.map_err(failed)?;
        // Every process of the agent's session: the agent and whatever its steps left running (a
        // step that starts a session of its own escapes it). pkill exits 1 when none is left.
        let dir = quoted(&details.dir);
        let command = format!(
            "if [ -f {dir}/agent.pid ]; then pkill -KILL -s \"$(cat {dir}/agent.pid)\"; found=$?; [ $found -le 1 ] || exit $found; fi; rm -rf {dir}"
        );
        connection.check(&command, None).await.map_err(failed)?;
        info!(machine = %machine.name, host = %details.host, "ssh machine destroyed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_any_path_one_word() {
        assert_eq!(quoted("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(quoted("it's"), "'it'\\''s'");
    }
}
