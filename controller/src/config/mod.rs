//! `config.toml`: parsed with unknown keys refused, defaults explicit, and validated before any port is
//! bound (an invalid file ends the controller with one line and exit code 64).
//!
//! Relative paths are relative to the directory of the config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod backends;
mod github;
mod limits;
mod notifiers;
mod provisioner;
mod web;

pub use backends::{DbConfig, QueueConfig};
pub use github::GitHubConfig;
pub use limits::{LimitsConfig, LogLimitAction};
pub use notifiers::{NotifyOn, RepoTelegram, TelegramConfig, WebhookConfig, glob_matches};
use provisioner::provisioner_with_default_kind;
pub use provisioner::{
    Accel, GridNetwork, Isolation, LocalConfig, PoolConfig, ProvisionerConfig, SshConfig,
    SshHostConfig, TfgridConfig, VmConfig,
};
pub use web::WebConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub main: MainConfig,
    pub tls: TlsConfig,
    #[serde(default, deserialize_with = "provisioner_with_default_kind")]
    pub provisioner: ProvisionerConfig,
    #[serde(default)]
    pub db: DbConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    /// Exported to every job.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Per-repository settings, keyed by the repository's name (`owner/name`), its URL or
    /// `local:/path` for a local repository.
    #[serde(default)]
    pub repos: BTreeMap<String, RepoConfig>,
    /// GitHub: webhooks in, commit statuses out.
    #[serde(default)]
    pub github: Option<GitHubConfig>,
    /// `[telegram]`: a message for every finished job.
    #[serde(default)]
    pub telegram: Option<TelegramConfig>,
    /// `[webhook]`: every job change POSTed as JSON.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Ceilings no job can raise.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Who may read and act on the result pages.
    #[serde(default)]
    pub web: WebConfig,
    /// The file this was read from (absolute), so sandboxes can hide it; not a key of the file.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// `[repos."owner/name"]`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Exported to this repository's jobs.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Exported like `env`, and masked (`***`) in everything stored and streamed.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Also mask the base64 encodings of the secrets (for tools that print credentials encoded).
    #[serde(default)]
    pub mask_base64: bool,
    /// Branches on which a new commit supersedes the commits still queued for that branch (they end
    /// `cancelled`, with the superseding job named). Empty: every commit is tested. `["*"]`: all branches.
    #[serde(default)]
    pub coalesce: Vec<String>,
    /// This repository's machines (`[repos."x".machine] cpus, memory_mb, pids, disk_gb`): each value
    /// set replaces `[limits]`'s for its jobs, larger or smaller.
    #[serde(default)]
    pub machine: zeroci::resources::Resources,
    /// `[repos."x".telegram]`: which results of this repository reach Telegram, and where.
    #[serde(default)]
    pub telegram: RepoTelegram,
}

/// What a log line may show of a secret: whether it is set.
fn redacted(value: &Option<String>) -> &'static str {
    if value.is_some() { "<set>" } else { "<unset>" }
}

// Hand-written: these hold tokens and secrets, which must never reach a log line or an error.
impl std::fmt::Debug for RepoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoConfig")
            .field("env", &self.env)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("mask_base64", &self.mask_base64)
            .field("coalesce", &self.coalesce)
            .field("machine", &self.machine)
            .field("telegram", &self.telegram)
            .finish()
    }
}

impl RepoConfig {
    /// True when queued commits of `branch` give way to a newer one.
    pub fn coalesces(&self, branch: &str) -> bool {
        !branch.is_empty() && self.coalesce.iter().any(|b| b == "*" || b == branch)
    }
}

/// Secrets shorter than this are refused: masking them would hide ordinary output.
pub const MIN_SECRET_LEN: usize = 6;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainConfig {
    /// Base URL of the result pages (`<domain>/jobs/<id>`).
    pub domain: String,
    /// Jobs, journals and machines live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// gRPC listener for agents and the CLI.
    pub grpc_listen: String,
    /// HTTP listener (result pages, webhooks); reserved for the HTTP issues.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// Jobs running at once.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Seconds a step may run when neither the submission nor the pipeline says.
    #[serde(default = "default_step_timeout")]
    pub step_timeout: u64,
    /// Seconds without any message from an agent after which its job ends `error`.
    #[serde(default = "default_lost_agent_timeout")]
    pub lost_agent_timeout: u64,
    /// Seconds a new machine's agent has to connect for the first time.
    #[serde(default = "default_provision_timeout")]
    pub provision_timeout: u64,
    /// Milliseconds between heartbeats on agent streams (both directions).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Seconds without output after which a step counts as timed out; 0 disables.
    #[serde(default)]
    pub idle_timeout: u64,
    /// Seconds each git command of a job's checkout may run (default 600; 0: no limit). A git server
    /// that accepts and then never answers ends the job `error` instead of holding its machine.
    #[serde(default = "default_checkout_timeout")]
    pub checkout_timeout: u64,
    /// Seconds between SIGTERM and SIGKILL when a job is cancelled.
    #[serde(default = "default_cancel_grace")]
    pub cancel_grace: u64,
    /// Seconds a graceful shutdown waits for running work before leaving it to the next start.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: u64,
    /// The address agents dial (`host:port`), when it is not `grpc_listen` (remote machines need a
    /// routable address; an unspecified listen address is otherwise dialled as loopback). Several
    /// controllers of one service: all their addresses, comma-separated, so that an agent whose
    /// controller died goes on with another.
    #[serde(default)]
    pub agent_endpoint: Option<String>,
    /// This controller's name as the holder of job leases; default: the host name. Controllers that
    /// share a store need distinct names; a restarted controller with the same name resumes its own
    /// jobs at once instead of waiting for their leases to expire.
    #[serde(default)]
    pub controller_id: Option<String>,
    /// Seconds a claim on a running job lasts without renewal; another controller takes the job over
    /// only after that. Renewed every third of it while the job runs.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Seconds the store may keep refusing a job's output before the job ends `error`.
    #[serde(default = "default_store_failure_timeout")]
    pub store_failure_timeout: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: PathBuf,
    /// The CA's private key: the controller signs agent certificates with it.
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Seconds an agent certificate stays valid (default 24 h; at least 10), and never past the latest
    /// end of its job; an agent whose job outlives it renews it at two thirds of its life.
    #[serde(default = "default_agent_cert_ttl")]
    pub agent_cert_ttl: u64,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}
fn default_workers() -> usize {
    5
}
fn default_step_timeout() -> u64 {
    3600
}
fn default_lost_agent_timeout() -> u64 {
    30
}
fn default_provision_timeout() -> u64 {
    120
}
fn default_heartbeat_ms() -> u64 {
    5000
}
fn default_cancel_grace() -> u64 {
    5
}
fn default_checkout_timeout() -> u64 {
    600
}
fn default_shutdown_grace() -> u64 {
    10
}
fn default_agent_cert_ttl() -> u64 {
    24 * 3600
}
fn default_lease_secs() -> u64 {
    30
}
fn default_store_failure_timeout() -> u64 {
    30
}

impl Config {
    /// Reads, resolves relative paths and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        config.file = std::path::absolute(path).ok();
        Ok(config)
    }

    /// Parses the text of the config file at `path` (named in errors; relative paths in the file are
    /// resolved against its directory) and validates it.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let start = s.start.min(text.len());
                    let line = text[..start].matches('\n').count() + 1;
                    let source = text.lines().nth(line - 1).unwrap_or("").trim();
                    format!("line {line} `{source}`: ")
                })
                .unwrap_or_default();
            invalid(format!("{at}{}", e.message()))
        })?;
        // Absolute, because machines run with their own working directory. A bare file name has an
        // empty parent, which means the current directory.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(parent).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        config.resolve_paths(&base);
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.main.state_dir);
        fix(&mut self.tls.ca);
        fix(&mut self.tls.ca_key);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        match &mut self.provisioner {
            ProvisionerConfig::Local { local } => {
                if let Some(p) = &mut local.agent_binary {
                    fix(p);
                }
            }
            ProvisionerConfig::Ssh { ssh } => {
                fix(&mut ssh.key_file);
                if let Some(p) = &mut ssh.agent_binary {
                    fix(p);
                }
            }
            ProvisionerConfig::Vm { vm } => {
                for p in [&mut vm.agent_binary, &mut vm.images_dir]
                    .into_iter()
                    .flatten()
                {
                    fix(p);
                }
                // A bare program name is looked up on the PATH.
                if let Some(p) = vm.qemu.as_mut().filter(|p| p.components().count() > 1) {
                    fix(p);
                }
            }
            ProvisionerConfig::Pool { .. } => {}
            ProvisionerConfig::Tfgrid { tfgrid } => {
                if let Some(p) = &mut tfgrid.mnemonic_file {
                    fix(p);
                }
            }
        }
    }

    /// Checks what serde cannot: ranges, addresses, known kinds.
    pub fn validate(&self) -> Result<(), String> {
        let m = &self.main;
        if m.workers == 0 || m.workers > 1000 {
            return Err(format!(
                "[main] workers must be between 1 and 1000, got {}",
                m.workers
            ));
        }
        if m.grpc_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "[main] grpc_listen must be an address like 127.0.0.1:7701, got {:?}",
                m.grpc_listen
            ));
        }
        if let Some(http) = &m.http_listen
            && http.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(format!(
                "[main] http_listen must be an address like 127.0.0.1:7702, got {http:?}"
            ));
        }
        if !(m.domain.starts_with("http://") || m.domain.starts_with("https://")) {
            return Err(format!(
                "[main] domain must start with http:// or https://, got {:?}",
                m.domain
            ));
        }
        for (name, value) in [
            ("step_timeout", m.step_timeout),
            ("lost_agent_timeout", m.lost_agent_timeout),
            ("provision_timeout", m.provision_timeout),
            ("heartbeat_interval_ms", m.heartbeat_interval_ms),
        ] {
            if value == 0 {
                return Err(format!("[main] {name} must be positive"));
            }
        }
        if m.heartbeat_interval_ms >= m.lost_agent_timeout * 1000 {
            return Err(
                "[main] heartbeat_interval_ms must be shorter than lost_agent_timeout".into(),
            );
        }
        // Agents renew at two thirds of a certificate's life: shorter would be renewing all the time.
        if self.tls.agent_cert_ttl < 10 {
            return Err("[tls] agent_cert_ttl must be at least 10 seconds".into());
        }
        if let Some(endpoint) = &m.agent_endpoint
            && endpoint.split(',').any(|e| !e.trim().contains(':'))
        {
            return Err(format!(
                "[main] agent_endpoint must be host:port (the address agents dial; several comma-separated), got {endpoint:?}"
            ));
        }
        if m.lease_secs < 3 {
            return Err("[main] lease_secs must be at least 3".into());
        }
        if m.store_failure_timeout == 0 {
            return Err("[main] store_failure_timeout must be positive".into());
        }
        self.db.validate()?;
        self.limits.validate()?;
        let oauth = self.github.as_ref().is_some_and(|g| g.oauth().is_some());
        self.web.validate(oauth)?;
        self.provisioner.validate()?;
        if let Some(github) = &self.github {
            github.validate()?;
        }
        for key in self.environment.keys() {
            check_var_name(key).map_err(|e| format!("[environment] {e}"))?;
        }
        for (repo, settings) in &self.repos {
            for key in settings.env.keys().chain(settings.secrets.keys()) {
                check_var_name(key).map_err(|e| format!("[repos.{repo:?}] {e}"))?;
            }
            for (name, value) in &settings.secrets {
                if value.chars().count() < MIN_SECRET_LEN {
                    return Err(format!(
                        "[repos.{repo:?}] secret {name} is {} characters long; secrets need at least {MIN_SECRET_LEN}, because masking a shorter value would hide ordinary output",
                        value.chars().count()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The settings of a job's repository, matched by name, URL or `local:` path.
    pub fn repo(&self, name: &str, url: &str) -> Option<&RepoConfig> {
        // GitHub names are case-insensitive; local paths may be written with a trailing slash or
        // through a symlink, while jobs carry the resolved path.
        let canonical = |p: &str| std::fs::canonicalize(p).ok();
        let url_path = canonical(url);
        self.repos
            .iter()
            .find(|(key, _)| {
                key.eq_ignore_ascii_case(name)
                    || key.as_str() == url
                    || key.strip_prefix("local:").is_some_and(|p| {
                        p == url || (url_path.is_some() && canonical(p) == url_path)
                    })
            })
            .map(|(_, settings)| settings)
    }

    /// A job's settings and secrets are found by its repository's name or URL ([`repo`](Config::repo));
    /// a submitted name that has settings of its own must not travel with another repository's URL, or
    /// any user allowed to submit could have that repository's secrets sent to code of their choosing.
    pub fn check_repo_pairing(&self, name: &str, url: &str) -> Result<(), String> {
        let by_name = self.repo(name, "").map(|r| r as *const RepoConfig);
        let by_url = self.repo("", url).map(|r| r as *const RepoConfig);
        if by_name.is_some() && by_name != by_url {
            return Err(format!(
                "repository name {name:?} has settings of its own and {url:?} is not its URL; submit the name alone (zeroci run --repo {name}) or the URL alone"
            ));
        }
        Ok(())
    }

    pub fn lost_agent_timeout(&self) -> Duration {
        Duration::from_secs(self.main.lost_agent_timeout)
    }

    pub fn provision_timeout(&self) -> Duration {
        Duration::from_secs(self.main.provision_timeout)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.main.lease_secs)
    }

    pub fn store_failure_timeout(&self) -> Duration {
        Duration::from_secs(self.main.store_failure_timeout)
    }

    /// The lease holder name of this controller.
    pub fn controller_id(&self) -> String {
        self.main.controller_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "zeroci-controller".to_string())
        })
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.main.heartbeat_interval_ms)
    }

    /// A config for a fresh installation (written by `init`).
    pub fn for_init(grpc_listen: &str, http_listen: Option<&str>, domain: &str) -> Config {
        Config {
            main: MainConfig {
                domain: domain.to_string(),
                state_dir: default_state_dir(),
                grpc_listen: grpc_listen.to_string(),
                http_listen: http_listen.map(str::to_string),
                workers: default_workers(),
                step_timeout: default_step_timeout(),
                lost_agent_timeout: default_lost_agent_timeout(),
                provision_timeout: default_provision_timeout(),
                heartbeat_interval_ms: default_heartbeat_ms(),
                idle_timeout: 0,
                checkout_timeout: default_checkout_timeout(),
                cancel_grace: default_cancel_grace(),
                shutdown_grace: default_shutdown_grace(),
                agent_endpoint: None,
                controller_id: None,
                lease_secs: default_lease_secs(),
                store_failure_timeout: default_store_failure_timeout(),
            },
            tls: TlsConfig {
                ca: "pki/ca.crt".into(),
                ca_key: "pki/ca.key".into(),
                cert: "pki/controller.crt".into(),
                key: "pki/controller.key".into(),
                agent_cert_ttl: default_agent_cert_ttl(),
            },
            provisioner: ProvisionerConfig::default(),
            db: DbConfig::default(),
            queue: QueueConfig::default(),
            environment: BTreeMap::new(),
            repos: BTreeMap::new(),
            github: None,
            telegram: None,
            webhook: None,
            limits: LimitsConfig::default(),
            web: WebConfig::default(),
            file: None,
        }
    }
}

fn check_var_name(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid variable name {key:?}: use letters, digits and _"
        ))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_configured_name_cannot_be_paired_with_another_url() {
        let mut config = Config::for_init("127.0.0.1:0", None, "ci.example");
        let with_secret = RepoConfig {
            secrets: [("TOKEN".to_string(), "s3cret-value".to_string())].into(),
            ..RepoConfig::default()
        };
        config
            .repos
            .insert("acme/widget".into(), with_secret.clone());
        config
            .repos
            .insert("https://git.example/lib.git".into(), with_secret);
        assert!(
            config
                .check_repo_pairing("acme/widget", "/tmp/evil")
                .is_err()
        );
        assert!(
            config
                .check_repo_pairing("acme/widget", "https://git.example/lib.git")
                .is_err()
        );
        // Names without settings, and a URL with its own settings, pair freely.
        assert!(config.check_repo_pairing("evil", "/tmp/evil").is_ok());
        assert!(
            config
                .check_repo_pairing("lib", "https://git.example/lib.git")
                .is_ok()
        );
        assert!(
            config
                .check_repo_pairing("", "https://git.example/lib.git")
                .is_ok()
        );
    }

    #[test]
    fn a_github_oauth_app_needs_its_secret_and_accounts_to_sign_in() {
        let mut config = Config::for_init("127.0.0.1:0", None, "http://ci.example");
        config.github = Some(GitHubConfig {
            oauth_client_id: Some("Iv1.id".into()),
            ..GitHubConfig::default()
        });
        assert!(config.validate().unwrap_err().contains("go together"));
        config.github.as_mut().unwrap().oauth_client_secret = Some("secret".into());
        assert!(config.validate().unwrap_err().contains("github_admins"));
        config.web.github_viewers = vec!["*".into()];
        assert!(config.validate().is_ok());
    }

    #[test]
    fn debug_output_never_shows_tokens_or_secrets() {
        let github = GitHubConfig {
            access_token: Some("ghp_token_value".into()),
            webhook_secret: Some("hook_secret_value".into()),
            oauth_client_secret: Some("oauth_secret_value".into()),
            ..GitHubConfig::default()
        };
        let repo = RepoConfig {
            secrets: [("API_KEY".to_string(), "repo_secret_value".to_string())].into(),
            ..RepoConfig::default()
        };
        let text = format!("{github:?} {repo:?}");
        for secret in [
            "ghp_token_value",
            "hook_secret_value",
            "repo_secret_value",
            "oauth_secret_value",
        ] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("API_KEY") && text.contains("<set>"), "{text}");
    }
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_commented_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.main.idle_timeout, 900);
        let repo = config.repo("threefoldtech/zeroCI", "").unwrap();
        assert!(repo.mask_base64);
        assert!(repo.coalesces("main") && !repo.coalesces("dev"));
        assert_eq!(config.github.unwrap().repos, ["threefoldtech/zeroCI"]);
        assert!(matches!(config.db, DbConfig::Embedded {}));
        assert_eq!(config.main.lease_secs, 30);
    }

    #[test]
    fn the_production_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.production.toml");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let (uri, name) = config.db.mongodb().unwrap();
        assert!(uri.starts_with("mongodb://") && name == "zeroci");
        assert!(matches!(config.queue, QueueConfig::Redis { .. }));
        assert_eq!(config.controller_id(), "ci-1");
        let shown = format!("{:?} {:?}", config.db, config.queue);
        assert!(
            !shown.contains("change-me"),
            "passwords never printed: {shown}"
        );
    }

    #[test]
    fn provisioner_kind_defaults_to_local_and_its_table_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let base = toml::to_string(&Config::for_init("127.0.0.1:0", None, "http://x")).unwrap();
        let base = base.replace("[provisioner]\nkind = \"local\"\n", "");
        let text = base.replace(
            "[provisioner.local]",
            "[provisioner.local]\nagent_give_up = 7",
        );
        let config = Config::load(&write(dir.path(), &text)).unwrap();
        let ProvisionerConfig::Local { local } = config.provisioner else {
            panic!("kind = local by default");
        };
        assert_eq!(local.agent_give_up, Some(7));
        // A vm table with relative paths: relative to the file; a bare qemu stays a PATH lookup.
        let vm = base
            .replace("[provisioner.local]", "[provisioner.local_old]")
            .replace(
                "[provisioner.local_old]
isolation = \"namespaces\"
network = \"host\"
",
                "",
            )
            + "\n[provisioner]\nkind = \"vm\"\n[provisioner.vm]\nimages_dir = \"imgs\"\nqemu = \"qemu-system-x86_64\"\n[provisioner.vm.images]\n\"ubuntu:22.04\" = \"default\"\n";
        let config = Config::load(&write(dir.path(), &vm)).unwrap();
        let ProvisionerConfig::Vm { vm } = config.provisioner else {
            panic!("kind = vm");
        };
        assert_eq!(vm.images_dir, Some(dir.path().join("imgs")));
        assert_eq!(vm.qemu, Some(PathBuf::from("qemu-system-x86_64")));
        assert_eq!(vm.images["ubuntu:22.04"], "default");
        assert_eq!((vm.cpus, vm.memory_mb, vm.disk_gb), (2, 2048, 16));
        let bad = text.replace(
            "[db]\nbackend = \"embedded\"",
            "[db]\nbackend = \"memory\"\nuri = \"x\"",
        );
        assert!(
            Config::load(&write(dir.path(), &bad)).is_err(),
            "unknown keys in [db]"
        );
        let bad = text.replace(
            "[provisioner.local]",
            "[provisioner]\nflavour = 1\n[provisioner.local]",
        );
        assert!(
            Config::load(&write(dir.path(), &bad)).is_err(),
            "unknown keys in [provisioner]"
        );
    }

    #[test]
    fn tfgrid_and_pool_tables_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let base = toml::to_string(&Config::for_init("127.0.0.1:0", None, "http://x")).unwrap();
        let start = base.find("[provisioner]").unwrap();
        let end = base[start..]
            .find("\n[")
            .and_then(|i| {
                base[start + i + 1..]
                    .find("\n[")
                    .map(|j| start + i + 1 + j + 1)
            })
            .unwrap();
        let without = format!("{}{}", &base[..start], &base[end..]);
        let grid = without.clone()
            + "\n[provisioner]\nkind = \"tfgrid\"\n[provisioner.tfgrid]\nnetwork = \"dev\"\nmnemonic_file = \"phrase\"\n[provisioner.tfgrid.images]\ndefault = \"https://hub.grid.tf/a/b.flist\"\n";
        let config = Config::load(&write(dir.path(), &grid)).unwrap();
        let ProvisionerConfig::Tfgrid { tfgrid } = config.provisioner else {
            panic!("kind = tfgrid");
        };
        assert_eq!(tfgrid.farm_id, 1, "Freefarm by default");
        assert_eq!(tfgrid.network, GridNetwork::Dev);
        assert_eq!(tfgrid.mnemonic_file, Some(dir.path().join("phrase")));
        for (bad, says) in [
            (grid.replace("default = ", "other = "), "\"default\""),
            (grid.replace("https://hub", "ftp://hub"), "https:// flist"),
            (
                grid.replace("network = \"dev\"", "chain_url = \"https://x\""),
                "chain_url",
            ),
            (
                grid.replace("network = \"dev\"", "key_type = \"rsa\""),
                "key_type",
            ),
        ] {
            let err = Config::load(&write(dir.path(), &bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{err}");
        }
        let pool = without + "\n[provisioner]\nkind = \"pool\"\n";
        let config = Config::load(&write(dir.path(), &pool)).unwrap();
        assert!(matches!(config.provisioner, ProvisionerConfig::Pool { .. }));
    }

    #[test]
    fn init_config_round_trips_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::for_init("127.0.0.1:0", None, "http://localhost:7702");
        let path = write(dir.path(), &toml::to_string(&config).unwrap());
        let loaded = Config::load(&path).unwrap();
        assert_eq!(loaded.main.workers, 5);
        assert_eq!(loaded.tls.ca, dir.path().join("pki/ca.crt"));
        assert_eq!(loaded.main.state_dir, dir.path().join("state"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let base = toml::to_string(&Config::for_init("127.0.0.1:0", None, "http://x")).unwrap();
        let err = Config::load(&write(
            dir.path(),
            &base.replace("workers = 5", "workerz = 5"),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("workerz"), "{err}");
        let err = Config::load(&write(
            dir.path(),
            &base.replace("workers = 5", "workers = 0"),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("workers"), "{err}");
        let err =
            Config::load(&write(dir.path(), &base.replace("127.0.0.1:0", "nowhere"))).unwrap_err();
        assert!(err.to_string().contains("grpc_listen"), "{err}");
        let short = format!("{base}\n[repos.\"org/app\"]\nsecrets = {{ TOKEN = \"abc\" }}\n");
        let err = Config::load(&write(dir.path(), &short)).unwrap_err();
        assert!(
            err.to_string()
                .contains("secret TOKEN is 3 characters long"),
            "{err}"
        );
        let fine = format!(
            "{base}\n[repos.\"org/app\"]\nsecrets = {{ TOKEN = \"abcdef\" }}\nenv = {{ MODE = \"ci\" }}\n"
        );
        let config = Config::load(&write(dir.path(), &fine)).unwrap();
        assert!(config.repo("org/app", "https://x/org/app").is_some());
        let err = Config::load(&write(dir.path(), "[main\n")).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
