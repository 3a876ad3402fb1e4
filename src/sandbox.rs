//! What the `local` provisioner tells `zeroci-agent sandbox` about the machine to build: the agent reads
//! it from an inherited descriptor (never a file another job could list), since it holds the one-time
//! bootstrap token. The type lives here so the controller that writes it and the agent that reads it
//! cannot drift apart.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bootstrap::Bootstrap;

/// Where a sandboxed job sees its own directory (`workspace/`, `home/`, test results).
pub const JOB_DIR: &str = "/job";

/// Whether steps may use the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepNetwork {
    /// The host's network (the default: steps fetch dependencies).
    #[default]
    Host,
    /// Steps run in a network namespace of their own with only a loopback device. The agent itself
    /// keeps the host's network, so the checkout and the link to the controller still work.
    None,
}

/// A sandboxed machine, as the agent's `sandbox` command builds it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// How the agent reaches its controller.
    pub bootstrap: Bootstrap,
    /// Host directory mounted read-write at [`JOB_DIR`]; owned by `uid` when one is given.
    pub job_dir: PathBuf,
    /// Host user that root inside the sandbox is; `None`: the user the controller runs as.
    pub uid: Option<u32>,
    /// Host group that root's group inside the sandbox is; `None`: the controller's group.
    pub gid: Option<u32>,
    /// Host paths visible read-only at the same place (system directories, tools). Missing ones are
    /// skipped; everything else of the host is absent.
    pub read_only: Vec<PathBuf>,
    /// Host paths hidden even when they lie under a `read_only` one (state directory, config, keys).
    pub hidden: Vec<PathBuf>,
    /// Local repositories the job clones from, visible read-only at the same path.
    pub sources: Vec<PathBuf>,
    /// Network of the steps.
    pub network: StepNetwork,
    /// Host name inside the sandbox.
    pub hostname: String,
    /// Seconds the agent keeps trying to reach a controller that went away.
    pub give_up_after_secs: u64,
}

impl SandboxSpec {
    /// The spec as the controller writes it to the agent's descriptor.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses what [`to_json`](SandboxSpec::to_json) wrote.
    pub fn from_json(bytes: &[u8]) -> Result<SandboxSpec, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl std::fmt::Debug for SandboxSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bootstrap token is a credential: never in a log line.
        f.debug_struct("SandboxSpec")
            .field("controller", &self.bootstrap.controller)
            .field("job_id", &self.bootstrap.job_id)
            .field("job_dir", &self.job_dir)
            .field("uid", &self.uid)
            .field("read_only", &self.read_only)
            .field("hidden", &self.hidden)
            .field("sources", &self.sources)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

/// The first host user of sandboxed jobs when the machine maker runs as root.
pub const DEFAULT_FIRST_UID: u32 = 1_000_000;

/// Job `job_id`'s host user: spread over 65536 users from `first_uid`, so concurrent jobs rarely
/// share one.
pub fn job_uid(first_uid: u32, job_id: u64) -> u32 {
    let offset = u32::try_from(job_id % 65_536).unwrap_or(0);
    first_uid.saturating_add(offset)
}

/// The directory of a repository a job clones from this host (`/path` or `file:///path`), which a
/// sandbox must show read-only; `None` for a URL of another host.
pub fn local_source(repo_url: &str) -> Option<PathBuf> {
    let path = repo_url.strip_prefix("file://").unwrap_or(repo_url);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Starts `binary --version` in the namespaces a sandbox uses; why that fails, with what to do about it.
pub fn probe_namespaces(binary: &std::path::Path) -> Result<(), String> {
    use std::process::Stdio;
    let mut probe = std::process::Command::new(binary);
    probe
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: unshare is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(
            &mut probe,
            crate::process::enter_sandbox_namespaces,
        )
    };
    let refused = |reason: String| {
        format!(
            "sandboxed jobs need Linux namespaces and this kernel refuses them ({reason}); allow user \
             namespaces (sysctl user.max_user_namespaces=15000, and kernel.unprivileged_userns_clone=1 \
             where it exists) or run as root"
        )
    };
    match probe.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(refused(format!("the probe exited with {status}"))),
        Err(error) => Err(refused(format!("unshare: {error}"))),
    }
}

/// The host directories a sandbox shows by default: what a build needs from the system (compilers,
/// interpreters, libraries, certificates, name resolution), nothing of users or services.
pub fn default_read_only_paths() -> Vec<PathBuf> {
    [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let spec = SandboxSpec {
            bootstrap: Bootstrap {
                controller: "127.0.0.1:1".into(),
                ca_pem: "PEM".into(),
                token: "very-secret-token".into(),
                job_id: 3,
            },
            job_dir: "/x".into(),
            uid: Some(100_000),
            gid: Some(100_000),
            read_only: default_read_only_paths(),
            hidden: vec![],
            sources: vec![],
            network: StepNetwork::None,
            hostname: "job-3".into(),
            give_up_after_secs: 600,
        };
        let text = format!("{spec:?}");
        assert!(
            !text.contains("very-secret-token") && text.contains("job_id: 3"),
            "{text}"
        );
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<SandboxSpec>(&json).unwrap(), spec);
    }
}
