//! `zeroci-controller`: `init` a new installation, or serve (the default).

mod user_command;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use zeroci_controller::config::Config;
use zeroci_controller::init::{self, InitOptions};
use zeroci_controller::provisioner::vm::image::{self, BuildRequest, ImageStore};

/// Exit code for an invalid configuration (EX_CONFIG).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "zeroci-controller", version, about = "The ZeroCI controller")]
struct Args {
    /// Config file; default ./.zeroci/config.toml (created by `init` when missing).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Override [main] grpc_listen (e.g. 127.0.0.1:0 for a free port).
    #[arg(long)]
    grpc_listen: Option<String>,
    /// Override [main] http_listen (e.g. 127.0.0.1:0 for a free port).
    #[arg(long)]
    http_listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create DIR/config.toml, DIR/pki/ (CA, controller and admin certificates) and DIR/cli.toml.
    Init {
        #[arg(long, default_value = ".zeroci")]
        dir: PathBuf,
        #[arg(long, default_value = init::DEFAULT_GRPC_LISTEN)]
        grpc_listen: String,
        #[arg(long)]
        http_listen: Option<String>,
        /// Base URL of result pages, e.g. https://ci.example.com
        #[arg(long)]
        domain: Option<String>,
        /// Replace an existing installation (new CA).
        #[arg(long)]
        force: bool,
    },
    /// Send a test message through every configured notifier and say what is wrong with each that
    /// fails (a bad token, an unknown chat, a bot not in the group). Exit code 1 when one fails.
    CheckNotify,
    /// Build, list and remove the images `vm` machines boot from.
    Image {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Issue, list and revoke the CLI's client certificates.
    User {
        #[command(subcommand)]
        action: user_command::UserAction,
    },
}

#[derive(Subcommand)]
enum ImageAction {
    /// Build an image offline from Debian's packages (debootstrap, a cloud kernel, git,
    /// ca-certificates) and replace any image of that name.
    Build {
        /// The image's name: what `[provisioner.vm.images]` and zeroCI.yaml's `image_name` refer to.
        #[arg(default_value = image::DEFAULT_IMAGE)]
        name: String,
        /// Further Debian packages to install (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', num_args = 1..)]
        packages: Vec<String>,
        /// Debian suite.
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Debian mirror.
        #[arg(long, default_value = "http://deb.debian.org/debian")]
        mirror: String,
    },
    /// List the built images.
    List,
    /// Remove an image.
    Rm { name: String },
}

fn main() -> ExitCode {
    zeroci::install_crypto_provider();
    zeroci::telemetry::init("info");
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zeroci-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Command::Init {
        dir,
        grpc_listen,
        http_listen,
        domain,
        force,
    }) = args.command
    {
        let done = init::init(&InitOptions {
            dir,
            grpc_listen,
            http_listen,
            domain,
            force,
        })?;
        println!(
            "wrote {} and {}",
            done.config.display(),
            done.profile.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let config_path = match args.config {
        Some(path) => path,
        None => {
            let path = PathBuf::from(".zeroci/config.toml");
            if !path.exists() {
                let options = InitOptions {
                    dir: PathBuf::from(".zeroci"),
                    grpc_listen: init::DEFAULT_GRPC_LISTEN.to_string(),
                    http_listen: None,
                    domain: None,
                    force: false,
                };
                let done = init::init(&options).context("first-run init")?;
                eprintln!(
                    "zeroci-controller: first run: wrote {} and {}",
                    done.config.display(),
                    done.profile.display()
                );
            }
            path
        }
    };
    let mut config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("zeroci-controller: invalid configuration: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if let Some(Command::Image { action }) = args.command {
        return image_command(&config, action);
    }
    if let Some(Command::User { action }) = args.command {
        return user_command::run(&config, action);
    }
    if let Some(Command::CheckNotify) = args.command {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let results = runtime.block_on(zeroci_controller::notify::check(&config));
        if results.is_empty() {
            println!("no notifier is configured ([telegram])");
        }
        let mut failed = false;
        for (name, result) in results {
            match result {
                Ok(()) => println!("{name}: ok, test message sent"),
                Err(problem) => {
                    failed = true;
                    println!("{name}: FAILED: {problem}");
                }
            }
        }
        return Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    if args.grpc_listen.is_some() || args.http_listen.is_some() {
        if let Some(listen) = args.grpc_listen {
            config.main.grpc_listen = listen;
        }
        if let Some(listen) = args.http_listen {
            config.main.http_listen = Some(listen);
        }
        if let Err(e) = config.validate() {
            eprintln!("zeroci-controller: invalid configuration: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.main.grpc_listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.main.grpc_listen))?;
        let bound = listener.local_addr()?;
        let http = match &config.main.http_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let http_bound = match &http {
            Some(l) => format!(" http={}", l.local_addr()?),
            None => String::new(),
        };
        let shutdown = CancellationToken::new();
        let force = CancellationToken::new();
        zeroci::signals::watch(shutdown.clone(), force.clone(), |_| {})?;
        tokio::spawn(async move {
            force.cancelled().await;
            std::process::exit(130);
        });
        let listeners = zeroci_controller::server::Listeners {
            grpc: listener,
            http,
            // The readiness line tests and scripts wait for.
            on_ready: Some(Box::new(move || {
                println!("zeroci-controller ready grpc={bound}{http_bound}");
            })),
        };
        zeroci_controller::server::serve(config, listeners, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn image_command(config: &Config, action: ImageAction) -> anyhow::Result<ExitCode> {
    let store = ImageStore::for_config(config);
    match action {
        ImageAction::Build {
            name,
            packages,
            suite,
            mirror,
        } => {
            let request = BuildRequest {
                name,
                packages,
                suite,
                mirror,
            };
            let started = std::time::Instant::now();
            let built = store.build(&request, &mut |line| eprintln!("image: {line}"))?;
            println!(
                "built image {} in {:.0?} ({})",
                built.info.name,
                started.elapsed(),
                store.dir().join(&built.info.name).display()
            );
        }
        ImageAction::List => {
            for image in store.list() {
                let extra = if image.info.packages.is_empty() {
                    String::new()
                } else {
                    format!(" +{}", image.info.packages.join(","))
                };
                println!(
                    "{}\t{}{}\t{} MiB",
                    image.info.name,
                    image.info.suite,
                    extra,
                    image.info.bytes >> 20
                );
            }
        }
        ImageAction::Rm { name } => {
            store.remove(&name)?;
            println!("removed image {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
