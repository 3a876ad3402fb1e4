//! GitHub webhook deliveries turned into facts the engine can act on: the `X-Hub-Signature-256` check and
//! the parsing of `push`, `pull_request` and `ping` payloads.
//!
//! Pure functions, no I/O, so the HTTP handler stays a thin shell and every rule here is unit-tested
//! against recorded-style payloads (`controller/tests/data/github/`). GitHub payloads are large and grow
//! over time; only the fields ZeroCI needs are declared, everything else is ignored, and every needed field
//! is `Option` in the wire types so that a missing one is reported by its path (`pull_request.head.sha`)
//! instead of serde's bare field name.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// GitHub caps webhook payloads at 25 MB and does not deliver larger ones, so anything above this is not
/// GitHub; the HTTP handler answers 413 past it.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// The header carrying the event type (`push`, `pull_request`, `ping`, ...).
pub const EVENT_HEADER: &str = "X-GitHub-Event";
/// The header carrying the HMAC-SHA256 of the body, `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// The header carrying the delivery's GUID; GitHub keeps it on a redelivery, so it is the dedup key.
pub const DELIVERY_HEADER: &str = "X-GitHub-Delivery";

/// What GitHub sends as `after` when a ref is deleted (and as `before` when one is created).
const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Why a delivery's signature is not accepted. All three map to 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Hub-Signature-256 header; set the webhook's secret on GitHub")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header: {0}")]
    Malformed(&'static str),
    #[error("X-Hub-Signature-256 does not match the body and [github] webhook_secret")]
    Mismatch,
}

/// Checks `header` (`sha256=<64 hex digits>`) against HMAC-SHA256(`secret`, `body`).
///
/// The comparison is constant-time (`Mac::verify_slice`), so response timing tells an attacker nothing
/// about how many leading bytes of a forged signature were right.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let hex = header
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed("expected `sha256=<hex>`"))?;
    let expected = decode_hex(hex)?;
    if expected.len() != 32 {
        return Err(SignatureError::Malformed(
            "a SHA-256 signature is 64 hex digits",
        ));
    }
    // HMAC accepts keys of any length, so this cannot fail; the error arm keeps unwrap out of the path.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| SignatureError::Malformed("unusable secret"))?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, SignatureError> {
    if hex.len() % 2 != 0 {
        return Err(SignatureError::Malformed("odd number of hex digits"));
    }
    fn nibble(c: u8) -> Result<u8, SignatureError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(SignatureError::Malformed("not a hex digit")),
        }
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Whether `repo` (`owner/name` from a payload) is one of `[github] repos`. GitHub owner and repository
/// names are case-insensitive, and a payload carries the canonical spelling, which may differ from what
/// an operator typed in config.toml.
pub fn repo_allowed(configured: &[String], repo: &str) -> bool {
    configured.iter().any(|r| r.eq_ignore_ascii_case(repo))
}

/// Why a delivery could not be understood. Maps to 400.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the {event} payload is not valid JSON: {source}")]
    Json {
        event: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the {event} payload has no `{field}`")]
    Missing { event: String, field: &'static str },
}

/// One delivery, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// Sent once when a hook is created; answered 200 so GitHub shows the hook as working.
    Ping {
        zen: String,
        hook_id: u64,
        /// Absent for organisation hooks.
        repo: Option<String>,
    },
    Push(Push),
    /// Only `opened`, `synchronize` and `reopened`; other actions come back as [`WebhookEvent::Ignored`].
    PullRequest(PullRequest),
    /// Understood, but nothing to run (answered 200 with the reason).
    Ignored {
        reason: String,
    },
}

/// A `push` event to a branch or a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// `owner/name`.
    pub repo: String,
    /// The branch, `refs/heads/` stripped and slashes kept (`feature/x/y`). For a tag push, the branch
    /// GitHub names in `base_ref` when the tagged commit is a branch head, else `None`.
    pub branch: Option<String>,
    /// The tag, `refs/tags/` stripped, for a tag push.
    pub tag: Option<String>,
    /// The full ref as sent (`refs/heads/feature/x`), for jobs that record the ref itself.
    pub git_ref: String,
    /// The pushed commit (`after`); all zeros on a deletion.
    pub commit: String,
    pub before: String,
    /// The ref was deleted: nothing to build.
    pub deleted: bool,
    pub clone_url: String,
    /// `pusher.name` (the login for pushes through the web or git).
    pub pusher: String,
    /// The head commit's message; absent on a deletion.
    pub head_message: Option<String>,
    /// The head commit's author (`head_commit.author.name`); absent on a deletion.
    pub head_author: Option<String>,
}

impl Push {
    /// Why this push should not start a job, if it should not: a deletion has no commit to build.
    pub fn skip_reason(&self) -> Option<String> {
        self.deleted
            .then(|| format!("{} was deleted; nothing to build", self.git_ref))
    }
}

/// A runnable `pull_request` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The base repository, `owner/name`: the configured one, which receives the status.
    pub repo: String,
    pub number: u64,
    /// `opened`, `synchronize` or `reopened`.
    pub action: String,
    pub head_sha: String,
    pub head_ref: String,
    pub base_ref: String,
    /// The head repository's clone URL (a fork's, usually). When the fork was deleted GitHub sends
    /// `head.repo: null`; the base repository's URL is used then, since GitHub keeps the head commits
    /// fetchable there (`refs/pull/<number>/head`).
    pub head_clone_url: String,
    /// `sender.login`.
    pub sender: String,
    /// The head commits come from another repository (a fork): untrusted code, which must never see
    /// the access token or the repository's secrets.
    pub from_fork: bool,
}

/// Parses one delivery. `event_header` is the `X-GitHub-Event` value.
pub fn parse_event(event_header: &str, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    match event_header.trim() {
        "ping" => parse_ping(body),
        "push" => parse_push(body),
        "pull_request" => parse_pull_request(body),
        other => Ok(WebhookEvent::Ignored {
            reason: format!("event `{other}` is not handled (only push, pull_request and ping)"),
        }),
    }
}

// Wire types: every field optional so that absence is reported by path, unknown fields ignored.

#[derive(Deserialize)]
struct WireRepo {
    full_name: Option<String>,
    clone_url: Option<String>,
}

#[derive(Deserialize)]
struct WirePing {
    zen: Option<String>,
    hook_id: Option<u64>,
    repository: Option<WireRepo>,
}

#[derive(Deserialize)]
struct WirePusher {
    name: Option<String>,
}

#[derive(Deserialize)]
struct WireCommit {
    message: Option<String>,
    author: Option<WireAuthor>,
}

#[derive(Deserialize)]
struct WireAuthor {
    name: Option<String>,
}

#[derive(Deserialize)]
struct WirePush {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    before: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    base_ref: Option<String>,
    repository: Option<WireRepo>,
    pusher: Option<WirePusher>,
    head_commit: Option<WireCommit>,
}

#[derive(Deserialize)]
struct WireUser {
    login: Option<String>,
}

#[derive(Deserialize)]
struct WireBranch {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    sha: Option<String>,
    repo: Option<WireRepo>,
}

#[derive(Deserialize)]
struct WirePr {
    head: Option<WireBranch>,
    base: Option<WireBranch>,
}

#[derive(Deserialize)]
struct WirePullRequestEvent {
    action: Option<String>,
    number: Option<u64>,
    pull_request: Option<WirePr>,
    repository: Option<WireRepo>,
    sender: Option<WireUser>,
}

fn from_json<'a, T: Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T, WebhookError> {
    serde_json::from_slice(body).map_err(|source| WebhookError::Json {
        event: event.to_string(),
        source,
    })
}

fn missing(event: &str, field: &'static str) -> WebhookError {
    WebhookError::Missing {
        event: event.to_string(),
        field,
    }
}

/// `Some(value)` or the "missing `field`" error.
fn need<T>(event: &str, value: Option<T>, field: &'static str) -> Result<T, WebhookError> {
    value.ok_or_else(|| missing(event, field))
}

/// As [`need`], and an empty string counts as missing: no string ZeroCI needs may be empty (an empty
/// `ref` or `sha` would only fail later, less clearly).
fn need_str(
    event: &str,
    value: Option<String>,
    field: &'static str,
) -> Result<String, WebhookError> {
    need(event, value.filter(|v| !v.is_empty()), field)
}

fn parse_ping(body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    let w: WirePing = from_json("ping", body)?;
    Ok(WebhookEvent::Ping {
        zen: need_str("ping", w.zen, "zen")?,
        hook_id: need("ping", w.hook_id, "hook_id")?,
        repo: w.repository.and_then(|r| r.full_name),
    })
}

fn parse_push(body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    const E: &str = "push";
    let w: WirePush = from_json(E, body)?;
    let git_ref = need_str(E, w.git_ref, "ref")?;
    let (branch, tag) = if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        (Some(b.to_string()), None)
    } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
        let base = w
            .base_ref
            .as_deref()
            .and_then(|r| r.strip_prefix("refs/heads/"))
            .map(str::to_string);
        (base, Some(t.to_string()))
    } else {
        return Ok(WebhookEvent::Ignored {
            reason: format!("push to {git_ref}, which is neither a branch nor a tag"),
        });
    };
    let repository = need(E, w.repository, "repository")?;
    let commit = need_str(E, w.after, "after")?;
    Ok(WebhookEvent::Push(Push {
        repo: need_str(E, repository.full_name, "repository.full_name")?,
        clone_url: need_str(E, repository.clone_url, "repository.clone_url")?,
        deleted: w.deleted || commit == ZERO_SHA,
        commit,
        before: need_str(E, w.before, "before")?,
        branch,
        tag,
        git_ref,
        pusher: need_str(E, w.pusher.and_then(|p| p.name), "pusher.name")?,
        head_author: w
            .head_commit
            .as_ref()
            .and_then(|c| c.author.as_ref())
            .and_then(|a| a.name.clone()),
        head_message: w.head_commit.and_then(|c| c.message),
    }))
}

/// The actions that mean "the head commit of this pull request is new (or back)".
const RUNNABLE_ACTIONS: [&str; 3] = ["opened", "synchronize", "reopened"];

fn parse_pull_request(body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    const E: &str = "pull_request";
    let w: WirePullRequestEvent = from_json(E, body)?;
    let action = need_str(E, w.action, "action")?;
    // Checked before the rest: a `closed` or `labeled` payload need not have what a build needs.
    if !RUNNABLE_ACTIONS.contains(&action.as_str()) {
        return Ok(WebhookEvent::Ignored {
            reason: format!(
                "pull_request action `{action}` does not start a job (only opened, synchronize, reopened)"
            ),
        });
    }
    let pr = need(E, w.pull_request, "pull_request")?;
    let head = need(E, pr.head, "pull_request.head")?;
    let base = need(E, pr.base, "pull_request.base")?;
    // The top-level `repository` is the base repository; `base.repo` is the same, kept as a fallback.
    let base_repo = need(E, w.repository.or(base.repo), "repository")?;
    let base_clone_url = base_repo.clone_url;
    let base_name = base_repo.full_name.clone();
    // A head repository other than the base (a fork), or a deleted one, is somebody else's code.
    let from_fork = head.repo.as_ref().is_none_or(
        |r| !matches!((&r.full_name, &base_name), (Some(h), Some(b)) if h.eq_ignore_ascii_case(b)),
    );
    let head_clone_url = head.repo.and_then(|r| r.clone_url).or(base_clone_url);
    Ok(WebhookEvent::PullRequest(PullRequest {
        repo: need_str(E, base_repo.full_name, "repository.full_name")?,
        number: need(E, w.number, "number")?,
        action,
        head_sha: need_str(E, head.sha, "pull_request.head.sha")?,
        head_ref: need_str(E, head.git_ref, "pull_request.head.ref")?,
        base_ref: need_str(E, base.git_ref, "pull_request.base.ref")?,
        head_clone_url: need_str(E, head_clone_url, "pull_request.head.repo.clone_url")?,
        sender: need_str(E, w.sender.and_then(|s| s.login), "sender.login")?,
        from_fork,
    }))
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
