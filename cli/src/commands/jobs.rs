//! `zeroci jobs`, `show` and `cancel`.

use std::path::Path;
use std::process::ExitCode;

use zeroci::pb;

use crate::args::{CancelArgs, JobsArgs, ShowArgs};
use crate::display::{print_json, write_stdout};
use crate::render::{job_detail, job_json, jobs_table, reports_detail, reports_json};

pub async fn list(profile: Option<&Path>, args: JobsArgs) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(profile).await?;
    let request = pb::ListJobsRequest {
        repo: args.repo.unwrap_or_default(),
        status: args.status.map_or(0, |s| s as i32),
        limit: args.limit.unwrap_or(0),
    };
    let response = client.rpc.list_jobs(request).await;
    let jobs = response
        .map_err(|s| client.rpc_error(&s))?
        .into_inner()
        .jobs;
    if args.json {
        print_json(&serde_json::Value::Array(
            jobs.iter().map(job_json).collect(),
        ))?;
    } else {
        write_stdout(jobs_table(&jobs, zeroci::now_unix_ms()).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(profile: Option<&Path>, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(profile).await?;
    let response = client.rpc.get_job(pb::GetJobRequest { id: args.job }).await;
    let job = response
        .map_err(|s| client.job_error(&s, args.job))?
        .into_inner();
    let reports = if job
        .steps
        .iter()
        .any(|s| s.tests.is_some() || s.message.starts_with("test report"))
    {
        let request = pb::GetTestReportRequest {
            id: args.job,
            step: None,
        };
        let response = client.rpc.get_test_report(request).await;
        response
            .map_err(|s| client.job_error(&s, args.job))?
            .into_inner()
            .steps
    } else {
        Vec::new()
    };
    if args.json {
        let mut doc = job_json(&job);
        doc["test_reports"] = reports_json(&reports);
        print_json(&doc)?;
    } else {
        let mut text = job_detail(&job, zeroci::now_unix_ms());
        text.push_str(&reports_detail(&job, &reports));
        write_stdout(text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(profile: Option<&Path>, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(profile).await?;
    let request = pb::CancelJobRequest {
        id: args.job,
        reason: String::new(),
    };
    let response = client.rpc.cancel_job(request).await;
    let job = response
        .map_err(|s| client.job_error(&s, args.job))?
        .into_inner();
    write_stdout(format!("job {}: {}\n", job.id, job.status().word()).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
