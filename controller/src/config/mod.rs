//! `config.toml`: parsed with unknown keys refused, defaults explicit, and validated before any port is
//! bound (an invalid file ends the controller with one line and exit code 64).
//!
//! Relative paths are relative to the directory of the config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod limits;
mod provisioner;
mod web;

pub use limits::{LimitsConfig, LogLimitAction};
use provisioner::provisioner_with_default_kind;
pub use provisioner::{Accel, Isolation, LocalConfig, ProvisionerConfig, VmConfig};
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

/// `[github]`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubConfig {
    /// Token for the contents API, commit statuses and cloning private repositories.
    pub access_token: Option<String>,
    /// Repositories (`owner/name`) whose webhooks start jobs.
    #[serde(default)]
    pub repos: Vec<String>,
    /// The secret configured on the webhooks; deliveries are checked against it (HMAC-SHA256).
    pub webhook_secret: Option<String>,
    /// `https://api.github.com` (default) or `https://HOST/api/v3` for GitHub Enterprise.
    pub api_url: Option<String>,
    /// The commit status context (default `continuous-integration/ZeroCI`).
    pub status_context: Option<String>,
    /// Larger webhook bodies are refused with 413 (default 25 MiB, GitHub's own cap).
    pub max_body_bytes: Option<usize>,
    /// A GitHub OAuth app's client id: with `oauth_client_secret`, the pages offer "Sign in with
    /// GitHub" (roles from `[web] github_admins` / `github_viewers`). The app's callback URL is
    /// `<domain>/login/github/callback`.
    pub oauth_client_id: Option<String>,
    /// That OAuth app's client secret.
    pub oauth_client_secret: Option<String>,
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

/// `[repos."x".telegram]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoTelegram {
    /// Which results are sent (default all).
    #[serde(default)]
    pub notify: NotifyOn,
    /// Another chat for this repository's results.
    pub chat_id: Option<String>,
    /// Branches whose results are not sent: names, `*` matching any run of characters
    /// (`dependabot/*`).
    #[serde(default)]
    pub mute_branches: Vec<String>,
}

/// Which results a repository sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyOn {
    /// Every finished job.
    #[default]
    All,
    /// Jobs that did not pass (failed, errored, cancelled).
    Failures,
    /// Jobs that did not pass, and the first pass after those of the same branch.
    FailuresAndRecoveries,
    /// Nothing.
    None,
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob_matches(rest, &tail[i..]))
        }
    }
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

impl std::fmt::Debug for GitHubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubConfig")
            .field("access_token", &redacted(&self.access_token))
            .field("repos", &self.repos)
            .field("webhook_secret", &redacted(&self.webhook_secret))
            .field("api_url", &self.api_url)
            .field("status_context", &self.status_context)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("oauth_client_id", &self.oauth_client_id)
            .field("oauth_client_secret", &redacted(&self.oauth_client_secret))
            .finish_non_exhaustive()
    }
}

/// `[webhook]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where every job change is POSTed as JSON.
    pub url: String,
    /// Signs each delivery (`X-ZeroCI-Signature-256: sha256=<HMAC-SHA256 of the body>`).
    pub secret: Option<String>,
}

// Hand-written: the secret is a credential (and a URL may carry one too).
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &crate::store::mongo::redact_uri(&self.url))
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

/// `[telegram]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot's token (from @BotFather).
    pub token: String,
    /// Where results go: a group's id (`-1001234567890`) or `@channel`.
    pub chat_id: String,
    /// The Bot API (default Telegram's; a self-hosted Bot API server, or a stand-in in tests).
    pub api_url: Option<String>,
}

// Hand-written: the token is a credential.
impl std::fmt::Debug for TelegramConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramConfig")
            .field("token", &"<set>")
            .field("chat_id", &self.chat_id)
            .field("api_url", &self.api_url)
            .finish()
    }
}

impl GitHubConfig {
    /// The OAuth app (client id, secret) pages sign in with, when one is configured.
    pub fn oauth(&self) -> Option<(&str, &str)> {
        Some((
            self.oauth_client_id.as_deref().filter(|s| !s.is_empty())?,
            self.oauth_client_secret
                .as_deref()
                .filter(|s| !s.is_empty())?,
        ))
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
    /// Seconds an agent certificate stays valid.
    #[serde(default = "default_agent_cert_ttl")]
    pub agent_cert_ttl: u64,
}

/// `[db]`: where jobs, logs, reports and artifacts are kept. A new backend is one more variant here and
/// one line in `store::Stores::open`.
/// (Variants are structs, even empty ones: serde refuses unknown keys only in those.)
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum DbConfig {
    /// Files under `[main] state_dir` (the default).
    Embedded {},
    /// The controller's memory: nothing survives a restart (tests, benchmarks, throw-away runs).
    Memory {},
    /// MongoDB, shared by every controller of a service: `uri`, or the original ZeroCI's `host` and
    /// `port`; the database `name` (default `zeroci`); `retention_days`: finished runs are deleted
    /// with their logs, reports and artifacts that many days on (default: kept).
    Mongodb {
        uri: Option<String>,
        name: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        retention_days: Option<u32>,
    },
}

/// `[queue]`: where queued jobs wait for a worker. One variant per backend; a new backend is one more
/// variant and one line in `queue::build`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueConfig {
    /// Inside this controller (the default): enough for one controller, since the store keeps every
    /// queued job and a restart queues them again.
    #[serde(rename = "in-process")]
    InProcess {},
    /// A Redis stream with a consumer group, shared by every controller of a service: `url`
    /// (`redis://[:password@]host:port/db`), the stream's key (default `zeroci:jobs`).
    Redis { url: String, stream: Option<String> },
}

// Hand-written, as the URIs may carry passwords.
impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbConfig::Embedded {} => f.write_str("Embedded"),
            DbConfig::Memory {} => f.write_str("Memory"),
            DbConfig::Mongodb {
                name,
                retention_days,
                ..
            } => {
                let uri = self
                    .mongodb()
                    .map(|(uri, _)| crate::store::mongo::redact_uri(&uri));
                f.debug_struct("Mongodb")
                    .field("uri", &uri)
                    .field("name", name)
                    .field("retention_days", retention_days)
                    .finish()
            }
        }
    }
}

impl std::fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueConfig::InProcess {} => f.write_str("InProcess"),
            QueueConfig::Redis { url, stream } => f
                .debug_struct("Redis")
                .field("url", &crate::queue::redis::redact_url(url))
                .field("stream", stream)
                .finish(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig::InProcess {}
    }
}

impl DbConfig {
    /// For `mongodb`: the connection URI and the database name.
    pub fn mongodb(&self) -> Option<(String, String)> {
        let DbConfig::Mongodb {
            uri,
            name,
            host,
            port,
            ..
        } = self
        else {
            return None;
        };
        let uri = uri.clone().unwrap_or_else(|| {
            format!(
                "mongodb://{}:{}/",
                host.as_deref().unwrap_or("localhost"),
                port.unwrap_or(27017)
            )
        });
        Some((uri, name.clone().unwrap_or_else(|| "zeroci".into())))
    }
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig::Embedded {}
    }
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
        let invalid = |message: String| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let mut config: Config = toml::from_str(&text).map_err(|e| {
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
        config.file = std::path::absolute(path).ok();
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
        if self.tls.agent_cert_ttl < 60 {
            return Err("[tls] agent_cert_ttl must be at least 60 seconds".into());
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
        if let DbConfig::Mongodb {
            retention_days: Some(days),
            ..
        } = &self.db
            && !(1..=36_500).contains(days)
        {
            return Err(format!(
                "[db] retention_days must be between 1 and 36500 (leave it out to keep runs), got {days}"
            ));
        }
        self.limits.validate()?;
        let oauth = self.github.as_ref().is_some_and(|g| g.oauth().is_some());
        self.web.validate(oauth)?;
        if let ProvisionerConfig::Vm { vm } = &self.provisioner {
            vm.validate()?;
        }
        if let Some(github) = &self.github {
            for repo in &github.repos {
                let mut parts = repo.split('/');
                let valid = matches!((parts.next(), parts.next(), parts.next()), (Some(o), Some(n), None) if !o.is_empty() && !n.is_empty());
                if !valid {
                    return Err(format!("[github] repos: {repo:?} is not owner/name"));
                }
            }
            if github.oauth_client_id.is_some() != github.oauth_client_secret.is_some() {
                return Err(
                    "[github] oauth_client_id and oauth_client_secret go together (a GitHub OAuth app's pair)"
                        .into(),
                );
            }
            if github
                .webhook_secret
                .as_deref()
                .is_some_and(|s| s.len() < 8)
            {
                return Err("[github] webhook_secret must be at least 8 characters".into());
            }
            if let Some(url) = &github.api_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(format!(
                    "[github] api_url must be an http(s) URL, got {url:?}"
                ));
            }
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
    fn branch_patterns_match_with_stars() {
        assert!(glob_matches("wip/*", "wip/try"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("release-*-rc", "release-1.2-rc"));
        assert!(!glob_matches("wip/*", "main"));
        assert!(!glob_matches("main", "main2"));
        assert!(glob_matches("dépendances/*", "dépendances/x"));
    }

    #[test]
    fn a_retention_of_zero_days_is_refused() {
        let mut config = Config::for_init("127.0.0.1:0", None, "http://ci.example");
        config.db = toml::from_str("backend = \"mongodb\"\nretention_days = 0\n").unwrap();
        assert!(config.validate().unwrap_err().contains("retention_days"));
    }

    #[test]
    fn the_original_zerocis_db_host_and_port_still_work() {
        let db: DbConfig =
            toml::from_str("backend = \"mongodb\"\nhost = \"db\"\nport = 27018\n").unwrap();
        assert_eq!(
            db.mongodb().unwrap(),
            ("mongodb://db:27018/".into(), "zeroci".into())
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
