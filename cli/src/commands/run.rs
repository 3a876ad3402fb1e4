//! `zeroci run [PATH|URL] [--ref REF] [--detach] [--json] [--timeout SECS]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::anyhow;
use zeroci::pb;

use super::{EXIT_INTERRUPTED, exit_for_status};
use crate::args::{RerunArgs, RunArgs};
use crate::client::Client;
use crate::display::{LogPrinter, Silent, eprint_line, print_json, write_stdout};
use crate::follow::{LogRequest, Reconnect, stream_logs};
use crate::git;
use crate::render::job_json;

pub async fn run(profile: Option<&Path>, args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(repo) = args.repo.clone() {
        // The controller resolves the branch's head through GitHub's API.
        let mut client = super::connect(profile).await?;
        let request = pb::SubmitJobRequest {
            repo_url: String::new(),
            commit: String::new(),
            ref_name: args.branch.clone().unwrap_or_default(),
            repo_name: repo,
            step_timeout_secs: args.timeout.unwrap_or(0),
            committer: String::new(),
        };
        let response = client.rpc.submit_job(request).await;
        let job = response
            .map_err(|s| client.rpc_error(&s))?
            .into_inner()
            .job
            .ok_or_else(|| anyhow!("the controller accepted the job but did not describe it"))?;
        return after_submit(&mut client, job, args.detach, args.json).await;
    }
    // Local problems (not a repository, unknown ref) are reported before the controller is involved.
    let source = git::resolve(&args.source, args.git_ref.as_deref()).await?;
    if source.dirty && !args.json {
        eprint_line(&format!(
            "zeroci: note: {} has uncommitted changes; the job tests commit {} without them",
            source.repo_url,
            source.commit.get(..12).unwrap_or(&source.commit)
        ));
    }
    let mut client = super::connect(profile).await?;
    let request = pb::SubmitJobRequest {
        repo_url: source.repo_url,
        commit: source.commit,
        ref_name: args.branch.unwrap_or(source.ref_name),
        repo_name: source.repo_name,
        step_timeout_secs: args.timeout.unwrap_or(0),
        committer: source.committer,
    };
    let mut request = tonic::Request::new(request);
    if args.detach {
        // Git hooks call `run --detach`: a controller that hangs must not hang the commit or push.
        request.set_timeout(std::time::Duration::from_secs(10));
    }
    let response = client.rpc.submit_job(request).await;
    let job = response
        .map_err(|s| client.rpc_error(&s))?
        .into_inner()
        .job
        .ok_or_else(|| anyhow!("the controller accepted the job but did not describe it"))?;
    after_submit(&mut client, job, args.detach, args.json).await
}

/// `zeroci rerun JOB`: a new job for the same commit, then the same output as `run`.
pub async fn rerun(profile: Option<&Path>, args: RerunArgs) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(profile).await?;
    let response = client
        .rpc
        .rerun_job(pb::RerunJobRequest { id: args.job })
        .await;
    let job = response
        .map_err(|s| client.job_error(&s, args.job))?
        .into_inner()
        .job
        .ok_or_else(|| anyhow!("the controller accepted the job but did not describe it"))?;
    after_submit(&mut client, job, args.detach, args.json).await
}

/// Reports a queued job and, unless detached, follows it to its end.
pub(super) async fn after_submit(
    client: &mut Client,
    job: pb::Job,
    detach: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !json {
        eprint_line(&format!("job {} queued: {}", job.id, job.url));
    }
    if detach {
        if json {
            print_json(&job_json(&job))?;
        } else {
            write_stdout(format!("{}\n", job.id).as_bytes())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let request = LogRequest {
        job: job.id,
        follow: true,
        step: None,
        reconnect: Reconnect::default(),
    };
    if json {
        let done = stream_logs(client, &request, &mut Silent).await;
        let done = done
            .map_err(|e| keeps_running(e, job.id))?
            .ok_or_else(|| ended_early(job.id))?;
        // The stored job is the complete document; the one in JobDone is the fallback.
        let stored = client.rpc.get_job(pb::GetJobRequest { id: job.id }).await;
        let job = stored.map(|r| r.into_inner()).unwrap_or(done);
        print_json(&job_json(&job))?;
        return Ok(ExitCode::from(exit_for_status(job.status())));
    }
    follow_live(client, &request).await
}

/// Streams the job's output to the terminal until it is over; Ctrl-C stops following, not the job.
async fn follow_live(client: &mut Client, request: &LogRequest) -> anyhow::Result<ExitCode> {
    let id = request.job;
    let mut printer = LogPrinter::run();
    let outcome = {
        let streaming = stream_logs(client, request, &mut printer);
        tokio::select! {
            result = streaming => Some(result),
            () = interrupted() => None,
        }
    };
    let Some(result) = outcome else {
        printer.finish();
        eprint_line(&format!(
            "stopped following job {id}; it keeps running (`zeroci logs {id} --follow` to watch it, \
             `zeroci cancel {id}` to stop it)"
        ));
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    let done = match result {
        Ok(Some(job)) => job,
        Ok(None) => {
            printer.finish();
            return Err(ended_early(id));
        }
        Err(e) => {
            printer.finish();
            return Err(keeps_running(e, id));
        }
    };
    printer.summary(&done)?;
    Ok(ExitCode::from(exit_for_status(done.status())))
}

/// Resolves on Ctrl-C; never, when the signal cannot be watched.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn keeps_running(e: anyhow::Error, id: u64) -> anyhow::Error {
    anyhow!("{e:#} (job {id} keeps running; `zeroci logs {id} --follow` to watch it)")
}

fn ended_early(id: u64) -> anyhow::Error {
    anyhow!("the log stream of job {id} ended before the job did")
}
