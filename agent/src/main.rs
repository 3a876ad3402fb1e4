//! `zeroci-agent`: command-line entry point. The logic lives in the library (`zeroci_agent::run`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zeroci_agent::{AgentConfig, Bootstrap, BootstrapSource};

#[derive(Debug, Parser)]
#[command(
    name = "zeroci-agent",
    version,
    about = "Runs one ZeroCI job on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with the bootstrap file, run the job, exit when it is done.
    Run {
        /// The bootstrap JSON written by the provisioner (deleted after enrollment).
        #[arg(
            long,
            required_unless_present = "bootstrap_fd",
            conflicts_with = "bootstrap_fd"
        )]
        bootstrap: Option<PathBuf>,
        /// Read the bootstrap JSON from this inherited descriptor instead of a file.
        #[arg(long, value_name = "FD")]
        bootstrap_fd: Option<i32>,
        /// Work directory for the checkout and test results.
        #[arg(long)]
        workdir: PathBuf,
        /// Seconds without a working connection to the controller before giving up.
        #[arg(long, default_value_t = 600)]
        give_up_after: u64,
        /// Also read a step's JUnit report from this fixed path (e.g. /test.xml, as the original ZeroCI
        /// did on its throw-away VMs). Only for machines that run one job: the file is removed after it
        /// is sent so the next step starts clean.
        #[arg(long, value_name = "PATH")]
        shared_test_xml: Option<PathBuf>,
        /// Say in the job's log that it ran without isolation (a `local` machine with
        /// `isolation = "none"`).
        #[arg(long)]
        unisolated: bool,
    },
    /// Build a sandbox of fresh Linux namespaces from the spec on descriptor FD (written by the
    /// controller's `local` machines) and run the job inside it.
    Sandbox {
        #[arg(long, value_name = "FD")]
        spec_fd: i32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    zeroci::install_crypto_provider();
    zeroci::telemetry::init("info");
    match real_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "agent failed to start");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<u8> {
    // Before any thread exists: the sandbox forks, and only the agent's process goes on from here.
    let config = agent_config(cli.command)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = match runtime.block_on(zeroci_agent::run(config)) {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!(error = %error, "agent stopped");
            error.exit_code()
        }
    };
    // Tasks still running (a reader stuck on a pipe) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}

fn agent_config(command: Command) -> anyhow::Result<AgentConfig> {
    match command {
        Command::Run {
            bootstrap,
            bootstrap_fd,
            workdir,
            give_up_after,
            shared_test_xml,
            unisolated,
        } => {
            let bootstrap = match (bootstrap, bootstrap_fd) {
                (Some(path), _) => BootstrapSource::File(path),
                (None, Some(fd)) => BootstrapSource::Given(read_bootstrap_fd(fd)?),
                (None, None) => anyhow::bail!("--bootstrap or --bootstrap-fd is required"),
            };
            let mut config =
                AgentConfig::new(bootstrap, workdir, Duration::from_secs(give_up_after));
            config.run_options.shared_test_xml = shared_test_xml;
            config.run_options.unisolated = unisolated;
            Ok(config)
        }
        Command::Sandbox { spec_fd } => {
            let entered = zeroci_agent::sandbox::enter(spec_fd)?;
            let mut config = AgentConfig::new(
                BootstrapSource::Given(entered.spec.bootstrap.clone()),
                entered.workdir,
                Duration::from_secs(entered.spec.give_up_after_secs),
            );
            config.run_options.isolate_network =
                zeroci_agent::sandbox::isolates_step_network(&entered.spec);
            Ok(config)
        }
    }
}

/// The bootstrap JSON on an inherited descriptor, which is closed afterwards.
fn read_bootstrap_fd(fd: i32) -> anyhow::Result<Bootstrap> {
    use std::os::fd::{FromRawFd, OwnedFd};
    anyhow::ensure!(fd > 2, "--bootstrap-fd {fd} is not an inherited descriptor");
    // SAFETY: the provisioner hands this descriptor to the agent alone; nothing else uses it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(Bootstrap::read_from(file, &format!("descriptor {fd}"))?)
}
