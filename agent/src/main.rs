//! `zeroci-agent`: command-line entry point. The logic lives in the library (`zeroci_agent::run`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
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
            required_unless_present_any = ["bootstrap_fd", "bootstrap_env"],
            conflicts_with_all = ["bootstrap_fd", "bootstrap_env"]
        )]
        bootstrap: Option<PathBuf>,
        /// Read the bootstrap JSON from this inherited descriptor instead of a file.
        #[arg(long, value_name = "FD", conflicts_with = "bootstrap_env")]
        bootstrap_fd: Option<i32>,
        /// Read the bootstrap from ZEROCI_CONTROLLER, ZEROCI_CA_PEM, ZEROCI_BOOTSTRAP_TOKEN and
        /// ZEROCI_JOB_ID (a machine configured by environment, such as a ThreeFold Grid zmachine);
        /// they are removed from the environment before any step runs.
        #[arg(long)]
        bootstrap_env: bool,
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
    /// Join a controller's pool: stay running and make a fresh machine for each job the controller
    /// sends (`[provisioner] kind = "pool"`).
    Join(JoinArgs),
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// The controller's gRPC address (`host:port`); several, comma-separated, are tried in turn.
    #[arg(long, env = "ZEROCI_CONTROLLER")]
    controller: String,
    /// The join token (`zeroci agents token create NAME`); prefer --token-file or the environment,
    /// which other users cannot read in the process list.
    #[arg(
        long,
        env = "ZEROCI_JOIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// A file holding the join token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The controller's CA certificate (PEM), which its certificate must chain to.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// This host's name in `zeroci agents` (default: its host name).
    #[arg(long)]
    name: Option<String>,
    /// What this host offers, comma-separated (`linux,gpu`); jobs asking for labels run only on
    /// hosts that have them all.
    #[arg(long, default_value = "")]
    labels: String,
    /// Machines at once at most.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// Where machines live (default: /var/lib/zeroci-agent as root, else ~/.local/state/zeroci-agent).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// `namespaces`: each job in a sandbox of fresh Linux namespaces. `none`: jobs run as this user,
    /// unisolated; the controller then sends no fork pull request here. `in-process`: as `none`, and
    /// each machine's agent is a task of this process (many agents cheaply: for load tests).
    #[arg(long, value_enum, default_value_t = JoinIsolation::Namespaces)]
    isolation: JoinIsolation,
    /// `none`: steps run without a network (the checkout still has it); sandboxes only.
    #[arg(long, value_enum, default_value_t = JoinNetwork::Host)]
    network: JoinNetwork,
    /// Show jobs whose repository is a local path that path, read-only (for a host that shares the
    /// controller's file system); without it such jobs fail to clone, and no job sees this host's files.
    #[arg(long)]
    local_repos: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum JoinIsolation {
    Namespaces,
    None,
    InProcess,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum JoinNetwork {
    Host,
    None,
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
    if let Command::Join(args) = cli.command {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        return runtime.block_on(join(args));
    }
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

/// `zeroci-agent join`: serves until SIGTERM/SIGINT or a refused token.
async fn join(args: JoinArgs) -> anyhow::Result<u8> {
    use zeroci_agent::pool::machines::{MachineSettings, Machines};
    let token = match (args.token, &args.token_file) {
        (Some(token), _) => token,
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the join token from {}", file.display()))?,
        (None, None) => {
            anyhow::bail!("a join token is needed: --token-file FILE or ZEROCI_JOIN_TOKEN")
        }
    };
    let ca_pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("cannot read the CA certificate {}", args.ca.display()))?;
    let labels = zeroci::labels::parse_list(&args.labels).map_err(anyhow::Error::msg)?;
    let name = args.name.unwrap_or_else(zeroci_agent::hostname);
    zeroci::labels::validate(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    anyhow::ensure!(args.capacity >= 1, "--capacity must be at least 1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let work_dir = match args.work_dir {
        Some(dir) => dir,
        None if root => PathBuf::from("/var/lib/zeroci-agent"),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".local/state/zeroci-agent"))
            .context("--work-dir is needed: HOME is not set")?,
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    std::fs::set_permissions(
        &work_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("cannot make {} private", work_dir.display()))?;
    let agent_binary = std::env::current_exe().context("cannot find this program's path")?;
    if matches!(args.network, JoinNetwork::None)
        && !matches!(args.isolation, JoinIsolation::Namespaces)
    {
        anyhow::bail!(
            "--network none is a sandbox's (--isolation namespaces): unisolated and in-process machines share this host's network"
        );
    }
    // In-process machines hold several descriptors each (a stream, step pipes): a thousand need more
    // than the usual 1,024. Only then: steps of agent processes would inherit a limit some programs
    // loop over.
    if matches!(args.isolation, JoinIsolation::InProcess) {
        match zeroci::process::raise_open_files_limit() {
            Ok(open_files) => tracing::debug!(open_files, "open-file limit raised to its maximum"),
            Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
        }
    }
    let isolated = matches!(args.isolation, JoinIsolation::Namespaces);
    if isolated {
        zeroci::sandbox::probe_namespaces(&agent_binary).map_err(|reason| {
            anyhow::anyhow!(
                "{reason}, or join with --isolation none to run jobs unisolated on purpose"
            )
        })?;
    }
    let host_id = zeroci_agent::pool::host_id(&work_dir)
        .with_context(|| format!("cannot keep this host's id in {}", work_dir.display()))?;
    let mut hidden = vec![work_dir.clone(), args.ca.clone()];
    hidden.extend(args.token_file.clone());
    let (machines, gone) = Machines::open(MachineSettings {
        dir: work_dir.join("machines"),
        agent_binary,
        isolated,
        network: match args.network {
            JoinNetwork::Host => zeroci::sandbox::StepNetwork::Host,
            JoinNetwork::None => zeroci::sandbox::StepNetwork::None,
        },
        first_uid: root.then_some(zeroci::sandbox::DEFAULT_FIRST_UID),
        hidden,
        local_repos: args.local_repos,
        in_process: matches!(args.isolation, JoinIsolation::InProcess),
    })
    .await
    .with_context(|| format!("cannot prepare {}", work_dir.display()))?;
    let settings = zeroci_agent::pool::JoinSettings {
        controllers: zeroci_agent::endpoints::list(&args.controller),
        token: token.trim().to_string(),
        ca_pem,
        name,
        host_id,
        labels,
        capacity: args.capacity,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let force = tokio_util::sync::CancellationToken::new();
    zeroci::signals::watch(shutdown.clone(), force.clone(), |_| {})
        .context("cannot install signal handlers")?;
    tokio::select! {
        joined = zeroci_agent::pool::join(settings, machines, gone, shutdown) => match joined {
            Ok(()) => Ok(0),
            Err(error) => {
                tracing::error!(%error, "stopped");
                Ok(2)
            }
        },
        () = force.cancelled() => Ok(1),
    }
}

fn agent_config(command: Command) -> anyhow::Result<AgentConfig> {
    match command {
        Command::Run {
            bootstrap,
            bootstrap_fd,
            bootstrap_env,
            workdir,
            give_up_after,
            shared_test_xml,
            unisolated,
        } => {
            let bootstrap = match (bootstrap, bootstrap_fd) {
                (Some(path), _) => BootstrapSource::File(path),
                (None, Some(fd)) => BootstrapSource::Given(read_bootstrap_fd(fd)?),
                (None, None) if bootstrap_env => BootstrapSource::Given(read_bootstrap_env()?),
                (None, None) => {
                    anyhow::bail!("--bootstrap, --bootstrap-fd or --bootstrap-env is required")
                }
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
        Command::Join(_) => anyhow::bail!("join is served by `join`"),
    }
}

/// The bootstrap from the environment, which then forgets it (steps inherit no token).
fn read_bootstrap_env() -> anyhow::Result<Bootstrap> {
    let bootstrap =
        Bootstrap::from_env(|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?;
    for (name, _) in bootstrap.to_env() {
        // SAFETY: called from `main` before the runtime or any other thread exists.
        unsafe { std::env::remove_var(name) };
    }
    Ok(bootstrap)
}

/// The bootstrap JSON on an inherited descriptor, which is closed afterwards.
fn read_bootstrap_fd(fd: i32) -> anyhow::Result<Bootstrap> {
    use std::os::fd::{FromRawFd, OwnedFd};
    anyhow::ensure!(fd > 2, "--bootstrap-fd {fd} is not an inherited descriptor");
    // SAFETY: the provisioner hands this descriptor to the agent alone; nothing else uses it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(Bootstrap::read_from(file, &format!("descriptor {fd}"))?)
}
