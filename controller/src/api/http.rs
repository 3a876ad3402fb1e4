//! The controller's HTTP listener (axum): health, and plain downloads of what a job produced, so a
//! result link works in a browser or with curl. Webhooks, result pages and badges join this router.
//!
//! Every handler streams from the journal; nothing is buffered whole.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use zeroci::pb;

use crate::engine::Engine;
use crate::error::ControllerError;
use crate::jobs::JobId;

/// The routes, ready for `axum::serve`.
pub fn router(engine: Arc<Engine>) -> Router {
    let body_limit = engine
        .config
        .github
        .as_ref()
        .and_then(|g| g.max_body_bytes)
        .unwrap_or(crate::github::webhook::MAX_BODY_BYTES);
    let main = &engine.config.main;
    let sessions = super::session::Sessions::open(&main.state_dir, &engine.config.web, &main.domain)
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "no session key in the state directory: page sign-ins end with this process");
            super::session::Sessions::ephemeral(&engine.config.web, &main.domain)
        });
    // What a job shows; behind a sign-in when `[web] public = false`.
    let reading = Router::new()
        .route("/", get(super::listing::dashboard))
        .route("/repos", get(super::listing::history))
        .route("/jobs/{id}", get(super::pages::job_page))
        .route("/jobs/{id}/log", get(raw_log))
        .route("/jobs/{id}/log/part", get(super::pages::log_part))
        .route("/jobs/{id}/events", get(super::events::events))
        .route("/jobs/{id}/artifacts/{*name}", get(artifact))
        .route_layer(axum::middleware::from_fn(super::actions::require_reader));
    Router::new()
        .merge(reading)
        .route("/healthz", get(super::status::healthz))
        .route("/metrics", get(super::status::metrics))
        .route("/status", get(super::status::badge))
        .route(
            "/login",
            get(super::actions::login_form).post(super::actions::login),
        )
        .route("/logout", post(super::actions::logout))
        .route("/login/github", get(super::github_login::start))
        .route("/login/github/callback", get(super::github_login::callback))
        .route(
            "/api/schedule",
            get(super::schedule_http::get)
                .post(super::schedule_http::add)
                .delete(super::schedule_http::remove),
        )
        .route("/api/schedule_trigger", post(super::schedule_http::trigger))
        .route("/jobs/{id}/rerun", post(super::actions::rerun))
        .route("/jobs/{id}/cancel", post(super::actions::cancel))
        .route(
            "/webhooks/github",
            post(crate::triggers::github_webhook::github),
        )
        // The original ZeroCI's path, so existing webhooks keep working.
        .route(
            "/git_trigger",
            post(crate::triggers::github_webhook::github),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(Arc::new(sessions)))
        .layer(axum::Extension(github_sign_in(&engine)))
        .layer(axum::Extension(Arc::new(
            super::logview::OutputIndexes::default(),
        )))
        .with_state(engine)
}

/// The GitHub OAuth app pages sign in with, when `[github]` has one.
fn github_sign_in(engine: &Engine) -> super::github_login::MaybeGitHubSignIn {
    let github = engine.config.github.as_ref()?;
    let (client_id, client_secret) = github.oauth()?;
    let settings = crate::github::ApiSettings {
        api_url: github
            .api_url
            .clone()
            .unwrap_or_else(|| crate::github::api::DEFAULT_API_URL.to_string()),
        ..Default::default()
    };
    match crate::github::oauth::OAuthApp::new(&settings, client_id, client_secret) {
        Ok(app) => Some(Arc::new(super::github_login::GitHubSignIn::new(
            app,
            &engine.config.main.domain,
        ))),
        Err(error) => {
            tracing::error!(%error, "GitHub sign-in is off: its client cannot be made");
            None
        }
    }
}

/// An error as an HTTP response: the same classes as the gRPC mapping, short text bodies.
struct HttpError(ControllerError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ControllerError::NotFound(_) => StatusCode::NOT_FOUND,
            ControllerError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ControllerError::PermissionDenied(_) | ControllerError::Unauthenticated(_) => {
                StatusCode::FORBIDDEN
            }
            ControllerError::FailedPrecondition(_) => StatusCode::CONFLICT,
            ControllerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = ?self.0, "internal error");
            "internal error in the controller; see its log".to_string()
        } else {
            self.0.to_string()
        };
        (status, format!("{message}\n")).into_response()
    }
}

impl From<ControllerError> for HttpError {
    fn from(e: ControllerError) -> Self {
        HttpError(e)
    }
}

async fn job_record(engine: &Engine, id: JobId) -> Result<crate::jobs::JobRecord, HttpError> {
    Ok(engine.job(id).await?)
}

/// `GET /jobs/{id}/log`: exactly the bytes the job's commands wrote, so far.
async fn raw_log(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<JobId>,
) -> Result<Response, HttpError> {
    job_record(&engine, id).await?;
    let (tx, rx) = mpsc::channel(32);
    let request = crate::engine::logs::LogRequest {
        id,
        follow: false,
        step: None,
        after: crate::store::LogCursor::START,
    };
    tokio::spawn(crate::engine::logs::stream_logs(engine, request, tx));
    let bytes = ReceiverStream::new(rx).filter_map(|event| match event {
        Ok(pb::LogEvent {
            kind: Some(pb::log_event::Kind::Output(out)),
            ..
        }) => Some(Ok(out.data)),
        Ok(_) => None,
        Err(status) => Some(Err(std::io::Error::other(status.message().to_string()))),
    });
    // The job chose these bytes: never let a browser take them for a page.
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Body::from_stream(bytes),
    )
        .into_response())
}

/// `GET /jobs/{id}/artifacts/{name}`: a file the job kept.
async fn artifact(
    State(engine): State<Arc<Engine>>,
    Path((id, name)): Path<(JobId, String)>,
) -> Result<Response, HttpError> {
    let record = job_record(&engine, id).await?;
    let (name, attempt) = crate::engine::reports::find_artifact(&record, &name)?;
    let file_name = std::path::Path::new(&name)
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\\'], "_"))
        .unwrap_or_else(|| "artifact".to_string());
    let pieces = crate::engine::reports::artifact_stream(engine, record, name, attempt);
    let bytes = pieces.map(|piece| {
        piece
            .map(|p| p.data)
            .map_err(|status| std::io::Error::other(status.message().to_string()))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        Body::from_stream(bytes),
    )
        .into_response())
}
