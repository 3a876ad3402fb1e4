//! The few GitHub REST calls ZeroCI makes: a file at an exact commit (zeroCI.yaml), a branch's head
//! (manual runs), and commit statuses (the pending/success/failure marks on commits and pull requests).
//!
//! Built on octocrab's raw request methods (`_get_with_headers`, `_post`) rather than its typed builders,
//! because ZeroCI has to see each answer's status and headers itself: 404 means "no such file", a 403
//! with rate-limit headers is worth retrying while a plain 403 is not, and a file over 1 MiB needs a
//! second request with the raw media type. Octocrab's own retry layer is switched off so that exactly one
//! policy (here) decides. `api_url` points at GitHub Enterprise (`https://host/api/v3`) or at a fake
//! server in tests; requests are made with relative paths so octocrab prefixes the base and sends the
//! token only to that host.

use std::fmt;

use base64::Engine as _;
use http::{StatusCode, Uri};
use octocrab::Octocrab;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::exchange::{self, Method, Reply, check_ok, parse_json};
pub use super::retry::RetryPolicy;

/// GitHub's own API; `api_url` is this unless GitHub Enterprise is used.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The status context of the original ZeroCI, so branch protection rules written for it keep working.
pub const DEFAULT_STATUS_CONTEXT: &str = "continuous-integration/ZeroCI";
/// GitHub refuses longer status descriptions (422).
pub const MAX_DESCRIPTION_CHARS: usize = 140;
/// The largest file `file_at` returns. A pipeline file is a few KiB; this only bounds memory.
pub const MAX_FILE_BYTES: usize = 10 * 1024 * 1024;

pub(super) const JSON_MEDIA_TYPE: &str = "application/vnd.github+json";
const RAW_MEDIA_TYPE: &str = "application/vnd.github.raw";
/// Bounds any JSON answer: the contents API inlines files up to 1 MiB as base64, about 1.4 MB.
const MAX_JSON_BYTES: usize = 4 * 1024 * 1024;

/// Everything not unreserved (RFC 3986) is escaped in a path segment or query value; in particular `/`
/// in a branch name becomes `%2F` so that `feature/a/b` stays one segment.
pub(super) const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `[github]` settings this client needs.
#[derive(Clone)]
pub struct ApiSettings {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise.
    pub api_url: String,
    /// A token with `repo:status` (statuses) and contents read access. Without one only public
    /// repositories can be read and statuses cannot be set.
    pub access_token: Option<String>,
    pub status_context: String,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            api_url: DEFAULT_API_URL.to_string(),
            access_token: None,
            status_context: DEFAULT_STATUS_CONTEXT.to_string(),
        }
    }
}

impl fmt::Debug for ApiSettings {
    // Hand-written so that the token never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSettings")
            .field("api_url", &self.api_url)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("status_context", &self.status_context)
            .finish()
    }
}

/// A commit status state, as GitHub names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

impl StatusState {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("`{0}` is not a repository name of the form owner/name")]
    InvalidRepo(String),
    #[error("[github] api_url `{url}` is not usable: {reason}")]
    InvalidApiUrl { url: String, reason: String },
    #[error("the GitHub client must be created inside the Tokio runtime")]
    NoRuntime,
    #[error("could not build the GitHub client: {0}")]
    Client(#[source] octocrab::Error),
    #[error("GitHub could not be reached: {0}")]
    Transport(#[source] octocrab::Error),
    #[error("reading GitHub's answer failed: {0}")]
    Body(String),
    #[error("GitHub's answer is over the {limit}-byte limit")]
    BodyTooLarge { limit: usize },
    #[error("GitHub answered {status} to {what}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what} not found on GitHub")]
    NotFound { what: String },
    #[error("{path} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        path: String,
        size: u64,
        limit: usize,
    },
    #[error("{path} at {git_ref} is a {kind}, not a file")]
    NotAFile {
        path: String,
        git_ref: String,
        kind: String,
    },
    #[error("GitHub sent an answer ZeroCI cannot read for {what}: {reason}")]
    Unexpected { what: String, reason: String },
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp {
        attempts: u32,
        #[source]
        last: Box<GitHubError>,
    },
}

impl GitHubError {
    /// GitHub could not answer for now (no connection, a broken answer, a server error, rate
    /// limiting), as opposed to an answer that says something is wrong with the request.
    pub fn is_unavailable(&self) -> bool {
        match self {
            GitHubError::Transport(_) | GitHubError::Body(_) => true,
            GitHubError::Status { status, .. } => *status >= 500 || matches!(status, 403 | 429),
            GitHubError::GaveUp { last, .. } => last.is_unavailable(),
            _ => false,
        }
    }
}

/// A GitHub REST client. Cheap to clone (octocrab shares its connection pool).
#[derive(Clone)]
pub struct GitHubApi {
    client: Octocrab,
    /// Scheme and authority of the web host (`https://github.com`, `https://ghe.example.com`).
    web_base: String,
    token: Option<String>,
    status_context: String,
    backoff: RetryPolicy,
}

impl fmt::Debug for GitHubApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubApi")
            .field("web_base", &self.web_base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("status_context", &self.status_context)
            .finish()
    }
}

/// The web host of a GitHub API (`https://github.com` for `https://api.github.com`; GitHub Enterprise
/// serves the API under `/api/v3` and its pages at the host's root).
pub(super) fn web_base(api_url: &str) -> Result<String, GitHubError> {
    let invalid = |reason: &str| GitHubError::InvalidApiUrl {
        url: api_url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = api_url
        .trim_end_matches('/')
        .parse()
        .map_err(|_| invalid("not a URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(invalid(
            "needs a scheme and a host, e.g. https://ghe.example.com/api/v3",
        ));
    };
    Ok(if authority.host() == "api.github.com" {
        "https://github.com".to_string()
    } else {
        format!("{scheme}://{authority}")
    })
}

impl GitHubApi {
    /// Must be called inside a Tokio runtime: octocrab spawns its connection-pool worker on creation
    /// (outside one it would panic; here it is [`GitHubError::NoRuntime`]).
    pub fn new(settings: &ApiSettings) -> Result<Self, GitHubError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(GitHubError::NoRuntime);
        }
        let api_url = settings.api_url.trim_end_matches('/');
        let web_base = web_base(api_url)?;
        let token = settings.access_token.as_deref().filter(|t| !t.is_empty());
        let client = exchange::client(api_url, token, None)?;
        Ok(GitHubApi {
            client,
            web_base,
            token: settings.access_token.clone().filter(|t| !t.is_empty()),
            status_context: settings.status_context.clone(),
            backoff: RetryPolicy::default(),
        })
    }

    /// Replaces the retry schedule (tests use a millisecond base).
    pub fn with_retry_policy(mut self, backoff: RetryPolicy) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn status_context(&self) -> &str {
        &self.status_context
    }

    /// `https://github.com/owner/name.git`, or the Enterprise host's equivalent.
    pub fn clone_url(&self, repo: &str) -> Result<String, GitHubError> {
        let (owner, name) = split_repo(repo)?;
        Ok(format!("{}/{owner}/{name}.git", self.web_base))
    }

    /// The clone URL with the access token in it (`https://x-access-token:TOKEN@host/owner/name.git`),
    /// for agents cloning private repositories; the plain URL when no token is configured.
    ///
    /// The result is a credential: it must never be logged, stored in a job record or shown in a UI;
    /// hand it to the agent as a secret (masked in job output) and log [`GitHubApi::clone_url`] instead.
    pub fn authenticated_clone_url(&self, repo: &str) -> Result<String, GitHubError> {
        let (owner, name) = split_repo(repo)?;
        let Some(token) = &self.token else {
            return self.clone_url(repo);
        };
        let (scheme, host) = self
            .web_base
            .split_once("://")
            .unwrap_or(("https", self.web_base.as_str()));
        let token = utf8_percent_encode(token, COMPONENT);
        Ok(format!(
            "{scheme}://x-access-token:{token}@{host}/{owner}/{name}.git"
        ))
    }

    /// The file at `path` in `repo` at `git_ref` (a commit SHA, branch or tag); `None` when the file,
    /// the ref or the repository does not exist (GitHub answers 404 for all three, and for private
    /// repositories the token cannot see).
    pub async fn file_at(
        &self,
        repo: &str,
        path: &str,
        git_ref: &str,
    ) -> Result<Option<Vec<u8>>, GitHubError> {
        let (owner, name) = split_repo(repo)?;
        let route = format!(
            "/repos/{owner}/{name}/contents/{}?ref={}",
            encode_path(path),
            utf8_percent_encode(git_ref, COMPONENT)
        );
        let what = format!("{path} at {git_ref} in {repo}");
        let json_get = Method::Get {
            accept: JSON_MEDIA_TYPE,
        };
        let reply = self.exchange(&route, &json_get, MAX_JSON_BYTES).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let value: serde_json::Value = parse_json(&reply, &what)?;
        if value.is_array() {
            // The contents API answers a directory with the list of its entries.
            return Err(GitHubError::NotAFile {
                path: path.to_string(),
                git_ref: git_ref.to_string(),
                kind: "directory".to_string(),
            });
        }
        let entry: ContentEntry =
            serde_json::from_value(value).map_err(|e| unexpected(&what, e.to_string()))?;
        if entry.kind != "file" {
            return Err(GitHubError::NotAFile {
                path: path.to_string(),
                git_ref: git_ref.to_string(),
                kind: entry.kind,
            });
        }
        if entry.size > MAX_FILE_BYTES as u64 {
            return Err(too_large(path, entry.size));
        }
        match entry.encoding.as_deref() {
            Some("base64") => {
                // GitHub wraps the base64 at 60 columns.
                let packed: Vec<u8> = entry
                    .content
                    .unwrap_or_default()
                    .bytes()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                base64::engine::general_purpose::STANDARD
                    .decode(packed)
                    .map(Some)
                    .map_err(|e| unexpected(&what, format!("bad base64 content: {e}")))
            }
            // Files of 1-100 MiB come with `encoding: none` and no content; the raw media type
            // returns the bytes themselves.
            Some("none") | None => {
                let raw_get = Method::Get {
                    accept: RAW_MEDIA_TYPE,
                };
                let reply = self.exchange(&route, &raw_get, MAX_FILE_BYTES).await;
                match reply {
                    Ok(r) if r.status == StatusCode::NOT_FOUND => Ok(None),
                    Ok(r) => Ok(Some(check_ok(r, &what)?.body.to_vec())),
                    Err(GitHubError::BodyTooLarge { .. }) => Err(too_large(path, entry.size)),
                    Err(e) => Err(e),
                }
            }
            Some(other) => Err(unexpected(&what, format!("unknown encoding `{other}`"))),
        }
    }

    /// The SHA of the latest commit on `branch` (for manual runs and schedules).
    pub async fn branch_head(&self, repo: &str, branch: &str) -> Result<String, GitHubError> {
        let (owner, name) = split_repo(repo)?;
        let route = format!(
            "/repos/{owner}/{name}/branches/{}",
            utf8_percent_encode(branch, COMPONENT)
        );
        let what = format!("branch {branch} of {repo}");
        let get = Method::Get {
            accept: JSON_MEDIA_TYPE,
        };
        let reply = self.exchange(&route, &get, MAX_JSON_BYTES).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(GitHubError::NotFound { what });
        }
        let branch: BranchEntry = parse_json(&reply, &what)?;
        Ok(branch.commit.sha)
    }

    /// Sets a commit status, with the configured context. Transient failures are retried (see
    /// [`RetryPolicy`]); the caller logs a final error and goes on, since a missing status must never fail
    /// a job (see [`GitHubApi::report_status`]).
    pub async fn set_status(
        &self,
        repo: &str,
        sha: &str,
        state: StatusState,
        target_url: &str,
        description: &str,
    ) -> Result<(), GitHubError> {
        let (owner, name) = split_repo(repo)?;
        let route = format!(
            "/repos/{owner}/{name}/statuses/{}",
            utf8_percent_encode(sha, COMPONENT)
        );
        let mut body = serde_json::json!({
            "state": state.as_str(),
            "description": truncate_description(description),
            "context": self.status_context,
        });
        // GitHub rejects an empty target_url (422); no domain configured means no link.
        if !target_url.is_empty() {
            body["target_url"] = target_url.into();
        }
        let what = format!("the {} status of {repo}@{sha}", state.as_str());
        let reply = self
            .exchange(&route, &Method::Post { body: &body }, MAX_JSON_BYTES)
            .await?;
        check_ok(reply, &what).map(|_| ())
    }

    async fn exchange(
        &self,
        route: &str,
        method: &Method<'_>,
        limit: usize,
    ) -> Result<Reply, GitHubError> {
        exchange::request(&self.client, self.backoff, route, method, limit).await
    }

    /// [`GitHubApi::set_status`] for callers that must not fail: a final error is logged and dropped.
    pub async fn report_status(
        &self,
        repo: &str,
        sha: &str,
        state: StatusState,
        target_url: &str,
        description: &str,
    ) {
        if let Err(e) = self
            .set_status(repo, sha, state, target_url, description)
            .await
        {
            tracing::warn!(repo, sha, state = state.as_str(), error = %e, "GitHub commit status not set");
        }
    }
}

#[derive(Deserialize)]
struct ContentEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    size: u64,
    encoding: Option<String>,
    content: Option<String>,
}

#[derive(Deserialize)]
struct BranchEntry {
    commit: BranchCommit,
}

#[derive(Deserialize)]
struct BranchCommit {
    sha: String,
}

fn split_repo(repo: &str) -> Result<(&str, &str), GitHubError> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    match repo.split_once('/') {
        Some((owner, name)) if ok_part(owner) && ok_part(name) => Ok((owner, name)),
        _ => Err(GitHubError::InvalidRepo(repo.to_string())),
    }
}

/// Each segment escaped, the separating slashes kept (the contents API takes a path).
fn encode_path(path: &str) -> String {
    path.trim_matches('/')
        .split('/')
        .map(|segment| utf8_percent_encode(segment, COMPONENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn truncate_description(description: &str) -> String {
    if description.chars().count() <= MAX_DESCRIPTION_CHARS {
        return description.to_string();
    }
    let mut cut: String = description
        .chars()
        .take(MAX_DESCRIPTION_CHARS - 1)
        .collect();
    cut.push('…');
    cut
}

fn too_large(path: &str, size: u64) -> GitHubError {
    GitHubError::TooLarge {
        path: path.to_string(),
        size,
        limit: MAX_FILE_BYTES,
    }
}

fn unexpected(what: &str, reason: String) -> GitHubError {
    GitHubError::Unexpected {
        what: what.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_escaped_per_segment() {
        assert_eq!(super::encode_path("/.ci/zeroCI.yaml"), ".ci/zeroCI.yaml");
        assert_eq!(super::encode_path("a b/c#d"), "a%20b/c%23d");
    }
}
