//! ZeroCI's benchmark: the real binaries, end to end, printing a table and writing JSON. Run by hand
//! (figures go in issue notes), never by the test suite:
//!
//! ```text
//! cargo build --release && cargo bench --bench pipeline                 # every section
//! cargo bench --bench pipeline -- commit live                            # some sections
//! cargo bench --bench pipeline -- commit --vm IMAGES_DIR                 # also on `vm` machines
//! cargo bench --bench pipeline -- --pontus ~/Pontus --buildbot ~/bb/bin   # and the peers beside
//! cargo bench --bench pipeline -- --runs 20 --mib 1024 --jobs 200 --agents 1000 --commits 50 --json out.json
//! ZEROCI_BENCH_BACKENDS=production cargo bench --bench pipeline -- …     # on MongoDB + Redis
//! ```
//!
//! Sections (the numbers follow issue 25):
//! 1. `commit`: `git commit` (post-commit hook installed) → the final status seen by a follower, for
//!    `true` on local machines (and on `vm` machines with `--vm`): median and p90;
//! 2. (with `commit`) where that time goes, from the controller's own log lines;
//! 3. `live`: a line printed in a step → seen by `logs --follow` and by the job page's event stream;
//! 4. `throughput`: a step printing 1 GiB → stored, beside the disk's own bandwidth; peak memory;
//! 5. `burst`: 200 jobs submitted at once to 50 workers; `agents`: 1,000 agents connected to one
//!    controller at once (the real agent code, many per process: a pool host joined with
//!    `--isolation in-process`), and the controller's memory per agent;
//! 6. `commits`: 50 commits in a row through the hook: how many are tested;
//! 7. `peers`: the same figures (1, 4, 6) of Pontus (`--pontus PATH`, a clone of its repository) and
//!    Buildbot (`--buildbot DIR` holding `buildbot` and `buildbot-worker` from PyPI;
//!    `--buildbot-mib 64`), driven by the scripts in `benches/peers/`, with ratios.
//!
//! With `ZEROCI_BENCH_BACKENDS=production` the controller stores in MongoDB (nx-27017, an emulator:
//! figures are a lower bound) and queues in Redis, both started by the benchmark.

mod agents;
mod concurrency;
mod latency;
mod live;
mod peers;
mod report;
mod setup;
mod throughput;

use std::path::PathBuf;

use report::Report;
use setup::Machines;

const SECTIONS: &[&str] = &[
    "commit",
    "live",
    "throughput",
    "burst",
    "agents",
    "commits",
    "peers",
];

struct Options {
    sections: Vec<String>,
    runs: usize,
    mib: u64,
    jobs: usize,
    commits: usize,
    agents: usize,
    vm_images: Option<PathBuf>,
    pontus: Option<PathBuf>,
    buildbot: Option<PathBuf>,
    buildbot_mib: u64,
    isolation: String,
    json: PathBuf,
}

fn options() -> Options {
    let mut options = Options {
        sections: Vec::new(),
        runs: 20,
        mib: 1024,
        jobs: 200,
        commits: 50,
        agents: 1000,
        vm_images: None,
        pontus: None,
        buildbot: None,
        buildbot_mib: 64,
        isolation: "namespaces".into(),
        json: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/pipeline.json"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            "--runs" => options.runs = value("--runs").parse().expect("--runs N"),
            "--mib" => options.mib = value("--mib").parse().expect("--mib N"),
            "--jobs" => options.jobs = value("--jobs").parse().expect("--jobs N"),
            "--commits" => options.commits = value("--commits").parse().expect("--commits N"),
            "--agents" => options.agents = value("--agents").parse().expect("--agents N"),
            "--vm" => options.vm_images = Some(value("--vm").into()),
            "--pontus" => options.pontus = Some(value("--pontus").into()),
            "--buildbot" => options.buildbot = Some(value("--buildbot").into()),
            "--buildbot-mib" => {
                options.buildbot_mib = value("--buildbot-mib").parse().expect("--buildbot-mib N")
            }
            "--isolation" => options.isolation = value("--isolation"),
            "--json" => options.json = value("--json").into(),
            section if SECTIONS.contains(&section) => options.sections.push(arg),
            other => panic!("unknown argument {other:?}; sections: {SECTIONS:?}"),
        }
    }
    if options.sections.is_empty() {
        options.sections = SECTIONS.iter().map(|s| s.to_string()).collect();
    }
    options
}

fn machine() -> serde_json::Value {
    let uname = std::process::Command::new("uname")
        .arg("-sr")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kvm": std::path::Path::new("/dev/kvm").exists(),
        "kernel": uname,
        "backends": std::env::var("ZEROCI_BENCH_BACKENDS").unwrap_or_else(|_| "embedded".into()),
        "at_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

fn main() {
    zeroci::install_crypto_provider();
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = Machines::Local(options.isolation.clone());
    let mut report = Report::default();
    let runs = |name: &str| options.sections.iter().any(|s| s == name);
    runtime.block_on(async {
        if runs("commit") {
            latency::commit_to_status(&mut report, &local, options.runs).await;
            if let Some(images) = &options.vm_images {
                let vm = Machines::Vm(images.clone());
                latency::commit_to_status(&mut report, &vm, options.runs).await;
            }
        }
        if runs("live") {
            live::live_log(&mut report, &local).await;
        }
        if runs("throughput") {
            throughput::log_throughput(&mut report, &local, options.mib).await;
        }
        if runs("burst") {
            concurrency::burst(&mut report, &local, options.jobs).await;
        }
        if runs("agents") {
            agents::many_agents(&mut report, options.agents).await;
        }
        if runs("commits") {
            concurrency::commit_burst(&mut report, &local, options.commits).await;
        }
        if runs("peers") {
            let peer_runs = peers::PeerRuns {
                runs: options.runs,
                commits: options.commits,
                buildbot_mib: options.buildbot_mib,
            };
            if let Some(path) = &options.pontus {
                peers::pontus(&mut report, path, &peer_runs);
            }
            if let Some(dir) = &options.buildbot {
                peers::buildbot(&mut report, dir, &peer_runs);
            }
        }
    });
    report.print();
    if let Some(parent) = options.json.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let json = serde_json::to_string_pretty(&report.json(machine())).unwrap();
    std::fs::write(&options.json, json).unwrap();
    println!("\nwritten: {}", options.json.display());
}
