//! End-to-end benchmark of the real binaries (run by hand, figures go in issue notes):
//!
//! ```text
//! cargo build --release && cargo bench --bench pipeline            # all
//! cargo bench --bench pipeline -- latency 20                              # 20 trivial jobs
//! cargo bench --bench pipeline -- throughput 1024                         # a step printing 1024 MiB
//! cargo bench --bench pipeline -- hook 20                                 # commits through the git hook
//! cargo bench --bench pipeline -- latency 20 none                         # unisolated machines
//! cargo bench --bench pipeline -- burst 200                               # 200 jobs submitted at once
//! ZEROCI_BENCH_BACKENDS=production cargo bench --bench pipeline -- …      # on MongoDB + Redis
//! ```
//!
//! - latency: submit → first output byte, and submit → final status, for a trivial repository
//!   (`echo hello`), measured by a gRPC client following the log; median and worst of N runs.
//! - throughput: one step prints N MiB to stdout; time from first byte to final status, MB/s through to
//!   the store, and the controller's peak resident memory (VmHWM) during the run.
//! - hook: `zeroci hook install` on a repository, then N commits; time from `git commit` returning to
//!   the job's final status (median and worst).
//! - burst: N trivial jobs submitted at once (`workers = 50`): jobs accepted per second, and jobs
//!   dispatched and finished per second.
//!
//! With `ZEROCI_BENCH_BACKENDS=production` the controller stores in MongoDB (nx-27017, an emulator:
//! figures are a lower bound) and queues in Redis, both started by the benchmark.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use zeroci::pb;
use zeroci::pb::control_service_client::ControlServiceClient;

use zeroci_testkit::{bin_dir, git};

struct Controller {
    child: Child,
    addr: String,
    /// MongoDB and Redis when the benchmark runs on the production backends.
    _services: Vec<zeroci_testkit::services::Service>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo(root: &Path, name: &str, yaml: &str) -> PathBuf {
    let dir = root.join(name);
    zeroci_testkit::init_repo(&dir, &[("zeroCI.yaml", yaml)]);
    dir
}

fn start_controller(home: &Path, isolation: &str) -> Controller {
    let bins = bin_dir();
    let status = Command::new(bins.join("zeroci-controller"))
        .args(["init", "--dir"])
        .arg(home)
        .args(["--grpc-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .status()
        .expect("init (build the binaries first: cargo build --release)");
    assert!(status.success());
    let config = home.join("config.toml");
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let mut machines = toml::Table::new();
    machines.insert(
        "agent_binary".into(),
        bins.join("zeroci-agent").display().to_string().into(),
    );
    let mut provisioner = toml::Table::new();
    match isolation.strip_prefix("vm:") {
        // `vm:IMAGES_DIR`: VM machines booting the `default` image there.
        Some(images) => {
            machines.insert("images_dir".into(), images.into());
            provisioner.insert("kind".into(), "vm".into());
            provisioner.insert("vm".into(), machines.into());
        }
        None => {
            machines.insert("isolation".into(), isolation.into());
            provisioner.insert("local".into(), machines.into());
        }
    }
    table.insert("provisioner".into(), provisioner.into());
    if let Some(main) = table.get_mut("main").and_then(|m| m.as_table_mut()) {
        main.insert("workers".into(), 50i64.into());
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
    let mut child = Command::new(bins.join("zeroci-controller"))
        .arg("--config")
        .arg(&config)
        .args(["--http-listen", "127.0.0.1:0"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("controller");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .expect("ready line")
        .to_string();
    Controller {
        child,
        addr,
        _services: services,
    }
}

async fn client(home: &Path, addr: &str) -> ControlServiceClient<tonic::transport::Channel> {
    let read = |f: &str| std::fs::read_to_string(home.join("pki").join(f)).unwrap();
    let tls = zeroci::tls::client_config(
        &read("ca.crt"),
        Some((&read("admin.crt"), &read("admin.key"))),
    );
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    ControlServiceClient::new(channel)
}

struct RunTimes {
    first_byte: Option<Duration>,
    done: Duration,
    bytes: u64,
    status: String,
}

async fn run_once(
    client: &mut ControlServiceClient<tonic::transport::Channel>,
    repo: &Path,
) -> RunTimes {
    let start = Instant::now();
    let job = client
        .submit_job(pb::SubmitJobRequest {
            repo_url: repo.display().to_string(),
            commit: "HEAD".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    follow(client, job.id, start).await
}

/// Follows job `id`'s log to its end: when its first step's first byte came and when it ended
/// (counted from `start`), its output's size and its final status.
async fn follow(
    client: &mut ControlServiceClient<tonic::transport::Channel>,
    id: u64,
    start: Instant,
) -> RunTimes {
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
    let mut first_byte = None;
    let mut bytes = 0u64;
    let mut status = String::new();
    while let Some(event) = stream.next().await {
        match event.unwrap().kind {
            Some(pb::log_event::Kind::Output(out)) => {
                if first_byte.is_none() && out.step > 0 {
                    first_byte = Some(start.elapsed());
                }
                bytes += out.data.len() as u64;
            }
            Some(pb::log_event::Kind::JobDone(job)) => status = job.status().word(),
            _ => {}
        }
    }
    RunTimes {
        first_byte,
        done: start.elapsed(),
        bytes,
        status,
    }
}

/// N trivial jobs submitted at once: acceptance and completion rates.
async fn burst(jobs: usize, isolation: &str) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let controller = start_controller(&home, isolation);
    let repo = repo(dir.path(), "trivial", "script:\n  - echo hello\n");
    let client = client(&home, &controller.addr).await;
    let start = Instant::now();
    let submits = (0..jobs).map(|_| {
        let mut client = client.clone();
        let repo = repo.display().to_string();
        async move {
            client
                .submit_job(pb::SubmitJobRequest {
                    repo_url: repo,
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
    });
    let ids = futures::future::join_all(submits).await;
    let accepted = start.elapsed();
    let waits = ids.iter().map(|id| {
        let mut client = client.clone();
        let id = *id;
        async move { follow(&mut client, id, start).await.status }
    });
    let statuses = futures::future::join_all(waits).await;
    let finished = start.elapsed();
    let ok = statuses.iter().filter(|s| *s == "success").count();
    println!(
        "burst ({jobs} jobs, workers 50): accepted in {:.0} ms ({:.0} jobs/s); all final in {:.2} s ({:.1} jobs/s); {ok} succeeded",
        ms(accepted),
        jobs as f64 / accepted.as_secs_f64(),
        finished.as_secs_f64(),
        jobs as f64 / finished.as_secs_f64(),
    );
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn latency(runs: usize, isolation: &str) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let controller = start_controller(&home, isolation);
    let repo = repo(dir.path(), "trivial", "script:\n  - echo hello\n");
    let mut client = client(&home, &controller.addr).await;
    // One warm-up run (page cache, first TLS handshakes).
    run_once(&mut client, &repo).await;
    let mut first = Vec::new();
    let mut done = Vec::new();
    for _ in 0..runs {
        let t = run_once(&mut client, &repo).await;
        assert_eq!(t.status, "success");
        first.push(ms(t.first_byte.expect("output")));
        done.push(ms(t.done));
    }
    first.sort_by(f64::total_cmp);
    done.sort_by(f64::total_cmp);
    println!(
        "latency ({runs} runs): submit→first byte median {:.1} ms (max {:.1}); submit→final status median {:.1} ms (max {:.1})",
        first[runs / 2],
        first[runs - 1],
        done[runs / 2],
        done[runs - 1]
    );
}

async fn throughput(mib: u64, isolation: &str) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let controller = start_controller(&home, isolation);
    let yaml = format!(
        "script:\n  - yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz | head -c {}\n",
        mib * 1024 * 1024
    );
    let repo = repo(dir.path(), "loud", &yaml);
    let mut client = client(&home, &controller.addr).await;
    let t = run_once(&mut client, &repo).await;
    assert_eq!(t.status, "success");
    let first = t.first_byte.unwrap_or_default();
    let secs = (t.done - first).as_secs_f64();
    let log = home.join("state/jobs/1/log");
    let stored = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    println!(
        "throughput: {mib} MiB printed, {} bytes streamed back, log file {} bytes; first byte→final status {:.2} s = {:.0} MB/s; controller peak RSS {:.1} MiB",
        t.bytes,
        stored,
        secs,
        (mib * 1024 * 1024) as f64 / secs / 1e6,
        peak_rss_mib(controller.child.id())
    );
}

async fn hook(runs: usize, isolation: &str) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let controller = start_controller(&home, isolation);
    let profile = home.join("cli.toml");
    let text = std::fs::read_to_string(&profile).unwrap();
    let mut table: toml::Table = toml::from_str(&text).unwrap();
    table.insert("controller".into(), controller.addr.clone().into());
    std::fs::write(&profile, toml::to_string(&table).unwrap()).unwrap();
    let repo = repo(dir.path(), "hooked", "script:\n  - echo hello\n");
    let installed = Command::new(bin_dir().join("zeroci"))
        .arg("--profile")
        .arg(&profile)
        .args(["hook", "install"])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(installed.success());
    let mut client = client(&home, &controller.addr).await;
    let mut times = Vec::new();
    for n in 0..=runs {
        std::fs::write(repo.join("counter"), n.to_string()).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "bench"]);
        let committed = Instant::now();
        let jobs = client
            .list_jobs(pb::ListJobsRequest {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let id = jobs.into_inner().jobs[0].id;
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
        let mut status = String::new();
        while let Some(event) = stream.next().await {
            if let Some(pb::log_event::Kind::JobDone(job)) = event.unwrap().kind {
                status = job.status().word();
            }
        }
        assert_eq!(status, "success");
        if n > 0 {
            // The first commit warms the page cache and connections.
            times.push(ms(committed.elapsed()));
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "hook ({runs} commits): git commit returned → final status median {:.1} ms (max {:.1})",
        times[runs / 2],
        times[runs - 1]
    );
}

fn main() {
    zeroci::install_crypto_provider();
    // `cargo bench` passes `--bench`; skip flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let what = args.first().map(String::as_str).unwrap_or("all");
    let n = |default: u64| args.get(1).and_then(|s| s.parse().ok()).unwrap_or(default);
    // Third argument: `none` measures unisolated machines, for the sandbox's cost.
    let isolation = args.get(2).map(String::as_str).unwrap_or("namespaces");
    runtime.block_on(async {
        if what == "latency" || what == "all" {
            latency(n(20) as usize, isolation).await;
        }
        if what == "hook" || what == "all" {
            hook(n(20) as usize, isolation).await;
        }
        if what == "burst" || what == "all" {
            burst(n(200) as usize, isolation).await;
        }
        if what == "throughput" || what == "all" {
            throughput(n(1024), isolation).await;
        }
    });
}
