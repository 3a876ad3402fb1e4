//! The pages that list jobs: the dashboard (`GET /`: what runs now, every repository's branches with
//! their latest result, the connected agents) and a repository's or branch's history (`GET
//! /repos?repo=&branch=&before=`, newest first, a page at a time).

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::pages::{clock, duration};
use crate::engine::Engine;
use crate::jobs::{JobId, JobRecord};
use crate::schedules::Target;
use crate::store::JobFilter;

/// Jobs the dashboard looks through for branches' latest results.
const DASHBOARD_SCAN: usize = 2000;
/// Jobs per history page.
const PAGE: usize = 50;

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    active: Vec<JobRow>,
    branches: Vec<BranchRow>,
    schedules: Vec<ScheduleRow>,
    agents: Vec<AgentRow>,
    machines: usize,
    kind: &'static str,
}

#[derive(Template)]
#[template(path = "history.html")]
struct History {
    repo: String,
    branch: String,
    jobs: Vec<JobRow>,
    before: Option<JobId>,
    next: Option<String>,
}

struct JobRow {
    id: JobId,
    repo: String,
    branch: String,
    status: String,
    commit: String,
    triggered_by: String,
    created: String,
    duration: String,
}

struct BranchRow {
    repo: String,
    repo_query: String,
    branch: String,
    branch_query: String,
    id: JobId,
    status: String,
    commit: String,
    finished: String,
}

struct ScheduleRow {
    name: String,
    name_query: String,
    cron: String,
    time_zone: String,
    runs: String,
    /// When it fires next, or "paused".
    next: String,
    last: Option<(JobId, String)>,
}

struct AgentRow {
    job_id: JobId,
    hostname: String,
    address: String,
    version: String,
}

fn job_row(job: &JobRecord) -> JobRow {
    JobRow {
        id: job.id,
        repo: job.repo.clone(),
        branch: job.ref_name.clone(),
        status: job.status.word(),
        commit: job.commit.chars().take(10).collect(),
        triggered_by: job.triggered_by.clone(),
        created: clock(job.created_at),
        duration: duration(job.started_at, job.finished_at),
    }
}

fn query_value(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

fn html(page: Result<String, askama::Error>) -> Response {
    match page {
        Ok(html) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            html,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "page not rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "page not rendered; see the controller's log\n",
            )
                .into_response()
        }
    }
}

fn unavailable(error: impl std::fmt::Display) -> Response {
    tracing::warn!(%error, "page: store unavailable");
    (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
}

/// `GET /`.
pub async fn dashboard(State(engine): State<Arc<Engine>>) -> Response {
    let jobs = match engine
        .jobs
        .list(&JobFilter {
            limit: DASHBOARD_SCAN,
            ..Default::default()
        })
        .await
    {
        Ok(jobs) => jobs,
        Err(error) => return unavailable(error),
    };
    let active = jobs
        .iter()
        .filter(|j| !j.status.is_final())
        .map(job_row)
        .collect();
    // Newest first: the first job seen of a branch is its latest.
    let mut latest: BTreeMap<(String, String), &JobRecord> = BTreeMap::new();
    for job in &jobs {
        latest
            .entry((job.repo.clone(), job.ref_name.clone()))
            .or_insert(job);
    }
    let branches = latest
        .into_iter()
        .map(|((repo, branch), job)| BranchRow {
            repo_query: query_value(&repo),
            branch_query: query_value(&branch),
            repo,
            branch,
            id: job.id,
            status: job.status.word(),
            commit: job.commit.chars().take(10).collect(),
            finished: clock(job.finished_at),
        })
        .collect();
    let agents = engine
        .active_jobs()
        .iter()
        .filter_map(|active| {
            let link = active.link.lock().ok()?;
            let info = &link.as_ref()?.info;
            Some(AgentRow {
                job_id: info.job_id,
                hostname: info.hostname.clone(),
                address: info.address.clone(),
                version: info.version.clone(),
            })
        })
        .collect();
    let schedules = match schedule_rows(&engine, &jobs).await {
        Ok(rows) => rows,
        Err(error) => return unavailable(error),
    };
    let gauges = engine.gauges().await;
    html(
        Dashboard {
            active,
            branches,
            schedules,
            agents,
            machines: gauges.machines,
            kind: engine.provisioner_kind(),
        }
        .render(),
    )
}

/// The schedules, each with its latest run (`recent`: the jobs the dashboard read already).
async fn schedule_rows(
    engine: &Engine,
    recent: &[JobRecord],
) -> Result<Vec<ScheduleRow>, crate::error::ControllerError> {
    let mut rows = Vec::new();
    for schedule in engine.list_schedules().await? {
        // The dashboard read the latest jobs already; older runs are read one by one.
        let recent_status = schedule
            .last_job
            .and_then(|id| recent.iter().find(|j| j.id == id))
            .map(|job| job.status);
        let status = match recent_status {
            Some(status) => Some(status),
            None => engine.last_run_status(&schedule).await?,
        };
        let last = schedule.last_job.zip(status.map(|s| s.word()));
        let runs = match &schedule.target {
            Target::Repository { repo, ref_name, .. } if ref_name.is_empty() => repo.clone(),
            Target::Repository { repo, ref_name, .. } => format!("{repo} @ {ref_name}"),
            Target::Commands { test, .. } => format!("{} command(s)", test.len()),
        };
        rows.push(ScheduleRow {
            name_query: query_value(&schedule.name),
            next: if schedule.paused {
                "paused".into()
            } else if schedule.next_at == crate::schedules::timing::NEVER {
                "never".into()
            } else {
                clock(schedule.next_at)
            },
            name: schedule.name,
            cron: schedule.cron,
            time_zone: schedule.time_zone,
            runs,
            last,
        });
    }
    Ok(rows)
}

#[derive(serde::Deserialize)]
pub struct HistoryQuery {
    repo: Option<String>,
    branch: Option<String>,
    /// A schedule's runs instead of a repository's jobs.
    schedule: Option<String>,
    before: Option<JobId>,
}

/// `GET /repos?repo=NAME[&branch=B][&before=ID]`, or `?schedule=NAME[&before=ID]`.
pub async fn history(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let branch = query.branch.filter(|b| !b.is_empty());
    let schedule = query.schedule.filter(|s| !s.is_empty());
    let (title, filter, mut next_query) = match (schedule, query.repo.filter(|r| !r.is_empty())) {
        (Some(schedule), _) => (
            format!("schedule {schedule}"),
            JobFilter {
                schedule: Some(schedule.clone()),
                ..Default::default()
            },
            format!("schedule={}", query_value(&schedule)),
        ),
        (None, Some(repo)) => {
            let mut next_query = format!("repo={}", query_value(&repo));
            if let Some(branch) = &branch {
                next_query.push_str(&format!("&branch={}", query_value(branch)));
            }
            let filter = JobFilter {
                repo: Some(repo.clone()),
                branch: branch.clone(),
                ..Default::default()
            };
            (repo, filter, next_query)
        }
        (None, None) => {
            return (
                StatusCode::BAD_REQUEST,
                "give a repository (/repos?repo=NAME) or a schedule (/repos?schedule=NAME)\n",
            )
                .into_response();
        }
    };
    let filter = JobFilter {
        before: query.before,
        // One more than a page tells whether there is another.
        limit: PAGE + 1,
        ..filter
    };
    let mut jobs = match engine.jobs.list(&filter).await {
        Ok(jobs) => jobs,
        Err(error) => return unavailable(error),
    };
    let more = jobs.len() > PAGE;
    jobs.truncate(PAGE);
    let next = match (more, jobs.last()) {
        (true, Some(last)) => {
            next_query.push_str(&format!("&before={}", last.id));
            Some(format!("/repos?{next_query}"))
        }
        _ => None,
    };
    html(
        History {
            repo: title,
            branch: branch.unwrap_or_default(),
            jobs: jobs.iter().map(job_row).collect(),
            before: query.before,
            next,
        }
        .render(),
    )
}
