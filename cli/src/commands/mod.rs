//! One module per subcommand. Each returns the process exit status; errors become `zeroci: <message>`
//! and [`EXIT_TROUBLE`] in `main`.

use std::path::Path;
use std::process::ExitCode;

use zeroci::pb;

use crate::args::{Args, Command};
use crate::client::{Client, load_profile};

mod agents;
mod artifact;
mod completions;
mod hook;
mod jobs;
mod lint;
mod logs;
mod run;
mod schedule;

/// The job succeeded, or a read command worked.
pub const EXIT_OK: u8 = 0;
/// The job failed (a script step failed).
pub const EXIT_FAILURE: u8 = 1;
/// The job ended in error (invalid zeroCI.yaml, install failed, timeout, machine lost).
pub const EXIT_ERROR: u8 = 2;
/// The job was cancelled.
pub const EXIT_CANCELLED: u8 = 3;
/// The CLI could not do what was asked: no profile, controller unreachable or refusing, unknown job,
/// not a git repository, unknown ref.
pub const EXIT_TROUBLE: u8 = 4;
/// The command line itself is wrong (BSD `EX_USAGE`; clap's own 2 would read as "job error").
pub const EXIT_USAGE: u8 = 64;
/// Ctrl-C while following a job (128 + SIGINT); the job keeps running.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Exit status for a job's final status.
pub fn exit_for_status(status: pb::JobStatus) -> u8 {
    match status {
        pb::JobStatus::Success => EXIT_OK,
        pb::JobStatus::Failure => EXIT_FAILURE,
        pb::JobStatus::Error => EXIT_ERROR,
        pb::JobStatus::Cancelled => EXIT_CANCELLED,
        // Its run_on excluded the event: nothing was tested, nothing failed.
        pb::JobStatus::Skipped => EXIT_OK,
        // A status this CLI does not know (newer controller): not a result to report as success.
        _ => EXIT_TROUBLE,
    }
}

pub async fn dispatch(args: Args) -> anyhow::Result<ExitCode> {
    let profile = args.profile.as_deref();
    match args.command {
        Command::Run(a) => run::run(profile, a).await,
        Command::Jobs(a) => jobs::list(profile, a).await,
        Command::Show(a) => jobs::show(profile, a).await,
        Command::Cancel(a) => jobs::cancel(profile, a).await,
        Command::Logs(a) => logs::logs(profile, a).await,
        Command::Agents(a) => agents::agents(profile, a).await,
        Command::Artifact(a) => artifact::download(profile, a).await,
        Command::Rerun(a) => run::rerun(profile, a).await,
        Command::Hook(a) => hook::hook(profile, a),
        Command::Schedule(a) => schedule::schedule(profile, a).await,
        Command::Completions(a) => completions::completions(a),
        // Offline: no profile is loaded and nothing is dialled.
        Command::Lint(a) => lint::lint(a),
    }
}

async fn connect(profile: Option<&Path>) -> anyhow::Result<Client> {
    let profile = load_profile(profile)?;
    Client::connect(&profile).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_exit_codes() {
        assert_eq!(exit_for_status(pb::JobStatus::Success), 0);
        assert_eq!(exit_for_status(pb::JobStatus::Failure), 1);
        assert_eq!(exit_for_status(pb::JobStatus::Error), 2);
        assert_eq!(exit_for_status(pb::JobStatus::Cancelled), 3);
        assert_eq!(exit_for_status(pb::JobStatus::Running), 4);
    }
}
