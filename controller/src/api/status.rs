//! What monitors and READMEs read over HTTP: `GET /status?repo=&branch=` (the original's SVG badge of
//! the latest finished run, or with `&result=1` a redirect to its page), `GET /metrics` (Prometheus)
//! and `GET /healthz` (the store, the queue and the machines, with 503 when something is down).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::Engine;
use crate::jobs::{JobRecord, JobStatus, job_url};
use crate::store::JobFilter;

/// How many of a repository's newest jobs are searched for a branch's latest finished one.
const BADGE_SEARCH: usize = 500;

/// `GET /status?repo=owner/name&branch=main[&result=1]`, or `?schedule=NAME` for a schedule's runs.
pub async fn badge(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (filter, what) = if let Some(schedule) = query.get("schedule") {
        let filter = JobFilter {
            schedule: Some(schedule.clone()),
            limit: BADGE_SEARCH,
            ..Default::default()
        };
        (filter, format!("schedule {schedule}"))
    } else if let (Some(repo), Some(branch)) = (query.get("repo"), query.get("branch")) {
        let filter = JobFilter {
            repo: Some(repo.clone()),
            branch: Some(branch.clone()),
            limit: BADGE_SEARCH,
            ..Default::default()
        };
        (filter, format!("{repo} on {branch}"))
    } else {
        return (
            StatusCode::BAD_REQUEST,
            "give repo and branch (/status?repo=owner/name&branch=main) or a schedule (/status?schedule=nightly)\n",
        )
            .into_response();
    };
    let jobs = match engine.jobs.list(&filter).await {
        Ok(jobs) => jobs,
        Err(error) => {
            tracing::warn!(%error, "badge: cannot list jobs");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable\n",
            )
                .into_response();
        }
    };
    let Some(latest) = latest_finished(&jobs) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no finished run of {what}\n"),
        )
            .into_response();
    };
    if query.get("result").is_some_and(|r| r == "1" || r == "true") {
        let url = job_url(&engine.config.main.domain, latest.id);
        return (StatusCode::FOUND, [(header::LOCATION, url)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
            // Badges are embedded in pages that cache them (GitHub's camo): always ask again.
            (header::CACHE_CONTROL, "no-cache, max-age=0"),
        ],
        badge_svg(latest.status),
    )
        .into_response()
}

/// The newest finished job among `jobs` (newest first): a running one keeps the last result shown,
/// and so does a skipped one (it tested nothing).
fn latest_finished(jobs: &[JobRecord]) -> Option<&JobRecord> {
    jobs.iter()
        .find(|job| job.status.is_final() && job.status != JobStatus::Skipped)
}

/// A flat two-part badge, `build | passing`, in the original's words and shields.io's colours.
fn badge_svg(status: JobStatus) -> String {
    let (word, colour) = match status {
        JobStatus::Success => ("passing", "#4c1"),
        JobStatus::Failure => ("failing", "#e05d44"),
        JobStatus::Error => ("error", "#fe7d37"),
        JobStatus::Cancelled => ("cancelled", "#9f9f9f"),
        _ => ("running", "#dfb317"),
    };
    // Verdana 11px is about 7 px per character; the left part says "build".
    let right = 10 + 7 * word.len();
    let total = 40 + right;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="build: {word}"><title>build: {word}</title><rect width="40" height="20" fill="#555"/><rect x="40" width="{right}" height="20" fill="{colour}"/><g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"><text x="20" y="14">build</text><text x="{mid}" y="14">{word}</text></g></svg>
"##,
        mid = 40 + right / 2
    )
}

/// `GET /metrics`: Prometheus's text exposition format.
pub async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let gauges = engine.gauges().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        engine.metrics.render(&gauges),
    )
        .into_response()
}

/// `GET /healthz`: 200 when the store answers, 503 otherwise, with what was checked.
pub async fn healthz(State(engine): State<Arc<Engine>>) -> Response {
    let probe = JobFilter {
        limit: 1,
        ..Default::default()
    };
    let store = match engine.jobs.list(&probe).await {
        Ok(_) => "ok".to_string(),
        Err(error) => error.to_string(),
    };
    let queue = match engine.queue_health().await {
        Ok(()) => "ok".to_string(),
        Err(error) => error.to_string(),
    };
    let healthy = store == "ok" && queue == "ok";
    let gauges = engine.gauges().await;
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "store": store,
        "queue": { "state": queue, "waiting": gauges.queued },
        "machines": { "kind": engine.provisioner_kind(), "running": gauges.machines },
        "agents": gauges.agents,
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NewJob;

    fn job(id: u64, branch: &str, status: JobStatus) -> JobRecord {
        let new = NewJob {
            repo: "o/r".into(),
            repo_url: "https://github.com/o/r".into(),
            ref_name: branch.into(),
            commit: "c".into(),
            triggered_by: "t".into(),
            step_timeout_secs: 0,
            github_repo: None,
            untrusted: false,
            supersede: false,
            ..Default::default()
        };
        let mut job = JobRecord::new(id, new, 0);
        job.status = status;
        job
    }

    #[test]
    fn the_badge_is_the_latest_finished_run() {
        let jobs = [
            job(4, "main", JobStatus::Running),
            job(2, "main", JobStatus::Success),
            job(1, "main", JobStatus::Failure),
        ];
        assert_eq!(latest_finished(&jobs).map(|j| j.id), Some(2));
        assert!(latest_finished(&jobs[..1]).is_none());
        let svg = badge_svg(JobStatus::Failure);
        assert!(svg.starts_with("<svg") && svg.contains(">failing<") && svg.contains("#e05d44"));
        assert!(badge_svg(JobStatus::Success).contains(">passing<"));
    }
}
