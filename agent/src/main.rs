//! `zeroci-agent`: command-line entry point. The logic lives in the library (`zeroci_agent::run`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
        #[arg(long)]
        bootstrap: PathBuf,
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = match cli.command {
        Command::Run {
            bootstrap,
            workdir,
            give_up_after,
            shared_test_xml,
        } => {
            let mut config = zeroci_agent::AgentConfig::new(
                bootstrap,
                workdir,
                Duration::from_secs(give_up_after),
            );
            config.run_options.shared_test_xml = shared_test_xml;
            match runtime.block_on(zeroci_agent::run(config)) {
                Ok(()) => 0,
                Err(error) => {
                    tracing::error!(error = %error, "agent stopped");
                    error.exit_code()
                }
            }
        }
    };
    // Tasks still running (a reader stuck on a pipe) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}
