//! When and how long to retry a GitHub call.
//!
//! GitHub has brief 5xx spells and rate limits; a commit status lost to one of those leaves a pull
//! request without its mark, so calls are retried a few times with capped, jittered exponential backoff
//! (jitter keeps many jobs finishing together from retrying in lockstep). Client errors other than rate
//! limiting (404, 422, a 403 without rate-limit headers) are answers, not accidents: never retried.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use zeroci::backoff::Backoff;

use super::api::GitHubError;
use super::exchange::{Reply, status_error};

/// How often and how patiently to retry: up to `attempts` tries in all, waiting between them as
/// [`zeroci::backoff::Backoff`] paces them from `base` to `cap`, raised to the server's `Retry-After`
/// hint (still capped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts in all, the first included.
    pub attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            attempts: 4,
        }
    }
}

/// The wait before the next attempt: the backoff's pick, raised to the server's hint, capped.
fn next_delay(pacing: &mut Backoff, hint: Option<Duration>) -> Duration {
    pacing
        .next_delay()
        .max(hint.unwrap_or_default())
        .min(pacing.cap())
}

/// Why one attempt did not produce an answer to hand back.
pub(super) enum Failure {
    /// Worth another attempt; `after` is the server's own hint.
    Retry {
        cause: Cause,
        after: Option<Duration>,
    },
    Fatal(GitHubError),
}

pub(super) enum Cause {
    // Boxed: a header map is large, and failures travel through `Result`s.
    Reply(Box<Reply>),
    Error(GitHubError),
}

impl Failure {
    /// A reply is a failure only when it is transient (5xx, or rate limiting); any other status is an
    /// answer for the caller.
    pub(super) fn classify(reply: Reply) -> Result<Reply, Failure> {
        let status = reply.status;
        let headers = &reply.headers;
        let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (headers.contains_key(http::header::RETRY_AFTER)
                    || header_str(headers, "x-ratelimit-remaining") == Some("0")));
        if status.is_server_error() || rate_limited {
            let after = rate_limit_hint(headers);
            Err(Failure::Retry {
                cause: Cause::Reply(Box::new(reply)),
                after,
            })
        } else {
            Ok(reply)
        }
    }

    /// Connection errors, timeouts and broken bodies are transient; a request ZeroCI could not even
    /// build, or an answer over the size limit, is not.
    pub(super) fn of_error(error: GitHubError) -> Failure {
        let transient = match &error {
            GitHubError::Transport(e) => matches!(
                e,
                octocrab::Error::Service { .. } | octocrab::Error::Hyper { .. }
            ),
            GitHubError::Body(_) => true,
            _ => false,
        };
        if transient {
            Failure::Retry {
                cause: Cause::Error(error),
                after: None,
            }
        } else {
            Failure::Fatal(error)
        }
    }

    pub(super) fn is_retry(&self) -> bool {
        matches!(self, Failure::Retry { .. })
    }

    pub(super) fn into_error(self, what: &str) -> GitHubError {
        match self {
            Failure::Retry {
                cause: Cause::Reply(reply),
                ..
            } => status_error(&reply, what),
            Failure::Retry {
                cause: Cause::Error(e),
                ..
            }
            | Failure::Fatal(e) => e,
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Retry {
                cause: Cause::Reply(reply),
                ..
            } => format!("HTTP {}", reply.status),
            Failure::Retry {
                cause: Cause::Error(e),
                ..
            }
            | Failure::Fatal(e) => e.to_string(),
        }
    }
}

/// Runs `attempt` until it succeeds, fails fatally, or `policy.attempts` are used up; the error comes
/// with the number of attempts made.
pub(super) async fn with_retries<T, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    mut attempt: F,
) -> Result<T, (u32, Failure)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let attempts = policy.attempts.max(1);
    let mut pacing = Backoff::new(policy.base, policy.cap);
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure @ Failure::Fatal(_)) => return Err((n, failure)),
            Err(failure @ Failure::Retry { .. }) if n >= attempts => return Err((n, failure)),
            Err(failure @ Failure::Retry { after, .. }) => {
                let delay = next_delay(&mut pacing, after);
                tracing::warn!(
                    what,
                    attempt = n,
                    of = attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %failure.describe(),
                    "GitHub call failed; retrying"
                );
                tokio::time::sleep(delay).await;
                n += 1;
            }
        }
    }
}

fn header_str<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// `Retry-After` (seconds), else the time until `x-ratelimit-reset` (epoch seconds) when the limit is
/// spent.
fn rate_limit_hint(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(secs) = header_str(headers, "retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if header_str(headers, "x-ratelimit-remaining") != Some("0") {
        return None;
    }
    let reset = header_str(headers, "x-ratelimit-reset")?
        .parse::<u64>()
        .ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_cap_and_a_server_hint_raises_them() {
        let policy = RetryPolicy::default();
        let mut pacing = Backoff::new(policy.base, policy.cap);
        for _ in 0..100 {
            assert!(next_delay(&mut pacing, None) <= policy.cap);
        }
        let mut pacing = Backoff::new(policy.base, policy.cap);
        assert_eq!(
            next_delay(&mut pacing, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            next_delay(&mut pacing, Some(Duration::from_secs(3600))),
            policy.cap
        );
    }

    fn reply(status: u16, headers: &[(&'static str, &'static str)]) -> Reply {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, http::HeaderValue::from_static(v));
        }
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body: bytes::Bytes::new(),
        }
    }

    fn transient(status: u16, headers: &[(&'static str, &'static str)]) -> bool {
        Failure::classify(reply(status, headers)).is_err()
    }

    #[test]
    fn which_answers_are_transient() {
        assert!(transient(500, &[]));
        assert!(transient(502, &[]));
        assert!(transient(503, &[]));
        assert!(transient(429, &[]));
        assert!(transient(403, &[("x-ratelimit-remaining", "0")]));
        assert!(transient(403, &[("retry-after", "30")]));
        assert!(!transient(403, &[("x-ratelimit-remaining", "4999")]));
        assert!(!transient(403, &[]));
        assert!(!transient(401, &[]));
        assert!(!transient(404, &[]));
        assert!(!transient(422, &[]));
        assert!(!transient(201, &[]));
    }

    #[test]
    fn hint_from_headers() {
        let with = |h| match Failure::classify(reply(429, h)) {
            Err(Failure::Retry { after, .. }) => after,
            _ => panic!("429 is transient"),
        };
        assert_eq!(with(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        assert_eq!(with(&[]), None);
        // A reset in the past waits nothing extra.
        assert_eq!(
            with(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")]),
            Some(Duration::ZERO)
        );
    }
}
