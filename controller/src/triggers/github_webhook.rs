//! `POST /webhooks/github` (and the original's `/git_trigger`): GitHub deliveries in, jobs out.
//!
//! Order of checks, each with its answer: webhooks configured (404) → signature over the exact body
//! (401) → event parsed (400) → pings answered (200) → ignored events, deleted branches, tags and
//! unknown repositories explained (200) → the pipeline file read at the commit through the contents API
//! and `run_on` honoured (200 when it does not match) → the delivery id and the body's hash claimed
//! (200 for a redelivery or a replayed body) → the job queued (202). Bodies over the limit are refused
//! with 413 before any of this.
//!
//! A file GitHub refuses to give (not a file, too large) is answered 502 with the reason.
//! When GitHub's API cannot be reached (after the client's own retries) the delivery is still
//! accepted: GitHub does not redeliver by itself, so answering 502 would lose the commit. The job is
//! queued with its `run_on` check left to the checkout, which reads the same file from the clone and
//! ends the job `skipped` when `run_on` excludes the event.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{info, warn};

use crate::engine::Engine;
use crate::github::webhook::{DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, repo_allowed};
use crate::github::{WebhookEvent, parse_event, verify_signature};
use crate::jobs::{NewJob, RunOnCheck};
use crate::schedules::service::PushedBranch;

/// What a runnable delivery asks for.
struct Trigger {
    repo: String,
    clone_url: String,
    commit: String,
    /// The branch recorded with the job (the head branch for pull requests).
    branch: String,
    /// `push` or `pull_request`: the `run_on` key that must allow it.
    event: &'static str,
    /// The branch `run_on` filters on: the pushed branch, or a pull request's base branch.
    filter_branch: String,
    by: String,
    /// Who made the change: the head commit's author, or the pull request's opener.
    committer: Option<String>,
    /// A fork's pull request: runs without the token and the repository's secrets.
    untrusted: bool,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
    (status, json, format!("{body}\n")).into_response()
}

fn ignored(reason: impl Into<String>) -> Response {
    answer(StatusCode::OK, json!({ "ignored": reason.into() }))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Forgets claimed delivery keys of a delivery that started no job.
async fn release_all(engine: &Arc<Engine>, claimed: &[String]) {
    for id in claimed {
        if let Err(release) = engine.jobs.release_delivery(id).await {
            warn!(delivery = %id, error = %release, "cannot release the delivery id");
        }
    }
}

/// `POST /webhooks/github`: answers the delivery and counts it by its answer for `/metrics`.
pub async fn github(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = delivery(&engine, &headers, body).await;
    engine.metrics.webhook_delivery(response.status().as_u16());
    response
}

async fn delivery(engine: &Arc<Engine>, headers: &HeaderMap, body: Bytes) -> Response {
    let Some(secret) = engine
        .config
        .github
        .as_ref()
        .and_then(|g| g.webhook_secret.clone())
    else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({ "error": "GitHub webhooks are not configured ([github] webhook_secret)" }),
        );
    };
    if let Err(e) = verify_signature(secret.as_bytes(), &body, header(headers, SIGNATURE_HEADER)) {
        warn!(error = %e, "webhook delivery refused: bad signature");
        return answer(StatusCode::UNAUTHORIZED, json!({ "error": e.to_string() }));
    }
    let Some(event) = header(headers, EVENT_HEADER) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": format!("missing {EVENT_HEADER} header") }),
        );
    };
    let delivery = header(headers, DELIVERY_HEADER)
        .filter(|d| !d.trim().is_empty())
        .map(str::to_string);
    let trigger = match parse_event(event, &body) {
        Err(e) => return answer(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() })),
        Ok(WebhookEvent::Ping { zen, .. }) => {
            return answer(StatusCode::OK, json!({ "message": "pong", "zen": zen }));
        }
        Ok(WebhookEvent::Ignored { reason }) => return ignored(reason),
        Ok(WebhookEvent::Push(push)) => {
            if let Some(reason) = push.skip_reason() {
                if let Some(branch) = &push.branch {
                    // A deleted branch's schedule goes with it.
                    let deleted =
                        PushedBranch::on_github(&push.repo, &push.clone_url, branch, false);
                    engine.follow_run_on_schedule(&deleted, None).await;
                }
                return ignored(reason);
            }
            let Some(branch) = push.branch.clone().filter(|_| push.tag.is_none()) else {
                return ignored(format!(
                    "{} is a tag; ZeroCI builds branches and pull requests",
                    push.git_ref
                ));
            };
            Trigger {
                repo: push.repo,
                clone_url: push.clone_url,
                commit: push.commit,
                filter_branch: branch.clone(),
                branch,
                event: "push",
                committer: push.head_author.or_else(|| Some(push.pusher.clone())),
                by: push.pusher,
                untrusted: false,
            }
        }
        Ok(WebhookEvent::PullRequest(pr)) => Trigger {
            repo: pr.repo,
            clone_url: pr.head_clone_url,
            commit: pr.head_sha,
            branch: pr.head_ref,
            event: "pull_request",
            filter_branch: pr.base_ref,
            committer: Some(pr.sender.clone()),
            by: format!("{} (#{})", pr.sender, pr.number),
            untrusted: pr.from_fork,
        },
    };
    let allowed = engine
        .config
        .github
        .as_ref()
        .is_some_and(|g| repo_allowed(&g.repos, &trigger.repo))
        || engine
            .config
            .repos
            .keys()
            .any(|k| k.eq_ignore_ascii_case(&trigger.repo));
    if !allowed {
        return ignored(format!(
            "repository {} is not configured in [github] repos",
            trigger.repo
        ));
    }
    let run_on_check = match run_on(engine, &trigger).await {
        RunOn::Allowed => None,
        RunOn::Excluded(reason) => return ignored(reason),
        RunOn::Unreadable(error) => {
            return answer(
                StatusCode::BAD_GATEWAY,
                json!({ "error": format!("cannot read zeroCI.yaml from GitHub: {error}") }),
            );
        }
        RunOn::Unread(error) => {
            warn!(repo = %trigger.repo, commit = %trigger.commit, %error,
                "cannot read zeroCI.yaml from GitHub; the job checks run_on at its checkout");
            Some(RunOnCheck {
                event: trigger.event.to_string(),
                branch: trigger.filter_branch.clone(),
            })
        }
    };
    // Deduplicated by the delivery id (kept on GitHub's redeliveries) and by the signed body itself:
    // a captured delivery replayed with a new or no id is the same bytes, while every real event
    // (a push's before/after, a pull request's update) has a body of its own.
    let claims: Vec<String> = delivery
        .iter()
        .cloned()
        .chain([format!(
            "payload:{event}:{}",
            crate::engine::sha256_hex_bytes(&body)
        )])
        .collect();
    let mut claimed = Vec::new();
    for id in &claims {
        match engine.jobs.claim_delivery(id).await {
            Ok(true) => claimed.push(id.clone()),
            Ok(false) => {
                release_all(engine, &claimed).await;
                let what = if id.starts_with("payload:") {
                    "a delivery with this very body".to_string()
                } else {
                    format!("delivery {id}")
                };
                return ignored(format!("{what} was handled already"));
            }
            Err(e) => {
                release_all(engine, &claimed).await;
                return answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({ "error": e.to_string() }),
                );
            }
        }
    }
    let new = NewJob {
        repo: trigger.repo.clone(),
        repo_url: trigger.clone_url,
        ref_name: trigger.branch,
        commit: trigger.commit,
        triggered_by: format!("github {} by {}", trigger.event, trigger.by),
        step_timeout_secs: 0,
        github_repo: Some(trigger.repo),
        untrusted: trigger.untrusted,
        supersede: true,
        committer: trigger.committer,
        run_on_check,
        ..Default::default()
    };
    let checks_at_checkout = new.run_on_check.is_some();
    match engine.submit(new).await {
        Ok(job) => {
            info!(job_id = job.id, delivery = ?delivery, "webhook queued a job");
            let url = crate::jobs::job_url(engine.domain(), job.id);
            let mut body = json!({ "job": job.id, "url": url });
            if checks_at_checkout {
                body["note"] =
                    json!("GitHub's API could not be reached: run_on is checked at the checkout");
            }
            answer(StatusCode::ACCEPTED, body)
        }
        Err(e) => {
            // No job: let GitHub's redelivery (or a retry) try again.
            release_all(engine, &claimed).await;
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": e.to_string() }),
            )
        }
    }
}

/// What `run_on` says of a delivery.
enum RunOn {
    /// Run it (also: no `run_on`, no GitHub API configured, a file that does not parse — the job
    /// then shows every error).
    Allowed,
    /// Not for this event: the reason.
    Excluded(String),
    /// GitHub's API could not be reached: the error.
    Unread(String),
    /// GitHub answered that the file cannot be read (not a file, too large, refused): the error,
    /// answered 502 so the delivery shows failed and can be redelivered once it is fixed.
    Unreadable(String),
}

/// Reads the pipeline file at the commit and applies its `run_on`.
async fn run_on(engine: &Engine, trigger: &Trigger) -> RunOn {
    let Some(api) = &engine.github else {
        return RunOn::Allowed;
    };
    let file = match api
        .file_at(&trigger.repo, zeroci::pipeline::FILE_NAME, &trigger.commit)
        .await
    {
        Ok(file) => file,
        Err(e) if e.is_unavailable() => return RunOn::Unread(e.to_string()),
        Err(e) => return RunOn::Unreadable(e.to_string()),
    };
    let pushed = (trigger.event == "push").then(|| {
        PushedBranch::on_github(
            &trigger.repo,
            &trigger.clone_url,
            &trigger.branch,
            trigger.untrusted,
        )
    });
    let Some(file) = file else {
        if let Some(pushed) = &pushed {
            // No pipeline file any more: no schedule either.
            engine.follow_run_on_schedule(pushed, None).await;
        }
        return RunOn::Excluded(format!(
            "no {} at commit {}",
            zeroci::pipeline::FILE_NAME,
            trigger.commit
        ));
    };
    let Ok(pipeline) = zeroci::pipeline::parse(&file) else {
        return RunOn::Allowed;
    };
    if let Some(pushed) = &pushed {
        // Also when `run_on` filters this push out: the branch may be one only a schedule builds.
        engine
            .follow_run_on_schedule(pushed, pipeline.schedule())
            .await;
    }
    match pipeline.run_on_excludes(trigger.event, &trigger.filter_branch) {
        Some(reason) => RunOn::Excluded(reason),
        None => RunOn::Allowed,
    }
}
