//! The result page every link points to (`GET /jobs/{id}`): rendered on the server from a compiled
//! template (askama, `controller/templates/`), readable without JavaScript (status, steps, tests,
//! artifacts, the log's tail); a few lines of plain JavaScript follow a running job's log through
//! `/jobs/{id}/events` from where the rendered tail ends, and reload the page when it is over.
//!
//! Everything a job wrote is escaped by the template; its secrets were masked before it was stored.

use std::sync::Arc;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::logview::{OutputIndexes, Run, WINDOW_BYTES, Want, Window};
use super::session::{Role, Session, Sessions};
use crate::engine::Engine;
use crate::error::ControllerError;
use crate::jobs::JobId;

/// What an artifact's name keeps as is in its link: its path separators and the unreserved marks.
const ARTIFACT_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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
    /// Why the job waits for its machine; empty otherwise.
    waiting_for: String,
    triggered_by: String,
    /// Who made the change; empty when unknown.
    committer: String,
    /// Notifiers that could not deliver the job's latest change.
    notification_failures: Vec<NotificationRow>,
    created: String,
    duration: String,
    steps: Vec<StepRow>,
    reports: Vec<ReportView>,
    artifacts: Vec<ArtifactRow>,
    /// The part of the log shown (its tail unless the address asked for another), as HTML (escaped,
    /// colours as spans): inserted as is.
    log_html: String,
    /// Where the part shown begins, when output came before it (the "earlier output" link).
    earlier: Option<u64>,
    /// Output came after the part shown (the "latest output" link).
    later: bool,
    window_kib: u64,
    /// The cursor (`attempt.seq`) the live stream continues from.
    after: String,
    /// The job runs and the page shows its log's end: new output is appended as it comes.
    live: bool,
    /// "admin" or "viewer" once signed in; empty before.
    signed_in: &'static str,
    /// An admin's CSRF token for the rerun and cancel forms; `None`: no forms.
    csrf: Option<String>,
}

struct NotificationRow {
    notifier: String,
    error: String,
    at: String,
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

/// Which part of the log a page or a part request shows: `?before=OFFSET` or `?line=N`; the tail
/// without either.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LogQuery {
    before: Option<u64>,
    line: Option<u64>,
}

impl LogQuery {
    fn want(&self) -> Want {
        match (self.before, self.line) {
            (Some(offset), _) => Want::Before(offset),
            (None, Some(line)) => Want::Line(line),
            (None, None) => Want::Tail,
        }
    }
}

/// `GET /jobs/{id}`.
pub async fn job_page(
    State(engine): State<Arc<Engine>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Extension(indexes): Extension<Arc<OutputIndexes>>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = id.parse::<JobId>() else {
        return (StatusCode::NOT_FOUND, "no such job\n").into_response();
    };
    let session = sessions.session(&headers, zeroci::now_unix_ms() / 1000);
    match render(&engine, &indexes, id, query.want(), session).await {
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
    indexes: &OutputIndexes,
    id: JobId,
    want: Want,
    session: Option<Session>,
) -> Result<String, ControllerError> {
    let record = engine.job(id).await?;
    let window = indexes
        .window(engine.logs.as_ref(), Run::of(&record), want)
        .await?;
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
        waiting_for: record.waiting_for.clone().unwrap_or_default(),
        triggered_by: record.triggered_by.clone(),
        committer: record.committer.clone().unwrap_or_default(),
        // Best effort: a page without them beats no page.
        notification_failures: engine
            .notification_failures(id)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(job_id = id, %error, "cannot read the job's notification failures");
                Vec::new()
            })
            .into_iter()
            .map(|f| NotificationRow {
                notifier: f.notifier,
                error: f.error,
                at: clock(f.at),
            })
            .collect(),
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
        log_html: window_html(&window),
        earlier: (window.start > 0).then_some(window.start),
        later: window.end < window.total,
        window_kib: WINDOW_BYTES / 1024,
        after: format!("{}.{}", window.through.attempt, window.through.seq),
        live: !record.status.is_final() && window.end == window.total,
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

fn window_html(window: &Window) -> String {
    let text = String::from_utf8_lossy(&window.bytes);
    super::ansi::to_html(&text, Some(window.first_line))
}

/// `GET /jobs/{id}/log/part?before=OFFSET`: the part of the log before that offset as the page's HTML,
/// for its "earlier output" link; `X-Log-Start` says where the part begins (0: the log's start).
pub async fn log_part(
    State(engine): State<Arc<Engine>>,
    Extension(indexes): Extension<Arc<OutputIndexes>>,
    Path(id): Path<JobId>,
    Query(query): Query<LogQuery>,
) -> Response {
    let part = async {
        let record = engine.job(id).await?;
        indexes
            .window(engine.logs.as_ref(), Run::of(&record), query.want())
            .await
    };
    match part.await {
        Ok(window) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
                (header::CACHE_CONTROL, "no-cache".to_string()),
                (
                    header::HeaderName::from_static("x-log-start"),
                    window.start.to_string(),
                ),
            ],
            window_html(&window),
        )
            .into_response(),
        Err(ControllerError::NotFound(what)) => {
            (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
        }
        Err(error) => {
            tracing::warn!(job_id = id, %error, "log part");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
        }
    }
}

/// `2026-12-04 03:55:01 UTC`, or a dash before it happened.
pub fn clock(ms: i64) -> String {
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
