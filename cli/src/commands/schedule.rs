//! `zeroci schedule add|list|show|rm|run|pause|resume`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::anyhow;
use serde_json::{Value, json};
use zeroci::pb;

use crate::args::{ScheduleAddArgs, ScheduleArgs, ScheduleCommand};
use crate::client::Client;
use crate::display::{print_json, write_stdout};
use crate::git;
use crate::render::{
    format_relative, human_time, job_json, jobs_table, or_dash, table, timestamp_json,
};

pub async fn schedule(profile: Option<&Path>, args: ScheduleArgs) -> anyhow::Result<ExitCode> {
    if let ScheduleCommand::Add(add) = &args.command {
        // Local problems (a path that is no repository) are reported before the controller is involved.
        let request = add_request(add)?;
        let mut client = super::connect(profile).await?;
        let added = client.rpc.add_schedule(request).await;
        let info = added.map_err(|s| client.rpc_error(&s))?.into_inner();
        return print_schedule(&info, add.json);
    }
    let mut client = super::connect(profile).await?;
    match args.command {
        ScheduleCommand::Add(_) => unreachable!("handled above"),
        ScheduleCommand::List { json } => {
            let listed = client.rpc.list_schedules(pb::ListSchedulesRequest {}).await;
            let schedules = listed.map_err(|s| client.rpc_error(&s))?.into_inner();
            if json {
                print_json(&Value::Array(
                    schedules.schedules.iter().map(schedule_json).collect(),
                ))?;
            } else {
                let text = schedules_table(&schedules.schedules, zeroci::now_unix_ms());
                write_stdout(text.as_bytes())?;
            }
        }
        ScheduleCommand::Show { name, json } => {
            let shown = client.rpc.get_schedule(pb::ScheduleRequest { name }).await;
            let shown = shown.map_err(|s| client.rpc_error(&s))?.into_inner();
            let info = shown
                .schedule
                .ok_or_else(|| anyhow!("the controller sent no schedule"))?;
            if json {
                let mut document = schedule_json(&info);
                document["runs"] = Value::Array(shown.runs.iter().map(job_json).collect());
                print_json(&document)?;
            } else {
                let now = zeroci::now_unix_ms();
                let mut text = schedule_detail(&info, now);
                text.push_str("\nlatest runs:\n");
                text.push_str(&jobs_table(&shown.runs, now));
                write_stdout(text.as_bytes())?;
            }
        }
        ScheduleCommand::Rm { name } => {
            let removed = client
                .rpc
                .remove_schedule(pb::ScheduleRequest { name: name.clone() })
                .await;
            removed.map_err(|s| client.rpc_error(&s))?;
            write_stdout(format!("schedule {name} removed\n").as_bytes())?;
        }
        ScheduleCommand::Pause { name } => pause(&mut client, name, true).await?,
        ScheduleCommand::Resume { name } => pause(&mut client, name, false).await?,
        ScheduleCommand::Run { name, detach, json } => {
            let started = client.rpc.run_schedule(pb::ScheduleRequest { name }).await;
            let job = started
                .map_err(|s| client.rpc_error(&s))?
                .into_inner()
                .job
                .ok_or_else(|| anyhow!("the controller started the run but did not describe it"))?;
            return super::run::after_submit(&mut client, job, detach, json).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn pause(client: &mut Client, name: String, paused: bool) -> anyhow::Result<()> {
    let changed = client
        .rpc
        .pause_schedule(pb::PauseScheduleRequest {
            name: name.clone(),
            paused,
        })
        .await;
    let info = changed.map_err(|s| client.rpc_error(&s))?.into_inner();
    let line = if paused {
        format!("schedule {name} paused\n")
    } else {
        let next = human_time(info.next_at_unix_ms).unwrap_or_else(|| "never".into());
        format!("schedule {name} resumed; next run {next}\n")
    };
    write_stdout(line.as_bytes())?;
    Ok(())
}

/// The request `add` makes: `--repo` is a local repository (its top level, and its branch unless
/// `--ref` says), a URL, or a GitHub `owner/name` the controller resolves.
fn add_request(add: &ScheduleAddArgs) -> anyhow::Result<pb::AddScheduleRequest> {
    let mut request = pb::AddScheduleRequest {
        name: add.name.clone(),
        cron: add.cron.clone(),
        time_zone: add.time_zone.clone().unwrap_or_default(),
        ref_name: add.git_ref.clone().unwrap_or_default(),
        image_name: add.image.clone().unwrap_or_default(),
        install: add.install.clone(),
        test: add.test.clone(),
        step_timeout_secs: add.timeout.unwrap_or(0),
        allow_overlap: add.allow_overlap,
        ..Default::default()
    };
    if let Some(repo) = &add.repo {
        if Path::new(repo).is_dir() {
            let source = git::resolve_local(Path::new(repo), None)?;
            request.repo_url = source.repo_url;
            request.repo_name = source.repo_name;
            if request.ref_name.is_empty() {
                request.ref_name = source.ref_name;
            }
        } else if git::looks_like_url(repo) {
            request.repo_url = repo.clone();
        } else {
            request.repo_name = repo.clone();
        }
    }
    Ok(request)
}

fn print_schedule(info: &pb::ScheduleInfo, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(&schedule_json(info))?;
    } else {
        let next = human_time(info.next_at_unix_ms).unwrap_or_else(|| "never".into());
        let line = format!(
            "schedule {} added ({}); first run {next}\n",
            info.name, info.description
        );
        write_stdout(line.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a schedule runs, in a few words.
fn runs_what(info: &pb::ScheduleInfo) -> String {
    if info.repo_url.is_empty() {
        let steps = info.install.len().min(1) + info.test.len();
        let plural = if steps == 1 { "" } else { "s" };
        return format!("commands ({steps} step{plural})");
    }
    if info.ref_name.is_empty() {
        info.repo.clone()
    } else {
        format!("{}@{}", info.repo, info.ref_name)
    }
}

fn last_run(info: &pb::ScheduleInfo) -> String {
    if info.last_job_id == 0 {
        return "-".into();
    }
    format!("{} #{}", info.last_status().word(), info.last_job_id)
}

/// The `schedule list` table.
pub fn schedules_table(schedules: &[pb::ScheduleInfo], now_ms: i64) -> String {
    if schedules.is_empty() {
        return "no schedules\n".to_string();
    }
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.cron.clone(),
                s.time_zone.clone(),
                runs_what(s),
                if s.paused {
                    "paused".into()
                } else {
                    human_time(s.next_at_unix_ms).unwrap_or_else(|| "never".into())
                },
                last_run(s),
                format_relative(s.created_at_unix_ms, now_ms),
            ]
        })
        .collect();
    table(
        &["NAME", "CRON", "ZONE", "RUNS", "NEXT", "LAST", "CREATED"],
        &rows,
    )
}

/// `schedule show` without `--json`.
fn schedule_detail(info: &pb::ScheduleInfo, now_ms: i64) -> String {
    let mut out = format!("schedule {}\n", info.name);
    let mut field = |name: &str, value: &str| {
        out.push_str(&format!("  {:<14}{value}\n", format!("{name}:")));
    };
    field("cron", &format!("{} ({})", info.cron, info.description));
    field("time zone", &info.time_zone);
    field("runs", &runs_what(info));
    if info.repo_url.is_empty() {
        field("image", or_dash(&info.image_name));
        for command in &info.install {
            field("install", command);
        }
        for command in &info.test {
            field("test", command);
        }
    } else {
        field("repository", &info.repo_url);
    }
    let state = if info.paused { "paused" } else { "active" };
    field("state", state);
    let next = human_time(info.next_at_unix_ms).unwrap_or_else(|| "never".into());
    field("next run", if info.paused { "-" } else { &next });
    field("last run", &last_run(info));
    if info.skipped > 0 {
        field(
            "skipped",
            &format!("{} ticks (previous run still going)", info.skipped),
        );
    }
    field("overlap", if info.allow_overlap { "allowed" } else { "no" });
    let origin = match info.origin.as_str() {
        "run_on" => "run_on.schedule in the repository's zeroCI.yaml".to_string(),
        _ => format!("added by {}", or_dash(&info.created_by)),
    };
    field("origin", &origin);
    field("created", &format_relative(info.created_at_unix_ms, now_ms));
    out
}

/// A schedule as JSON (`list --json`, `show --json`, `add --json`).
pub fn schedule_json(info: &pb::ScheduleInfo) -> Value {
    json!({
        "name": info.name,
        "cron": info.cron,
        "time_zone": info.time_zone,
        "description": info.description,
        "repo": info.repo,
        "repo_url": info.repo_url,
        "ref": info.ref_name,
        "image_name": info.image_name,
        "install": info.install,
        "test": info.test,
        "step_timeout_secs": info.step_timeout_secs,
        "allow_overlap": info.allow_overlap,
        "paused": info.paused,
        "origin": info.origin,
        "created_by": info.created_by,
        "next_at": timestamp_json(info.next_at_unix_ms),
        "last_job": (info.last_job_id > 0).then_some(info.last_job_id),
        "last_status": (info.last_job_id > 0).then(|| info.last_status().word()),
        "skipped": info.skipped,
        "created_at": timestamp_json(info.created_at_unix_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nightly() -> pb::ScheduleInfo {
        pb::ScheduleInfo {
            name: "nightly".into(),
            cron: "0 2 * * *".into(),
            time_zone: "Europe/Amsterdam".into(),
            description: "At 02:00.".into(),
            install: vec!["make deps".into()],
            test: vec!["make test".into(), "make bench".into()],
            next_at_unix_ms: 1_700_000_000_000,
            last_job_id: 7,
            last_status: pb::JobStatus::Failure as i32,
            origin: "api".into(),
            created_by: "admin".into(),
            ..Default::default()
        }
    }

    #[test]
    fn list_show_and_json_say_what_runs_when() {
        let table = schedules_table(&[nightly()], 1_700_000_000_000);
        assert!(table.starts_with("NAME"), "{table}");
        assert!(
            table.contains("nightly  0 2 * * *  Europe/Amsterdam  commands (3 steps)"),
            "{table}"
        );
        assert!(table.contains("failure #7"), "{table}");
        let detail = schedule_detail(&nightly(), 1_700_000_000_000);
        assert!(
            detail.contains("cron:         0 2 * * * (At 02:00.)"),
            "{detail}"
        );
        assert!(detail.contains("test:         make bench"), "{detail}");
        assert!(detail.contains("origin:       added by admin"), "{detail}");
        let json = schedule_json(&nightly());
        assert_eq!(json["last_status"], "failure");
        assert_eq!(json["next_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(schedules_table(&[], 0), "no schedules\n");
    }
}
