//! GitHub as a source of jobs and a place to report them: webhook deliveries in ([`webhook`], pure),
//! REST calls out ([`api`]: the pipeline file at a commit, a branch's head, commit statuses).
//!
//! Kept apart from the engine and the HTTP router so that both sides can be tested alone: the webhook
//! rules against recorded-style payloads, the API client against a fake GitHub on localhost.

pub mod api;
mod exchange;
pub mod oauth;
mod retry;
pub mod webhook;

pub use api::{ApiSettings, GitHubApi, GitHubError, RetryPolicy, StatusState};
pub use webhook::{
    PullRequest, Push, SignatureError, WebhookError, WebhookEvent, parse_event, verify_signature,
};
