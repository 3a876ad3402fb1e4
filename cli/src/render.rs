//! Output: JSON documents built from the protobuf types, tables, and time formatting.

use std::fmt::Write as _;

use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroci::pb;

/// The `--json` document for a job (design.md "Binaries and commands"). Times are RFC 3339 strings, or
/// null when not reached yet; `exit_code` is null until a step ends; `tests` is null for a step that
/// sent no test report.
pub fn job_json(job: &pb::Job) -> Value {
    json!({
        "id": job.id,
        "status": job.status().word(),
        "repo": job.repo,
        "repo_url": job.repo_url,
        "ref": job.ref_name,
        "commit": job.commit,
        "url": job.url,
        "created_at": timestamp_json(job.created_at_unix_ms),
        "started_at": timestamp_json(job.started_at_unix_ms),
        "finished_at": timestamp_json(job.finished_at_unix_ms),
        "reason": job.reason,
        "attempt": job.attempt,
        "triggered_by": job.triggered_by,
        "committer": job.committer,
        "waiting_for": job.waiting_for,
        "schedule": job.schedule.as_ref().map_or(Value::Null, |run| json!({
            "name": run.name,
            "due_at": timestamp_json(run.due_at_unix_ms),
            "late_ms": run.late_ms,
            "missed": run.missed,
            "late": run.late,
        })),
        "notification_failures": job.notification_failures.iter().map(|f| json!({
            "notifier": f.notifier,
            "error": f.error,
            "at": timestamp_json(f.at_unix_ms),
        })).collect::<Vec<_>>(),
        "steps": job.steps.iter().map(step_json).collect::<Vec<_>>(),
        "artifacts": job.artifacts.iter().map(|a| json!({
            "name": a.name,
            "size": a.size,
            "after_step": a.after_step,
            "error": a.error,
        })).collect::<Vec<_>>(),
    })
}

/// Test totals as JSON (also used for `show --json`'s reports).
pub fn totals_json(t: &pb::TestTotals) -> Value {
    json!({
        "total": t.total,
        "passed": t.passed,
        "failed": t.failed,
        "errors": t.errors,
        "skipped": t.skipped,
        "time_secs": t.time_secs,
    })
}

/// The test reports of a job as JSON: per step, totals and every case.
pub fn reports_json(reports: &[pb::StepTestReport]) -> Value {
    Value::Array(
        reports
            .iter()
            .map(|r| {
                json!({
                    "step": r.step,
                    "totals": r.totals.as_ref().map_or(Value::Null, totals_json),
                    "error": r.error,
                    "truncated": r.truncated,
                    "cases": r.cases.iter().map(|c| json!({
                        "suite": c.suite,
                        "classname": c.classname,
                        "name": c.name,
                        "status": c.status,
                        "message": c.message,
                        "details": c.details,
                        "time_secs": c.time_secs,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The human view of test reports: totals per step, then each failed or erroring case with its message.
pub fn reports_detail(job: &pb::Job, reports: &[pb::StepTestReport]) -> String {
    let mut out = String::new();
    for report in reports {
        let name = job
            .steps
            .iter()
            .find(|s| s.index == report.step)
            .map_or("?", |s| s.name.as_str());
        let _ = write!(out, "\ntests of step {} ({name}): ", report.step);
        match &report.totals {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "{} total, {} passed, {} failed, {} errors, {} skipped",
                    t.total, t.passed, t.failed, t.errors, t.skipped
                );
            }
            None => out.push('\n'),
        }
        if !report.error.is_empty() {
            let _ = writeln!(out, "  report: {}", report.error);
        }
        for case in report
            .cases
            .iter()
            .filter(|c| c.status == "failed" || c.status == "error")
        {
            let label = if case.classname.is_empty() {
                case.name.clone()
            } else {
                format!("{}.{}", case.classname, case.name)
            };
            let _ = writeln!(
                out,
                "  {} {label}: {}",
                case.status.to_uppercase(),
                case.message.lines().next().unwrap_or("")
            );
        }
        if report.truncated {
            out.push_str("  (more cases than shown)\n");
        }
    }
    out
}

fn step_json(step: &pb::StepInfo) -> Value {
    json!({
        "index": step.index,
        "name": step.name,
        "kind": step.kind().word(),
        "status": step.status().word(),
        "exit_code": step.exit_code,
        "started_at": timestamp_json(step.started_at_unix_ms),
        "finished_at": timestamp_json(step.finished_at_unix_ms),
        "message": step.message,
        "stage": step.stage,
        "tests": step.tests.as_ref().map_or(Value::Null, totals_json),
    })
}

/// The `agents --json` document for one agent.
pub fn agent_json(agent: &pb::AgentInfo) -> Value {
    json!({
        "job_id": agent.job_id,
        "attempt": agent.attempt,
        "hostname": agent.hostname,
        "address": agent.address,
        "version": agent.version,
        "connected_at": timestamp_json(agent.connected_at_unix_ms),
        "last_seen": timestamp_json(agent.last_seen_unix_ms),
    })
}

pub fn pool_host_json(host: &pb::PoolHostInfo) -> Value {
    json!({
        "name": host.name,
        "labels": host.labels,
        "capacity": host.capacity,
        "machines": host.machines,
        "isolated": host.isolated,
        "address": host.address,
        "version": host.version,
        "token_name": host.token_name,
        "connected_at": timestamp_json(host.connected_at_unix_ms),
        "last_seen": timestamp_json(host.last_seen_unix_ms),
    })
}

pub fn timestamp_json(ms: i64) -> Value {
    rfc3339(ms).map_or(Value::Null, Value::String)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds; None for 0 (never happened) or out of range.
pub fn rfc3339(ms: i64) -> Option<String> {
    let t = utc(ms)?;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).ok()
}

/// Unix milliseconds for people: `2025-01-31 14:02:07 UTC`; None for 0.
pub fn human_time(ms: i64) -> Option<String> {
    let t = utc(ms)?;
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.format(&format).ok()
}

fn utc(ms: i64) -> Option<OffsetDateTime> {
    if ms <= 0 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// A duration for people: `0.4s`, `3.2s`, `2m05s`, `1h02m`.
pub fn format_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        // Tenths, rounded down so "59.99s" never shows as "60.0s".
        return format!("{}.{}s", ms / 1000, (ms % 1000) / 100);
    }
    let secs = ms / 1000;
    if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// How long ago `ms` was, relative to `now_ms`: `just now`, `42s ago`, `3m ago`, `5h ago`, `2d ago`;
/// `-` for 0 (never).
pub fn format_relative(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    // Clocks of controller and client differ a little; a time slightly ahead is still "just now".
    let secs = (now_ms - ms).max(0) / 1000;
    match secs {
        0..5 => "just now".to_string(),
        5..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// How long a job (or step) took: finished − started; for one still running, the time so far; None
/// before it started.
pub fn elapsed_ms(started: i64, finished: i64, now_ms: i64) -> Option<i64> {
    if started <= 0 {
        return None;
    }
    let end = if finished > 0 { finished } else { now_ms };
    Some((end - started).max(0))
}

/// A job's duration column: `3.2s`, `12s…` while running, `-` before it started.
fn job_duration(started: i64, finished: i64, now_ms: i64) -> String {
    match elapsed_ms(started, finished, now_ms) {
        None => "-".to_string(),
        Some(ms) if finished > 0 => format_duration(ms),
        Some(ms) => format!("{}…", format_duration(ms)),
    }
}

fn short_commit(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

pub fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Left-aligned columns separated by two spaces, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `jobs` table.
pub fn jobs_table(jobs: &[pb::Job], now_ms: i64) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_string();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.status().word(),
                or_dash(&j.repo).to_string(),
                or_dash(&j.ref_name).to_string(),
                or_dash(short_commit(&j.commit)).to_string(),
                format_relative(j.created_at_unix_ms, now_ms),
                job_duration(j.started_at_unix_ms, j.finished_at_unix_ms, now_ms),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATUS", "REPO", "REF", "COMMIT", "CREATED", "DURATION",
        ],
        &rows,
    )
}

/// The `agents` table.
pub fn agents_table(agents: &[pb::AgentInfo], now_ms: i64) -> String {
    if agents.is_empty() {
        return "no agents connected\n".to_string();
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.job_id.to_string(),
                a.attempt.to_string(),
                or_dash(&a.hostname).to_string(),
                or_dash(&a.address).to_string(),
                or_dash(&a.version).to_string(),
                format_relative(a.connected_at_unix_ms, now_ms),
                format_relative(a.last_seen_unix_ms, now_ms),
            ]
        })
        .collect();
    table(
        &[
            "JOB",
            "ATTEMPT",
            "HOST",
            "ADDRESS",
            "VERSION",
            "CONNECTED",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// Pool hosts (`zeroci-agent join`): one row each, with how many of their places are taken.
pub fn pool_hosts_table(hosts: &[pb::PoolHostInfo], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let labels = if h.labels.is_empty() {
                "-".to_string()
            } else {
                h.labels.join(",")
            };
            vec![
                h.name.clone(),
                labels,
                format!("{}/{}", h.machines.len(), h.capacity),
                if h.isolated { "sandbox" } else { "none" }.to_string(),
                or_dash(&h.address).to_string(),
                or_dash(&h.token_name).to_string(),
                format_relative(h.connected_at_unix_ms, now_ms),
                format_relative(h.last_seen_unix_ms, now_ms),
            ]
        })
        .collect();
    table(
        &[
            "POOL HOST",
            "LABELS",
            "MACHINES",
            "ISOLATION",
            "ADDRESS",
            "TOKEN",
            "JOINED",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// The `show` view: a header block, then one row per step.
pub fn job_detail(job: &pb::Job, now_ms: i64) -> String {
    let mut out = String::new();
    let when = |ms: i64| match human_time(ms) {
        Some(t) => format!("{t} ({})", format_relative(ms, now_ms)),
        None => "-".to_string(),
    };
    let repo = if job.repo_url.is_empty() || job.repo_url == job.repo {
        or_dash(&job.repo).to_string()
    } else {
        format!("{} ({})", or_dash(&job.repo), job.repo_url)
    };
    let _ = writeln!(out, "job {}: {}", job.id, job.status().word());
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "  {:<14}{}", format!("{name}:"), value);
    };
    field("repo", &repo);
    field("ref", or_dash(&job.ref_name));
    field("commit", or_dash(&job.commit));
    field("url", or_dash(&job.url));
    field("triggered by", or_dash(&job.triggered_by));
    if !job.committer.is_empty() {
        field("committer", &job.committer);
    }
    field("attempt", &job.attempt.to_string());
    field("created", &when(job.created_at_unix_ms));
    field("started", &when(job.started_at_unix_ms));
    field("finished", &when(job.finished_at_unix_ms));
    field(
        "duration",
        &job_duration(job.started_at_unix_ms, job.finished_at_unix_ms, now_ms),
    );
    if !job.reason.is_empty() {
        field("reason", &job.reason);
    }
    if !job.waiting_for.is_empty() {
        field("waiting", &job.waiting_for);
    }
    for failure in &job.notification_failures {
        field(
            "not notified",
            &format!(
                "{}: {} ({})",
                failure.notifier,
                failure.error,
                when(failure.at_unix_ms)
            ),
        );
    }
    if job.steps.is_empty() {
        out.push_str("\nno steps yet\n");
        return out;
    }
    let rows: Vec<Vec<String>> = job
        .steps
        .iter()
        .map(|s| {
            vec![
                s.index.to_string(),
                s.name.clone(),
                s.kind().word(),
                s.status().word(),
                s.exit_code
                    .map_or_else(|| "-".to_string(), |c| c.to_string()),
                job_duration(s.started_at_unix_ms, s.finished_at_unix_ms, now_ms),
                s.tests.as_ref().map_or_else(
                    || "-".to_string(),
                    |t| format!("{}/{} passed", t.passed, t.total),
                ),
                // One line per step: a multi-line message would break the table.
                s.message.lines().next().unwrap_or("").to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "#", "STEP", "KIND", "STATUS", "EXIT", "DURATION", "TESTS", "MESSAGE",
        ],
        &rows,
    ));
    if !job.artifacts.is_empty() {
        out.push_str("\nartifacts (zeroci artifact JOB NAME):\n");
        for a in &job.artifacts {
            if a.error.is_empty() {
                let _ = writeln!(out, "  {} ({} bytes)", a.name, a.size);
            } else {
                let _ = writeln!(out, "  {}: not kept: {}", a.name, a.error);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_job() -> pb::Job {
        pb::Job {
            id: 7,
            status: pb::JobStatus::Failure as i32,
            repo: "demo".into(),
            repo_url: "/src/demo".into(),
            ref_name: "main".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            url: "http://ci/jobs/7".into(),
            created_at_unix_ms: 1_700_000_000_000,
            started_at_unix_ms: 1_700_000_001_500,
            finished_at_unix_ms: 0,
            steps: vec![
                pb::StepInfo {
                    index: 0,
                    name: "checkout".into(),
                    kind: pb::StepKind::Checkout as i32,
                    status: pb::StepStatus::Success as i32,
                    exit_code: Some(0),
                    started_at_unix_ms: 1_700_000_001_500,
                    finished_at_unix_ms: 1_700_000_002_000,
                    script: String::new(),
                    message: String::new(),
                    ..Default::default()
                },
                pb::StepInfo {
                    index: 1,
                    name: "unit".into(),
                    kind: pb::StepKind::Script as i32,
                    status: pb::StepStatus::Pending as i32,
                    exit_code: None,
                    ..Default::default()
                },
            ],
            reason: String::new(),
            attempt: 1,
            triggered_by: "admin".into(),
            artifacts: Vec::new(),
            committer: "Ada".into(),
            notification_failures: vec![pb::NotificationFailure {
                notifier: "telegram".into(),
                error: "the chat was not found".into(),
                at_unix_ms: 1_700_000_009_000,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn job_json_shape() {
        let v = job_json(&sample_job());
        let keys = [
            "id",
            "status",
            "repo",
            "repo_url",
            "ref",
            "commit",
            "url",
            "created_at",
            "started_at",
            "finished_at",
            "reason",
            "attempt",
            "triggered_by",
            "steps",
        ];
        for k in keys {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["id"], 7);
        assert_eq!(v["ref"], "main");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["started_at"], "2023-11-14T22:13:21.500Z");
        assert_eq!(v["finished_at"], Value::Null);
        assert_eq!(v["attempt"], 1);
        let steps = v["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2);
        for k in [
            "index",
            "name",
            "kind",
            "status",
            "exit_code",
            "started_at",
            "finished_at",
            "message",
            "tests",
        ] {
            assert!(steps[0].get(k).is_some(), "step missing {k}");
        }
        assert_eq!(steps[0]["exit_code"], 0);
        assert_eq!(steps[1]["exit_code"], Value::Null);
        assert_eq!(steps[1]["started_at"], Value::Null);
        assert_eq!(steps[1]["tests"], Value::Null);
        assert_eq!(steps[1]["kind"], "script");
    }

    #[test]
    fn empty_job_json_has_nulls_not_zero_dates() {
        let v = job_json(&pb::Job::default());
        assert_eq!(v["created_at"], Value::Null);
        assert_eq!(v["steps"], json!([]));
        assert_eq!(v["reason"], "");
    }

    #[test]
    fn agent_json_shape() {
        let v = agent_json(&pb::AgentInfo {
            job_id: 3,
            attempt: 2,
            ..Default::default()
        });
        assert_eq!(v["job_id"], 3);
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["last_seen"], Value::Null);
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0.0s");
        assert_eq!(format_duration(-5), "0.0s");
        assert_eq!(format_duration(400), "0.4s");
        assert_eq!(format_duration(3_249), "3.2s");
        assert_eq!(format_duration(59_999), "59.9s");
        assert_eq!(format_duration(60_000), "1m00s");
        assert_eq!(format_duration(125_000), "2m05s");
        assert_eq!(format_duration(3_600_000), "1h00m");
        assert_eq!(format_duration(3_720_000 + 59_000), "1h02m");
    }

    #[test]
    fn relative_times() {
        let now = 1_700_000_000_000;
        assert_eq!(format_relative(0, now), "-");
        assert_eq!(format_relative(now, now), "just now");
        assert_eq!(format_relative(now + 3_000, now), "just now");
        assert_eq!(format_relative(now - 4_999, now), "just now");
        assert_eq!(format_relative(now - 42_000, now), "42s ago");
        assert_eq!(format_relative(now - 180_000, now), "3m ago");
        assert_eq!(format_relative(now - 5 * 3_600_000, now), "5h ago");
        assert_eq!(format_relative(now - 2 * 86_400_000, now), "2d ago");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(1), Some("1970-01-01T00:00:00.001Z".into()));
        assert_eq!(
            human_time(1_700_000_000_000),
            Some("2023-11-14 22:13:20 UTC".into())
        );
        assert_eq!(elapsed_ms(0, 0, 10), None);
        assert_eq!(elapsed_ms(1000, 4200, 99_999), Some(3200));
        assert_eq!(elapsed_ms(1000, 0, 2500), Some(1500));
    }

    #[test]
    fn tables() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
        let now = 1_700_000_010_000;
        let jobs = jobs_table(&[sample_job()], now);
        let mut lines = jobs.lines();
        assert!(lines.next().unwrap().starts_with("ID  STATUS"));
        let row = lines.next().unwrap();
        assert!(row.contains("0123456 "), "{row}");
        assert!(row.contains("10s ago"), "{row}");
        assert!(row.contains("8.5s…"), "{row}");
        assert_eq!(jobs_table(&[], now), "no jobs\n");
        assert_eq!(agents_table(&[], now), "no agents connected\n");
    }

    #[test]
    fn detail_view() {
        let d = job_detail(&sample_job(), 1_700_000_010_000);
        assert!(d.starts_with("job 7: failure\n"), "{d}");
        assert!(d.contains("demo (/src/demo)"), "{d}");
        assert!(d.contains("triggered by: admin"), "{d}");
        assert!(d.contains("finished:     -"), "{d}");
        assert!(d.contains("checkout  checkout  success"), "{d}");
        assert!(!d.contains("reason"), "{d}");
        assert!(d.contains("committer:    Ada"), "{d}");
        assert!(
            d.contains("not notified: telegram: the chat was not found ("),
            "{d}"
        );
        let v = job_json(&sample_job());
        assert_eq!(v["committer"], "Ada");
        assert_eq!(v["notification_failures"][0]["notifier"], "telegram");
    }
}
