//! The production backends end to end: MongoDB (nx-27017) and Redis started per test, one or two
//! controllers sharing them. A job through everything, 50 jobs shared by two controllers with none run
//! twice or lost, a controller SIGKILLed mid-job whose job another finishes with its whole output,
//! Redis and MongoDB restarted under running and queued jobs.

use std::path::PathBuf;

use crate::harness::{Proc, Repo, Settings, TestEnv, merge_tables, pipeline, spawn_controller};

/// A second controller of the same service: same store, queue, PKI and agent addresses; its own name
/// and state directory.
pub struct Peer {
    proc: Option<Proc>,
    pub grpc_addr: String,
    log: PathBuf,
}

impl Peer {
    pub fn start(env: &TestEnv, name: &str, listen: &str) -> Peer {
        let home = env.home();
        let mut config: toml::Table =
            toml::from_str(&std::fs::read_to_string(home.join("config.toml")).unwrap()).unwrap();
        let own = format!("[main]\ncontroller_id = \"{name}\"\nstate_dir = \"state-{name}\"\n");
        merge_tables(&mut config, toml::from_str(&own).unwrap());
        let path = home.join(format!("config-{name}.toml"));
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let log = env.dir.path().join(format!("controller-{name}.log"));
        let (proc, grpc_addr, _) = spawn_controller(&path, listen, &log);
        Peer {
            proc: Some(proc),
            grpc_addr,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal(libc::SIGKILL);
            let _ = proc.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- peer controller log ---\n{}", self.log_text());
        }
    }
}

/// Production backends; with `peers`, every controller's agents know every controller's address
/// (ports picked now), and leases are short so a dead controller's jobs move on quickly.
pub fn production(workers: usize, peers: bool) -> (Settings, Vec<String>) {
    let addresses = if peers {
        vec![
            crate::harness::free_address(),
            crate::harness::free_address(),
        ]
    } else {
        vec!["127.0.0.1:0".to_string()]
    };
    let mut extra = String::from("[main]\nlease_secs = 3\n");
    if peers {
        extra.push_str(&format!("agent_endpoint = \"{}\"\n", addresses.join(",")));
    }
    let settings = Settings {
        production: true,
        workers,
        grpc_listen: addresses[0].clone(),
        extra,
        ..Settings::default()
    };
    (settings, addresses)
}

/// A log line without its terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// Job ids a controller's log says it provisioned (`provisioning job_id=N`).
fn provisioned(log: &str) -> Vec<u64> {
    log.lines()
        .map(plain)
        .filter(|l| l.contains(": provisioning "))
        .filter_map(|l| {
            let (_, rest) = l.split_once(": provisioning job_id=")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

#[test]
fn a_job_runs_through_mongodb_and_redis_with_its_log_report_and_artifact() {
    let (settings, _) = production(2, false);
    let env = TestEnv::start_with(settings);
    let yaml = r#"bin_path: out/app.bin
script:
  - printf 'first\nsecond\n'
  - name: tests
    cmd: printf '<testsuite name="s"><testcase classname="c" name="ok"/><testcase classname="c" name="bad"><failure message="boom">trace</failure></testcase></testsuite>' > "$ZEROCI_TEST_XML"
  - mkdir -p out && head -c 300000 /dev/zero | tr '\0' z > out/app.bin
"#;
    let repo = Repo::new(&env, "through-mongo", &[("zeroCI.yaml", yaml)]);
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    assert_eq!(
        String::from_utf8(env.raw_log(id, None)).unwrap(),
        "first\nsecond\n"
    );
    let shown = env.cli(&["show", &id.to_string()]);
    assert!(
        shown.stdout_str().contains("FAILED c.bad: boom"),
        "{}",
        shown.stdout_str()
    );
    let file = env.dir.path().join("app.bin");
    let out = env.cli(&[
        "artifact",
        &id.to_string(),
        "out/app.bin",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), vec![b'z'; 300_000]);
    let (code, body) = env.http_get("/healthz");
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (code, &health["queue"]["state"]),
        (200, &serde_json::json!("ok")),
        "{health}"
    );
}

#[test]
fn two_controllers_share_fifty_jobs_with_none_run_twice_and_none_lost() {
    let (settings, addresses) = production(4, true);
    let env = TestEnv::start_with(settings);
    let peer = Peer::start(&env, "controller-b", &addresses[1]);
    let repo = Repo::new(&env, "shared", &[("zeroCI.yaml", &pipeline(&["echo ran"]))]);
    let ids: Vec<u64> = (0..50).map(|_| env.submit(&repo.path)).collect();
    for id in &ids {
        let job = env.wait_job(*id);
        assert_eq!(job["status"], "success", "{job:#}");
        assert_eq!(job["attempt"], 1, "run once: {job:#}");
        assert_eq!(env.raw_log(*id, None), b"ran\n");
    }
    let by_a = provisioned(&env.controller_log_text());
    let by_b = provisioned(&peer.log_text());
    let mut all: Vec<u64> = by_a.iter().chain(&by_b).copied().collect();
    all.sort();
    assert_eq!(all, ids, "every job provisioned exactly once");
    assert!(
        !by_a.is_empty() && !by_b.is_empty(),
        "both controllers worked: {} and {}",
        by_a.len(),
        by_b.len()
    );
}

#[test]
fn a_job_whose_controller_is_killed_is_finished_by_the_other_with_its_whole_output() {
    let (settings, addresses) = production(2, true);
    let mut env = TestEnv::start_with(settings);
    let script = "for i in $(seq 1 60); do echo line $i; sleep 0.1; done";
    let repo = Repo::new(&env, "orphan", &[("zeroCI.yaml", &pipeline(&[script]))]);
    let id = env.submit(&repo.path);
    env.wait_for_output(id, None, "line 3\n");
    // The second controller starts while the first holds the job: it leaves it alone, and says so
    // rather than pretend to cancel it.
    let peer = Peer::start(&env, "controller-b", &addresses[1]);
    let first = env.grpc_addr.clone();
    env.use_controller(&peer.grpc_addr);
    let cancel = env.cli(&["cancel", &id.to_string()]);
    assert_ne!(cancel.code, 0, "{}", cancel.stdout_str());
    assert!(
        cancel.stderr.contains("runs on controller controller-a"),
        "{}",
        cancel.stderr
    );
    env.use_controller(&first);
    env.kill_controller();
    env.use_controller(&peer.grpc_addr);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let expected: String = (1..=60).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8(env.raw_log(id, None)).unwrap(), expected);
    assert_eq!(job["attempt"], 1, "the same machine went on: {job:#}");
    assert!(
        peer.log_text()
            .contains("waiting for the agent of a running job to reconnect")
    );
}

#[test]
fn queued_jobs_survive_a_redis_restart() {
    let (settings, _) = production(1, false);
    let mut env = TestEnv::start_with(settings);
    let repo = Repo::new(&env, "queued", &[("README", "x")]);
    // In the repository's git directory, which the job's sandbox shows read-only.
    let gate = repo.path.join(".git/gate");
    repo.commit(
        &[(
            "zeroCI.yaml",
            &pipeline(&[&format!(
                "while [ ! -e {} ]; do sleep 0.05; done; echo done",
                gate.display()
            )]),
        )],
        "gated",
    );
    // One worker: the first job holds it, the others wait in Redis.
    let ids: Vec<u64> = (0..4).map(|_| env.submit(&repo.path)).collect();
    env.redis.as_mut().unwrap().restart();
    std::fs::write(&gate, "").unwrap();
    for id in ids {
        assert_eq!(env.wait_job(id)["status"], "success");
    }
}

#[test]
fn a_running_job_finishes_across_a_mongodb_restart() {
    let (settings, _) = production(2, false);
    let mut env = TestEnv::start_with(settings);
    let script = "for i in $(seq 1 30); do echo line $i; sleep 0.1; done";
    let repo = Repo::new(&env, "steady", &[("zeroCI.yaml", &pipeline(&[script]))]);
    let id = env.submit(&repo.path);
    env.wait_for_output(id, None, "line 3\n");
    env.mongo.as_mut().unwrap().restart();
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let expected: String = (1..=30).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8(env.raw_log(id, None)).unwrap(), expected);
}

#[test]
fn an_unreachable_mongodb_or_redis_stops_the_controller_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let init = std::process::Command::new(crate::harness::bin("zeroci-controller"))
        .args(["init", "--dir"])
        .arg(&home)
        .args(["--grpc-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(init.status.success());
    // A port nobody listens on.
    let closed = crate::harness::free_address();
    let config_path = home.join("config.toml");
    let base: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    for (backend, says) in [
        (
            format!(
                "[db]\nbackend = \"mongodb\"\nuri = \"mongodb://{closed}/?serverSelectionTimeoutMS=300\"\n"
            ),
            "cannot reach MongoDB at",
        ),
        (
            format!("[queue]\nbackend = \"redis\"\nurl = \"redis://{closed}/\"\n"),
            "cannot reach Redis at",
        ),
    ] {
        let mut config = base.clone();
        merge_tables(&mut config, toml::from_str(&backend).unwrap());
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
        let out = std::process::Command::new(crate::harness::bin("zeroci-controller"))
            .arg("--config")
            .arg(&config_path)
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "never said ready: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains(says) && lines[0].matches(says).count() == 1,
            "{stderr}"
        );
    }
}
