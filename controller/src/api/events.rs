//! `GET /jobs/{id}/events`: a job's log as Server-Sent Events, live while it runs, for the job page.
//!
//! Each event's `id` is its log cursor (`attempt.seq`), so a browser that lost the connection resumes
//! with `Last-Event-ID` exactly after the last event it saw: no line lost, none repeated. A page can
//! also start from a cursor of its own with `?after=attempt.seq` (the tail it already rendered).
//!
//! Events: `output` `{"step", "stream", "b64"}` (the bytes exactly as written, base64: a chunk may end
//! inside a UTF-8 character, which the page decodes per step as a stream); `step` `{"index", "name",
//! "status", "exit_code"}` when a step starts or ends; `done` `{"status", "reason"}` last, after
//! which the server ends the stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use zeroci::pb;
use zeroci::pb::log_event::Kind;

use crate::engine::Engine;
use crate::engine::logs::LogRequest;
use crate::jobs::JobId;
use crate::store::LogCursor;

/// Comments sent while nothing happens, so proxies keep an idle stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(serde::Deserialize)]
pub struct EventsQuery {
    after: Option<String>,
}

/// `GET /jobs/{id}/events`.
pub async fn events(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<JobId>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = engine.job(id).await {
        let code = match error {
            crate::error::ControllerError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        return (code, format!("{error}\n")).into_response();
    }
    // The browser's own resume point wins over the page's starting point.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(query.after);
    let after = match resume.as_deref().map(parse_cursor) {
        None => LogCursor::START,
        Some(Some(cursor)) => cursor,
        Some(None) => {
            return (
                StatusCode::BAD_REQUEST,
                "a cursor is ATTEMPT.SEQ, as the events' ids\n",
            )
                .into_response();
        }
    };
    let (tx, rx) = mpsc::channel(64);
    let request = LogRequest {
        id,
        follow: true,
        step: None,
        after,
    };
    tokio::spawn(crate::engine::logs::stream_logs(engine, request, tx));
    let stream = ReceiverStream::new(rx).filter_map(|event| match event {
        Ok(event) => to_sse(event).map(Ok::<Event, Infallible>),
        Err(status) => Some(Ok(Event::default()
            .event("error")
            .data(json!({ "message": status.message() }).to_string()))),
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// `attempt.seq`.
fn parse_cursor(text: &str) -> Option<LogCursor> {
    let (attempt, seq) = text.trim().split_once('.')?;
    Some(LogCursor::new(attempt.parse().ok()?, seq.parse().ok()?))
}

fn to_sse(event: pb::LogEvent) -> Option<Event> {
    let id = event.cursor.map(|c| format!("{}.{}", c.attempt, c.seq));
    let (name, data) = match event.kind? {
        Kind::Output(out) => (
            "output",
            json!({
                "step": out.step,
                "stream": if out.stream == pb::OutputStream::Stderr as i32 { "stderr" } else { "stdout" },
                "b64": base64::engine::general_purpose::STANDARD.encode(&out.data),
            }),
        ),
        Kind::StepStarted(step) | Kind::StepFinished(step) => (
            "step",
            json!({
                "index": step.index,
                "name": step.name,
                "status": step.status().word(),
                "exit_code": step.exit_code,
            }),
        ),
        Kind::JobDone(job) => (
            "done",
            json!({
                "status": job.status().word(),
                "reason": job.reason,
            }),
        ),
    };
    let mut sse = Event::default().event(name).data(data.to_string());
    if let Some(id) = id {
        sse = sse.id(id);
    }
    Some(sse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_attempt_dot_seq() {
        assert_eq!(parse_cursor("2.15"), Some(LogCursor::new(2, 15)));
        assert_eq!(parse_cursor(" 1.0 "), Some(LogCursor::new(1, 0)));
        for bad in ["", "1", "a.b", "1.-2", "1.2.3"] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }
}
