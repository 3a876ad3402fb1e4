//! The original ZeroCI's nightly API, kept for the scripts that call it:
//!
//! - `POST /api/schedule` `{schedule_name, run_time, install, script, prerequisites, timeout}` adds a
//!   commands schedule (`run_time` a cron expression; `install` and `script` a string or a list, a
//!   script item also `{name, cmd}`); ZeroCI's own keys `time_zone`, `repo_url`, `branch` and
//!   `allow_overlap` are accepted too. The first version's `project_name`, `prequisties`,
//!   `install_script` and `test_script` name the same things.
//! - `GET /api/schedule` lists the names; `?schedule_name=` gives one schedule and its latest runs.
//! - `DELETE /api/schedule` `{schedule_name}` removes one.
//! - `POST /api/schedule_trigger` `{schedule_name}` runs one now (503 while its run is still going).
//!
//! Every call needs a `[web]` token, as `Authorization: Bearer <token>` or, as the original took
//! it, in the body's `authentication`: an admin token for changes, any token to read.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::session::{Role, Sessions};
use crate::api::session::{PeerIp, TokenRefused};
use crate::engine::Engine;
use crate::error::ControllerError;
use crate::jobs::job_url;
use crate::schedules::service::TargetRequest;
use crate::schedules::{Schedule, ScheduleSpec, Target};

/// Runs `GET ?schedule_name=` shows.
const RUNS_SHOWN: usize = 20;

fn answer(status: StatusCode, body: Value) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    (status, json, format!("{body}\n")).into_response()
}

/// A refused call: its status and why, answered as `{"error": ...}`.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    error: String,
}

fn refused(status: StatusCode, error: impl Into<String>) -> Refusal {
    Refusal {
        status,
        error: error.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        answer(self.status, json!({ "error": self.error }))
    }
}

impl From<ControllerError> for Refusal {
    fn from(error: ControllerError) -> Refusal {
        let status = match &error {
            ControllerError::NotFound(_) => StatusCode::NOT_FOUND,
            ControllerError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ControllerError::FailedPrecondition(_) => StatusCode::CONFLICT,
            ControllerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => {
                tracing::error!(%error, "schedule API failed");
                return refused(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the controller's log",
                );
            }
        };
        refused(status, error.to_string())
    }
}

/// A command list as the original took it: one string, or a list of strings or `{name, cmd}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Commands {
    One(String),
    Many(Vec<Command>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Command {
    Text(String),
    Named { cmd: String },
}

impl Commands {
    fn into_list(self) -> Vec<String> {
        match self {
            Commands::One(text) if text.trim().is_empty() => Vec::new(),
            Commands::One(text) => vec![text],
            Commands::Many(items) => items
                .into_iter()
                .map(|item| match item {
                    Command::Text(cmd) | Command::Named { cmd } => cmd,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Prerequisites {
    image_name: Option<String>,
}

/// The body of every call; what a call does not use is ignored.
#[derive(Debug, Default, Deserialize)]
struct Body {
    #[serde(alias = "project_name")]
    schedule_name: Option<String>,
    run_time: Option<String>,
    #[serde(alias = "install_script")]
    install: Option<Commands>,
    #[serde(alias = "test_script")]
    script: Option<Commands>,
    #[serde(alias = "prequisties")]
    prerequisites: Option<Prerequisites>,
    timeout: Option<u64>,
    time_zone: Option<String>,
    repo_url: Option<String>,
    branch: Option<String>,
    #[serde(default)]
    allow_overlap: bool,
    authentication: Option<String>,
}

/// The caller's role from the bearer token or the body's `authentication`; the refusal otherwise.
fn role(
    sessions: &Sessions,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: &Body,
) -> Result<Role, Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer.or(body.authentication.as_deref()) else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "a token is required: Authorization: Bearer <one of [web] admin_tokens or viewer_tokens>",
        ));
    };
    sessions
        .role_of_token_from(peer, token.trim())
        .map_err(|refusal| match refusal {
            TokenRefused::Unknown => refused(
                StatusCode::UNAUTHORIZED,
                "the token is not one of [web] admin_tokens or viewer_tokens",
            ),
            TokenRefused::TooManyFailures(wait) => refused(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many wrong tokens from this address; try again in {}s",
                    wait.as_secs().max(1)
                ),
            ),
        })
}

fn admin(
    sessions: &Sessions,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: &Body,
) -> Result<(), Refusal> {
    match role(sessions, peer, headers, body)? {
        Role::Admin => Ok(()),
        Role::Viewer => Err(refused(
            StatusCode::FORBIDDEN,
            "a viewer token may only read schedules",
        )),
    }
}

fn parse_body(bytes: &Bytes) -> Result<Body, Refusal> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("the body is not the JSON expected: {e}"),
        )
    })
}

/// A call that changes a schedule: its body, from an admin, naming the schedule.
fn change(
    sessions: &Sessions,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<(Body, String), Refusal> {
    let body = parse_body(bytes)?;
    admin(sessions, peer, headers, &body)?;
    let name = name_of(&body)?;
    Ok((body, name))
}

fn name_of(body: &Body) -> Result<String, Refusal> {
    body.schedule_name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| refused(StatusCode::BAD_REQUEST, "schedule_name is required"))
}

/// A schedule as the API shows it.
fn schedule_json(engine: &Engine, schedule: &Schedule) -> Value {
    let mut shown = json!({
        "schedule_name": schedule.name,
        "run_time": schedule.cron,
        "time_zone": schedule.time_zone,
        "timeout": schedule.step_timeout_secs,
        "allow_overlap": schedule.allow_overlap,
        "paused": schedule.paused,
        "next_run_ms": schedule.next_at,
        "last_job": schedule.last_job,
        "last_url": schedule.last_job.map(|id| job_url(engine.domain(), id)),
    });
    match &schedule.target {
        Target::Commands {
            image_name,
            install,
            test,
        } => {
            shown["prerequisites"] = json!({ "image_name": image_name });
            shown["install"] = json!(install);
            shown["script"] = json!(test);
        }
        Target::Repository {
            repo_url, ref_name, ..
        } => {
            shown["repo_url"] = json!(repo_url);
            shown["branch"] = json!(ref_name);
        }
    }
    shown
}

/// `POST /api/schedule`.
pub async fn add(
    State(engine): State<Arc<Engine>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Refusal> {
    let (body, name) = change(&sessions, peer, &headers, &bytes)?;
    let Some(cron) = body.run_time.clone() else {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "run_time is required: a cron expression such as \"0 2 * * *\"",
        ));
    };
    let target = engine.schedule_target(TargetRequest {
        repo_url: body.repo_url.unwrap_or_default(),
        repo_name: String::new(),
        ref_name: body.branch.unwrap_or_default(),
        image_name: body
            .prerequisites
            .and_then(|p| p.image_name)
            .unwrap_or_default(),
        install: body.install.map(Commands::into_list).unwrap_or_default(),
        test: body.script.map(Commands::into_list).unwrap_or_default(),
    })?;
    let spec = ScheduleSpec {
        name,
        cron,
        time_zone: body.time_zone.unwrap_or_default(),
        target,
        step_timeout_secs: body.timeout.unwrap_or(0),
        allow_overlap: body.allow_overlap,
    };
    let schedule = engine.add_schedule(spec, "HTTP API").await?;
    Ok(answer(
        StatusCode::CREATED,
        schedule_json(&engine, &schedule),
    ))
}

#[derive(Debug, Deserialize)]
pub struct NameQuery {
    schedule_name: Option<String>,
}

/// `GET /api/schedule[?schedule_name=]`.
pub async fn get(
    State(engine): State<Arc<Engine>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    Query(query): Query<NameQuery>,
) -> Result<Response, Refusal> {
    role(&sessions, peer, &headers, &Body::default())?;
    let Some(name) = query.schedule_name else {
        let all = engine.list_schedules().await?;
        let names: Vec<&String> = all.iter().map(|s| &s.name).collect();
        return Ok(answer(StatusCode::OK, json!(names)));
    };
    let schedule = engine.schedule(&name).await?;
    let runs = engine.schedule_runs(&name, RUNS_SHOWN).await?;
    let mut shown = schedule_json(&engine, &schedule);
    shown["runs"] = runs
        .iter()
        .map(|job| {
            json!({
                "id": job.id,
                "status": job.status.word(),
                "url": job_url(engine.domain(), job.id),
                "created_at_ms": job.created_at,
                "late": job.schedule.as_ref().is_some_and(|run| run.is_late()),
            })
        })
        .collect();
    Ok(answer(StatusCode::OK, shown))
}

/// `DELETE /api/schedule` `{schedule_name}`.
pub async fn remove(
    State(engine): State<Arc<Engine>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Refusal> {
    let (_, name) = change(&sessions, peer, &headers, &bytes)?;
    engine.remove_schedule(&name).await?;
    Ok(answer(StatusCode::OK, json!({ "removed": name })))
}

/// `POST /api/schedule_trigger` `{schedule_name}`.
pub async fn trigger(
    State(engine): State<Arc<Engine>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Refusal> {
    let (_, name) = change(&sessions, peer, &headers, &bytes)?;
    match engine.run_schedule_now(&name, "HTTP API").await {
        Ok(job) => Ok(answer(
            StatusCode::ACCEPTED,
            json!({ "job": job.id, "url": job_url(engine.domain(), job.id) }),
        )),
        // The original answered 503 while the schedule's run was pending.
        Err(ControllerError::FailedPrecondition(message)) => {
            Err(refused(StatusCode::SERVICE_UNAVAILABLE, message))
        }
        Err(error) => Err(error.into()),
    }
}
