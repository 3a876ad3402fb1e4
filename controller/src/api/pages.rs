//! The result page every link points to (`GET /jobs/{id}`): rendered on the server from a compiled
//! template (askama, `controller/templates/`), readable without JavaScript (status, steps, tests,
//! artifacts, the log's tail); a few lines of plain JavaScript follow a running job's log through
//! `/jobs/{id}/events` from where the rendered tail ends, and reload the page when it is over.
//!
//! Everything a job wrote is escaped by the template; its secrets were masked before it was stored.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::session::{Role, Session, Sessions};
use crate::engine::Engine;
use crate::error::ControllerError;
use crate::jobs::{JobId, JobRecord};
use crate::store::{EventKind, LogCursor, Payloads};

/// What an artifact's name keeps as is in its link: its path separators and the unreserved marks.
const ARTIFACT_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How much of the log's end the page shows; the rest is in the raw log.
const TAIL_BYTES: usize = 64 * 1024;

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    id: JobId,
    repo: String,
    ref_name: String,
    commit: String,
    commit_url: Option<String>,
    status: String,
    reason: String,
    triggered_by: String,
    created: String,
    duration: String,
    steps: Vec<StepRow>,
    reports: Vec<ReportView>,
    artifacts: Vec<ArtifactRow>,
    /// The tail as HTML (escaped, colours as spans): inserted as is.
    log_html: String,
    log_truncated: bool,
    tail_kib: usize,
    /// The cursor (`attempt.seq`) the live stream continues from.
    after: String,
    live: bool,
    /// "admin" or "viewer" once signed in; empty before.
    signed_in: &'static str,
    /// An admin's CSRF token for the rerun and cancel forms; `None`: no forms.
    csrf: Option<String>,
}

struct StepRow {
    index: u32,
    name: String,
    status: String,
    duration: String,
    exit: String,
    message: String,
}

struct ReportView {
    step: String,
    total: u32,
    failed: u32,
    errors: u32,
    skipped: u32,
    error: String,
    cases: Vec<CaseRow>,
}

struct CaseRow {
    status: String,
    /// The badge colour class (`failure` for failed ones).
    css: &'static str,
    classname: String,
    name: String,
    message: String,
    details: String,
}

struct ArtifactRow {
    name: String,
    href: String,
    size: u64,
    error: String,
}

/// `GET /jobs/{id}`.
pub async fn job_page(
    State(engine): State<Arc<Engine>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = id.parse::<JobId>() else {
        return (StatusCode::NOT_FOUND, "no such job\n").into_response();
    };
    let session = sessions.session(&headers, zeroci::now_unix_ms() / 1000);
    match render(&engine, id, session).await {
        Ok(html) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            html,
        )
            .into_response(),
        Err(ControllerError::NotFound(what)) => {
            (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
        }
        Err(error) => {
            tracing::warn!(job_id = id, %error, "job page");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
        }
    }
}

async fn render(
    engine: &Arc<Engine>,
    id: JobId,
    session: Option<Session>,
) -> Result<String, ControllerError> {
    let record = engine.job(id).await?;
    let (tail, truncated, after) = log_tail(engine, &record).await?;
    let reports = crate::engine::reports::test_reports(engine, id, None).await?;
    let page = JobPage {
        id,
        repo: record.repo.clone(),
        ref_name: record.ref_name.clone(),
        commit: record.commit.clone(),
        commit_url: record
            .github_repo
            .as_ref()
            .map(|repo| format!("https://github.com/{repo}/commit/{}", record.commit)),
        status: record.status.word(),
        reason: record.reason.clone(),
        triggered_by: record.triggered_by.clone(),
        created: clock(record.created_at),
        duration: duration(record.started_at, record.finished_at),
        steps: record
            .steps
            .iter()
            .map(|s| StepRow {
                index: s.index,
                name: s.name.clone(),
                status: s.status.to_pb().word(),
                duration: duration(s.started_at, s.finished_at),
                exit: s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                message: s.message.clone(),
            })
            .collect(),
        reports: reports
            .into_iter()
            .map(|r| {
                let totals = r.totals.unwrap_or_default();
                ReportView {
                    step: record
                        .steps
                        .iter()
                        .find(|s| s.index == r.step)
                        .map_or_else(|| r.step.to_string(), |s| s.name.clone()),
                    total: totals.total,
                    failed: totals.failed,
                    errors: totals.errors,
                    skipped: totals.skipped,
                    error: r.error,
                    cases: r
                        .cases
                        .into_iter()
                        .map(|c| CaseRow {
                            css: match c.status.as_str() {
                                "passed" => "success",
                                "failed" => "failure",
                                "error" => "error",
                                _ => "skipped",
                            },
                            status: c.status,
                            classname: c.classname,
                            name: c.name,
                            message: c.message,
                            details: c.details,
                        })
                        .collect(),
                }
            })
            .collect(),
        artifacts: record
            .artifacts
            .iter()
            .map(|a| ArtifactRow {
                href: utf8_percent_encode(&a.name, ARTIFACT_PATH).to_string(),
                name: a.name.clone(),
                size: a.size,
                error: a.error.clone(),
            })
            .collect(),
        log_html: tail,
        log_truncated: truncated,
        tail_kib: TAIL_BYTES / 1024,
        after: format!("{}.{}", after.attempt, after.seq),
        live: !record.status.is_final(),
        signed_in: match session.as_ref().map(|s| s.role) {
            Some(Role::Admin) => "admin",
            Some(Role::Viewer) => "viewer",
            None => "",
        },
        csrf: session.filter(|s| s.role == Role::Admin).map(|s| s.csrf),
    };
    page.render()
        .map_err(|e| ControllerError::Internal(format!("job page: {e}")))
}

/// The last [`TAIL_BYTES`] of the job's output (from a line start, as HTML with its colours), whether
/// earlier output was left out, and the cursor of the last event read.
async fn log_tail(
    engine: &Engine,
    record: &JobRecord,
) -> Result<(String, bool, LogCursor), ControllerError> {
    let mut tail: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut dropped = false;
    // Lines that left the tail, so its lines keep their numbers in the whole log.
    let mut lines_before: u64 = 0;
    let mut last = LogCursor::START;
    let mut events = engine.logs.read(record.id, LogCursor::START, Payloads::All);
    while let Some(event) = events.next().await {
        let event = event?;
        last = event.cursor;
        if event.kind != EventKind::Output || event.cursor.attempt < record.first_attempt {
            continue;
        }
        tail.extend(event.payload.iter());
        if tail.len() > TAIL_BYTES {
            let cut = tail.len() - TAIL_BYTES;
            lines_before += tail.range(..cut).filter(|b| **b == b'\n').count() as u64;
            tail.drain(..cut);
            dropped = true;
        }
    }
    let bytes: Vec<u8> = tail.into_iter().collect();
    // A cut tail starts at its first whole line.
    let start = if dropped {
        bytes.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1)
    } else {
        0
    };
    let first_line =
        lines_before + bytes[..start].iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let text = String::from_utf8_lossy(&bytes[start..]);
    Ok((super::ansi::to_html(&text, Some(first_line)), dropped, last))
}

/// `2026-12-04 03:55:01 UTC`, or a dash before it happened.
pub(super) fn clock(ms: i64) -> String {
    if ms <= 0 {
        return "–".into();
    }
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "–".into())
}

/// `1.2s`, `3m04s`; a dash when it has not started, "running" while it runs.
pub(super) fn duration(started: i64, finished: i64) -> String {
    if started <= 0 {
        return "–".into();
    }
    if finished <= 0 {
        return "running".into();
    }
    let secs = (finished - started).max(0) as f64 / 1000.0;
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_stripped_and_times_read_well() {
        assert_eq!(duration(0, 0), "–");
        assert_eq!(duration(1_000, 0), "running");
        assert_eq!(duration(1_000, 2_500), "1.5s");
        assert_eq!(duration(1, 184_001), "3m04s");
        assert_eq!(clock(1_796_356_501_000), "2026-12-04 03:55:01 UTC");
    }
}
