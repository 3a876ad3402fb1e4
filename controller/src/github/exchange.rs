//! One exchange with the GitHub REST API: send a request through octocrab, read the answer (bounded),
//! retry what is transient (see `retry.rs`). Every HTTP status that is not transient comes back as a
//! [`Reply`] for `api.rs` to interpret, because the same status means different things to different
//! calls (404 is "no such file" for contents and an error for a branch).

use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use octocrab::Octocrab;
use serde::Deserialize;

use super::api::GitHubError;
use super::retry::{Failure, RetryPolicy, with_retries};

/// One HTTP answer, whatever its status, with the body read (bounded).
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: bytes::Bytes,
}

pub(super) enum Method<'a> {
    Get { accept: &'static str },
    Post { body: &'a serde_json::Value },
}

/// A client for `base` (requests name paths below it), with `token` as a bearer token and `accept` as
/// every request's Accept header when given. Octocrab's own retries are off: [`request`] decides.
pub(super) fn client(
    base: &str,
    token: Option<&str>,
    accept: Option<&'static str>,
) -> Result<Octocrab, GitHubError> {
    use octocrab::service::middleware::retry::RetryConfig;
    let mut builder = Octocrab::builder()
        .add_retry_config(RetryConfig::None)
        .set_connect_timeout(Some(std::time::Duration::from_secs(10)))
        .set_read_timeout(Some(std::time::Duration::from_secs(30)));
    if let Some(token) = token {
        builder = builder.personal_token(token.to_string());
    }
    if let Some(accept) = accept {
        builder = builder.add_header(header::ACCEPT, accept.to_string());
    }
    builder
        .base_uri(base.trim_end_matches('/'))
        .map_err(|_| GitHubError::InvalidApiUrl {
            url: base.to_string(),
            reason: "not a URL".into(),
        })?
        .build()
        .map_err(GitHubError::Client)
}

/// Sends one request with retries; any HTTP status that is not transient comes back as a [`Reply`]
/// for the caller to interpret (404 means different things to different calls).
pub(super) async fn request(
    client: &Octocrab,
    backoff: RetryPolicy,
    route: &str,
    method: &Method<'_>,
    limit: usize,
) -> Result<Reply, GitHubError> {
    let outcome = with_retries(backoff, route, || async {
        match send_once(client, route, method, limit).await {
            Ok(reply) => Failure::classify(reply),
            Err(e) => Err(Failure::of_error(e)),
        }
    })
    .await;
    match outcome {
        Ok(reply) => Ok(reply),
        Err((attempts, failure)) => {
            // Only an exhausted retry says so; a fatal error after a retry is reported as itself.
            let exhausted = failure.is_retry();
            let last = failure.into_error(route);
            Err(if exhausted && attempts > 1 {
                GitHubError::GaveUp {
                    attempts,
                    last: Box::new(last),
                }
            } else {
                last
            })
        }
    }
}

async fn send_once(
    client: &Octocrab,
    route: &str,
    method: &Method<'_>,
    limit: usize,
) -> Result<Reply, GitHubError> {
    let response = match method {
        Method::Get { accept } => {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            client._get_with_headers(route, Some(headers)).await
        }
        Method::Post { body } => client._post(route, Some(*body)).await,
    }
    .map_err(GitHubError::Transport)?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                GitHubError::BodyTooLarge { limit }
            } else {
                GitHubError::Body(e.to_string())
            }
        })?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// The reply if it is a success, else an error carrying GitHub's `message`.
pub(super) fn check_ok(reply: Reply, what: &str) -> Result<Reply, GitHubError> {
    if reply.status.is_success() {
        Ok(reply)
    } else {
        Err(status_error(&reply, what))
    }
}

pub(super) fn status_error(reply: &Reply, what: &str) -> GitHubError {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    let message = serde_json::from_slice::<Message>(&reply.body)
        .map(|m| m.message)
        .unwrap_or_else(|_| {
            String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect()
        });
    GitHubError::Status {
        what: what.to_string(),
        status: reply.status.as_u16(),
        message,
    }
}

pub(super) fn parse_json<T: for<'de> Deserialize<'de>>(
    reply: &Reply,
    what: &str,
) -> Result<T, GitHubError> {
    if !reply.status.is_success() {
        return Err(status_error(reply, what));
    }
    serde_json::from_slice(&reply.body).map_err(|e| GitHubError::Unexpected {
        what: what.to_string(),
        reason: e.to_string(),
    })
}
