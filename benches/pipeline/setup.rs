//! What every section needs: a controller of the real binary on a fresh installation, a gRPC client
//! with its admin certificate, repositories, and a follower of a job's log.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use zeroci::pb;
use zeroci::pb::control_service_client::ControlServiceClient;
use zeroci_testkit::bin_dir;

pub type Client = ControlServiceClient<tonic::transport::Channel>;

/// Where jobs run.
#[derive(Clone, Debug)]
pub enum Machines {
    /// `local` machines with this isolation (`namespaces` or `none`).
    Local(String),
    /// `vm` machines booting the `default` image in this directory.
    Vm(PathBuf),
    /// `pool` machines: hosts that join with `zeroci-agent join`.
    Pool,
}

impl Machines {
    pub fn label(&self) -> String {
        match self {
            Machines::Local(isolation) if isolation == "namespaces" => "local".into(),
            Machines::Local(isolation) => format!("local, isolation {isolation}"),
            Machines::Vm(_) => "vm".into(),
            Machines::Pool => "pool".into(),
        }
    }
}

/// A running controller, killed on drop, with its installation in a temporary directory.
pub struct Controller {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    pub home: PathBuf,
    /// Its log, one JSON object per line (`ZEROCI_LOG_FORMAT=json`), for its own spans.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
    /// MongoDB and Redis when the benchmark runs on the production backends.
    _services: Vec<zeroci_testkit::services::Service>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    /// `zeroci-controller init` in a fresh directory, then the controller on free ports with
    /// `workers` workers and `machines`.
    pub fn start(machines: &Machines, workers: usize) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let bins = bin_dir();
        let status = Command::new(bins.join("zeroci-controller"))
            .args(["init", "--dir"])
            .arg(&home)
            .args(["--grpc-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .status()
            .expect("init (build the binaries first: cargo build --release)");
        assert!(status.success());
        let config = home.join("config.toml");
        let mut table: toml::Table =
            toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        let mut settings = toml::Table::new();
        settings.insert(
            "agent_binary".into(),
            bins.join("zeroci-agent").display().to_string().into(),
        );
        let mut provisioner = toml::Table::new();
        match machines {
            Machines::Vm(images) => {
                settings.insert("images_dir".into(), images.display().to_string().into());
                provisioner.insert("kind".into(), "vm".into());
                provisioner.insert("vm".into(), settings.into());
            }
            Machines::Local(isolation) => {
                settings.insert("isolation".into(), isolation.clone().into());
                provisioner.insert("local".into(), settings.into());
            }
            Machines::Pool => {
                provisioner.insert("kind".into(), "pool".into());
                provisioner.insert(
                    "pool".into(),
                    toml::from_str::<toml::Table>("agent_give_up = 600")
                        .unwrap()
                        .into(),
                );
            }
        }
        table.insert("provisioner".into(), provisioner.into());
        if let Some(main) = table.get_mut("main").and_then(|m| m.as_table_mut()) {
            main.insert("workers".into(), (workers as i64).into());
        }
        let mut services = Vec::new();
        if std::env::var("ZEROCI_BENCH_BACKENDS").is_ok_and(|b| b == "production") {
            let (mongo, redis) = (
                zeroci_testkit::services::Service::mongo(),
                zeroci_testkit::services::Service::redis(),
            );
            let backends: toml::Table = toml::from_str(&format!(
                "[db]\nbackend = \"mongodb\"\nuri = \"{}\"\n[queue]\nbackend = \"redis\"\nurl = \"{}\"\n",
                mongo.url(),
                redis.url()
            ))
            .unwrap();
            table.extend(backends);
            services = vec![mongo, redis];
        }
        std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
        let log = dir.path().join("controller.log");
        let mut child = Command::new(bins.join("zeroci-controller"))
            .arg("--config")
            .arg(&config)
            .args(["--http-listen", "127.0.0.1:0"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("ZEROCI_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("controller");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in the ready line {line:?}"))
                .to_string()
        };
        Controller {
            grpc: field("grpc="),
            http: field("http="),
            child,
            home,
            log,
            _dir: dir,
            _services: services,
        }
    }

    /// A directory beside the installation for the section's repositories.
    pub fn scratch(&self) -> &Path {
        self._dir.path()
    }

    pub async fn client(&self) -> Client {
        let read = |f: &str| std::fs::read_to_string(self.home.join("pki").join(f)).unwrap();
        let tls = zeroci::tls::client_config(
            &read("ca.crt"),
            Some((&read("admin.crt"), &read("admin.key"))),
        );
        let channel = tonic::transport::Channel::from_shared(format!("https://{}", self.grpc))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        ControlServiceClient::new(channel)
    }

    /// The CLI profile `init` wrote, pointed at this controller's port.
    pub fn profile(&self) -> PathBuf {
        let profile = self.home.join("cli.toml");
        let text = std::fs::read_to_string(&profile).unwrap();
        let mut table: toml::Table = toml::from_str(&text).unwrap();
        table.insert("controller".into(), self.grpc.clone().into());
        std::fs::write(&profile, toml::to_string(&table).unwrap()).unwrap();
        profile
    }

    /// Highest resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_kib(self.child.id(), "VmHWM:") / 1024.0
    }

    /// Resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> f64 {
        status_kib(self.child.id(), "VmRSS:")
    }
}

/// A git repository with one commit holding `zeroCI.yaml`.
pub fn repo(root: &Path, name: &str, yaml: &str) -> PathBuf {
    let dir = root.join(name);
    zeroci_testkit::init_repo(&dir, &[("zeroCI.yaml", yaml)]);
    dir
}

/// `zeroci hook install` on `repo`: every commit queues a job.
pub fn install_hook(controller: &Controller, repo: &Path) {
    let installed = Command::new(bin_dir().join("zeroci"))
        .arg("--profile")
        .arg(controller.profile())
        .args(["hook", "install"])
        .arg(repo)
        .status()
        .unwrap();
    assert!(installed.success());
}

pub async fn submit(client: &mut Client, repo: &Path) -> u64 {
    client
        .submit_job(pb::SubmitJobRequest {
            repo_url: repo.display().to_string(),
            commit: "HEAD".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id
}

/// What following a job's log to its end saw.
pub struct Followed {
    pub done: Duration,
    pub bytes: u64,
    pub status: String,
}

/// Follows job `id`'s log to its end, as `zeroci logs --follow` does; `on_output` sees every chunk
/// as it arrives.
pub async fn follow(
    client: &mut Client,
    id: u64,
    start: Instant,
    mut on_output: impl FnMut(&[u8]),
) -> Followed {
    let mut stream = client
        .stream_logs(pb::StreamLogsRequest {
            id,
            follow: true,
            step: None,
            after: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = 0u64;
    let mut status = String::new();
    while let Some(event) = stream.next().await {
        match event.unwrap().kind {
            Some(pb::log_event::Kind::Output(out)) => {
                bytes += out.data.len() as u64;
                on_output(&out.data);
            }
            Some(pb::log_event::Kind::JobDone(job)) => status = job.status().word(),
            _ => {}
        }
    }
    Followed {
        done: start.elapsed(),
        bytes,
        status,
    }
}

/// The newest job's id (there is one).
pub async fn newest_job(client: &mut Client) -> u64 {
    newest_job_or_none(client).await.expect("a job")
}

/// The newest job's id, if there is any.
pub async fn newest_job_or_none(client: &mut Client) -> Option<u64> {
    let jobs = client
        .list_jobs(pb::ListJobsRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    jobs.into_inner().jobs.first().map(|job| job.id)
}

/// A field of `/proc/PID/status` in KiB (VmRSS, VmHWM).
pub fn status_kib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
}
