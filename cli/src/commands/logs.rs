//! `zeroci logs JOB [--follow] [--raw] [--step N|NAME]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use zeroci::pb;

use crate::args::{LogsArgs, StepSelector};
use crate::display::LogPrinter;
use crate::follow::{LogRequest, Reconnect, stream_logs};

pub async fn logs(profile: Option<&Path>, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(profile).await?;
    let step = match args.step {
        None => None,
        Some(StepSelector::Index(index)) => Some(index),
        Some(StepSelector::Name(name)) => {
            let response = client.rpc.get_job(pb::GetJobRequest { id: args.job }).await;
            let job = response
                .map_err(|s| client.job_error(&s, args.job))?
                .into_inner();
            Some(select_step(&job, &name)?)
        }
    };
    let request = LogRequest {
        job: args.job,
        follow: args.follow,
        step,
        reconnect: Reconnect::default(),
    };
    let mut printer = if args.raw {
        LogPrinter::raw()
    } else {
        LogPrinter::logs()
    };
    let done = stream_logs(&mut client, &request, &mut printer).await?;
    if let Some(job) = done {
        printer.summary(&job)?;
    }
    // Reading a log worked, whatever the job's result: that is `run`'s and `show`'s business.
    Ok(ExitCode::SUCCESS)
}

/// The index of the step called `name`: an exact match, else the only step whose name starts with it.
pub fn select_step(job: &pb::Job, name: &str) -> anyhow::Result<u32> {
    if let Some(step) = job.steps.iter().find(|s| s.name == name) {
        return Ok(step.index);
    }
    let matches: Vec<&pb::StepInfo> = job
        .steps
        .iter()
        .filter(|s| s.name.starts_with(name))
        .collect();
    match matches.as_slice() {
        [step] => Ok(step.index),
        [] => {
            let names: Vec<&str> = job.steps.iter().map(|s| s.name.as_str()).collect();
            if names.is_empty() {
                bail!("job {} has no steps yet, so no step {name:?}", job.id);
            }
            bail!(
                "job {} has no step {name:?} (steps: {})",
                job.id,
                names.join(", ")
            )
        }
        several => {
            let names: Vec<&str> = several.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "{name:?} matches several steps of job {}: {}",
                job.id,
                names.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(names: &[&str]) -> pb::Job {
        pb::Job {
            id: 9,
            steps: names
                .iter()
                .enumerate()
                .map(|(i, n)| pb::StepInfo {
                    index: u32::try_from(i).unwrap(),
                    name: (*n).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn exact_then_unique_prefix() {
        let j = job(&["checkout", "install", "unit", "unit-slow", "lint"]);
        assert_eq!(select_step(&j, "unit").unwrap(), 2, "exact beats prefix");
        assert_eq!(select_step(&j, "unit-").unwrap(), 3);
        assert_eq!(select_step(&j, "che").unwrap(), 0);
        assert_eq!(select_step(&j, "li").unwrap(), 4);
    }

    #[test]
    fn unknown_and_ambiguous() {
        let j = job(&["checkout", "install", "unit", "unit-slow"]);
        let err = select_step(&j, "un").unwrap_err().to_string();
        assert!(
            err.contains("matches several steps") && err.contains("unit, unit-slow"),
            "{err}"
        );
        let err = select_step(&j, "deploy").unwrap_err().to_string();
        assert!(
            err.contains("has no step \"deploy\"") && err.contains("checkout, install"),
            "{err}"
        );
        let err = select_step(&job(&[]), "x").unwrap_err().to_string();
        assert!(err.contains("no steps yet"), "{err}");
    }
}
