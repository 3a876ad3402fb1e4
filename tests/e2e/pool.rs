//! `pool` machines: real `zeroci-agent join` processes joined with tokens made through the CLI. Two
//! hosts share twenty jobs, a job asking for a label goes to the host that has it, a job waits while no
//! host is joined, a revoked token drops its host and is refused, and a host killed mid-job loses the
//! job, leaves no process, and cleans up after itself when it starts again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::{Lines, Proc, Repo, Settings, TestEnv, spawn_process};
use zeroci_testkit::bin;

fn pool_env(workers: usize) -> TestEnv {
    TestEnv::start_with(Settings {
        workers,
        provisioner: Some(toml::from_str("kind = \"pool\"\n[pool]\nagent_give_up = 60\n").unwrap()),
        ..Settings::default()
    })
}

/// A join token made with the CLI, with the CA written beside it; the token file's path.
pub(crate) fn make_token(env: &TestEnv, name: &str) -> PathBuf {
    let ca = env.dir.path().join("pool-ca.pem");
    let out = env.cli(&[
        "agents",
        "token",
        "create",
        name,
        "--json",
        "--write-ca",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let token = out.json()["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("zcj_"), "{token}");
    let file = env.dir.path().join(format!("{name}.token"));
    std::fs::write(&file, token).unwrap();
    file
}

/// A joined host: its process, its log lines (stderr) and its work directory.
pub(crate) struct Host {
    pub proc: Proc,
    pub lines: Lines,
    pub work_dir: PathBuf,
}

impl Host {
    /// Starts `zeroci-agent join` without waiting for it to join.
    fn spawn(env: &TestEnv, name: &str, token_file: &Path, labels: &str, capacity: u32) -> Host {
        Host::spawn_via(env, &env.grpc_addr, name, token_file, labels, capacity, &[])
    }

    /// Starts `zeroci-agent join` dialling `controller` (the controller, or a link to it), with
    /// `extra` arguments.
    pub(crate) fn spawn_via(
        env: &TestEnv,
        controller: &str,
        name: &str,
        token_file: &Path,
        labels: &str,
        capacity: u32,
        extra: &[&str],
    ) -> Host {
        let mut command = Host::command(env, controller, name, token_file, labels, capacity);
        command.args(extra);
        Host::start(env, name, command)
    }

    /// The `zeroci-agent join` command line `spawn_via` runs, before its extra arguments.
    fn command(
        env: &TestEnv,
        controller: &str,
        name: &str,
        token_file: &Path,
        labels: &str,
        capacity: u32,
    ) -> Command {
        let mut command = Command::new(bin("zeroci-agent"));
        command
            .args(["join", "--controller", controller, "--ca"])
            .arg(env.dir.path().join("pool-ca.pem"))
            .arg("--token-file")
            .arg(token_file)
            .args(["--name", name, "--labels", labels])
            .args(["--capacity", &capacity.to_string()])
            .arg("--work-dir")
            .arg(Host::work_dir(env, name))
            // The test's repositories are paths on this host, which the hosts share.
            .arg("--local-repos")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    fn work_dir(env: &TestEnv, name: &str) -> PathBuf {
        env.dir.path().join("hosts").join(name)
    }

    /// Starts host `name` from its `command`, without waiting for it to join.
    fn start(env: &TestEnv, name: &str, mut command: Command) -> Host {
        let mut proc = spawn_process(&mut command, &format!("pool host {name}"));
        let lines = Lines::new(proc.child.stderr.take().unwrap());
        Host {
            proc,
            lines,
            work_dir: Host::work_dir(env, name),
        }
    }

    /// Starts it and waits until it says it joined.
    pub(crate) fn join(
        env: &TestEnv,
        name: &str,
        token_file: &Path,
        labels: &str,
        capacity: u32,
    ) -> Host {
        let mut host = Host::spawn(env, name, token_file, labels, capacity);
        host.lines.wait_for("joined the pool");
        host
    }

    /// How many machines it started so far.
    fn machines_started(&mut self) -> usize {
        self.lines
            .all()
            .iter()
            .filter(|l| l.contains("machine started"))
            .count()
    }

    pub(crate) fn machines_left(&self) -> Vec<String> {
        std::fs::read_dir(self.work_dir.join("machines"))
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether any process runs out of `dir` (a machine's agent or a step).
pub(crate) fn runs_under(dir: &Path) -> bool {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        cwd.starts_with(&needle) || String::from_utf8_lossy(&cmdline).contains(&needle)
    })
}

#[test]
fn two_joined_hosts_share_twenty_jobs_and_labels_choose_the_host() {
    let env = pool_env(8);
    let token = make_token(&env, "rack");
    let repo = Repo::new(
        &env,
        "many",
        &[(
            "zeroCI.yaml",
            "script:\n  - echo from $(hostname); sleep 0.3\n",
        )],
    );
    // No host yet: the job waits, saying why.
    let early = env.submit(&repo.path);
    let job = zeroci_testkit::wait_for("the job to wait for a pool host", || {
        let job = env.job(early);
        (job["waiting_for"] != "").then_some(job)
    });
    assert_eq!(
        job["waiting_for"], "no pool machine free: no pool host is joined to this controller",
        "{job:#}"
    );
    let mut plain = Host::join(&env, "plain", &token, "linux", 2);
    let mut gpu = Host::join(&env, "gpu", &token, "linux,gpu", 2);
    assert_eq!(env.wait_job(early)["status"], "success");

    let listed = env.cli(&["agents", "--json"]).json();
    let hosts = listed["pool_hosts"].as_array().unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gpu", "plain"], "{listed:#}");
    assert_eq!(hosts[0]["labels"], serde_json::json!(["gpu", "linux"]));
    assert_eq!(hosts[0]["capacity"], 2);
    assert_eq!(hosts[0]["token_name"], "rack");
    assert_eq!(hosts[0]["isolated"], true);
    let table = env.cli(&["agents"]).stdout_str();
    assert!(
        table.contains("POOL HOST") && table.contains("gpu,linux"),
        "{table}"
    );

    let before = plain.machines_started() + gpu.machines_started();
    let jobs: Vec<u64> = (0..20).map(|_| env.submit(&repo.path)).collect();
    for id in &jobs {
        let job = env.wait_job(*id);
        assert_eq!(job["status"], "success", "{job:#}");
        let log = String::from_utf8(env.raw_log(*id, None)).unwrap();
        assert!(log.starts_with("from "), "{log}");
    }
    let (on_plain, on_gpu) = (plain.machines_started(), gpu.machines_started());
    assert_eq!(on_plain + on_gpu - before, 20, "one machine per job");
    assert!(
        on_plain > 0 && on_gpu > 0,
        "both hosts took jobs: {on_plain} and {on_gpu}"
    );

    // A job that asks for `gpu` runs only where it is offered.
    let wants_gpu = Repo::new(
        &env,
        "gpu",
        &[(
            "zeroCI.yaml",
            "prerequisites:\n  labels: [gpu]\nscript:\n  - echo gpu job\n",
        )],
    );
    let plain_before = plain.machines_started();
    let gpu_before = gpu.machines_started();
    for _ in 0..3 {
        let id = env.submit(&wants_gpu.path);
        assert_eq!(env.wait_job(id)["status"], "success");
    }
    assert_eq!(plain.machines_started(), plain_before);
    assert_eq!(gpu.machines_started(), gpu_before + 3);
    // A label nobody offers: the job waits, saying so.
    let wants_arm = Repo::new(
        &env,
        "arm",
        &[(
            "zeroCI.yaml",
            "prerequisites:\n  labels: arm64\nscript:\n  - true\n",
        )],
    );
    let id = env.submit(&wants_arm.path);
    let job = zeroci_testkit::wait_for("the job to wait for an arm64 host", || {
        let job = env.job(id);
        (job["waiting_for"] != "").then_some(job)
    });
    assert!(
        job["waiting_for"]
            .as_str()
            .unwrap()
            .contains("no pool host with labels arm64"),
        "{job:#}"
    );
    assert_eq!(env.cli(&["cancel", &id.to_string()]).code, 0);
    assert_eq!(env.wait_job(id)["status"], "cancelled");
    // Every machine was removed by its host.
    zeroci_testkit::wait_for("the hosts to remove every machine", || {
        (plain.machines_left().is_empty() && gpu.machines_left().is_empty()).then_some(())
    });
}

#[test]
fn a_revoked_token_drops_its_host_and_is_refused() {
    let env = pool_env(2);
    let token = make_token(&env, "short-lived");
    let mut host = Host::join(&env, "h1", &token, "", 1);
    let listed = env.cli(&["agents", "token", "list", "--json"]).json();
    assert_eq!(listed[0]["name"], "short-lived");
    assert_eq!(listed[0]["hosts_joined"], 1);
    assert!(
        !listed
            .to_string()
            .contains(&std::fs::read_to_string(&token).unwrap()[20..]),
        "the secret is never listed"
    );
    let out = env.cli(&["agents", "token", "revoke", "short-lived"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout_str().contains("1 host(s)"),
        "{}",
        out.stdout_str()
    );
    // The joined host is dropped and stops: trying again cannot help.
    host.lines.wait_for("revoked");
    let status = host
        .proc
        .wait_timeout(crate::harness::patience())
        .expect("the host stops");
    assert_eq!(status.code(), Some(2));
    // A host that comes with it later, or with a made-up token, is turned away at once.
    for file in [token.clone(), env.dir.path().join("made-up.token")] {
        if !file.exists() {
            std::fs::write(&file, "zcj_0011223344556677_00aa").unwrap();
        }
        let mut host = Host::spawn(&env, "h2", &file, "", 1);
        host.lines.wait_for("unknown or revoked join token");
        let status = host
            .proc
            .wait_timeout(crate::harness::patience())
            .expect("refused");
        assert_eq!(status.code(), Some(2));
    }
    let out = env.cli(&["agents", "token", "revoke", "short-lived"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no join token named"), "{}", out.stderr);
    assert_eq!(
        env.cli(&["agents", "--json"]).json()["pool_hosts"],
        serde_json::json!([])
    );
}

#[test]
fn a_host_killed_mid_job_loses_the_job_and_cleans_up_when_it_comes_back() {
    let env = pool_env(2);
    let token = make_token(&env, "rack");
    let mut host = Host::join(&env, "doomed", &token, "", 1);
    let repo = Repo::new(
        &env,
        "long",
        &[("zeroCI.yaml", "script:\n  - echo started; sleep 6003\n")],
    );
    let id = env.submit(&repo.path);
    env.wait_for_output(id, None, "started");
    let machines = host.work_dir.join("machines");
    assert_eq!(host.machines_left().len(), 1);
    host.proc.signal(libc::SIGKILL);
    host.proc
        .wait_timeout(crate::harness::patience())
        .expect("killed");
    // The machine died with its host: the job's agent is lost, nothing of the job runs on.
    let job = env.wait_job(id);
    assert_eq!(job["status"], "error", "{job:#}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("agent lost"),
        "{job:#}"
    );
    zeroci_testkit::wait_for("the machine's processes to end", || {
        (!runs_under(&machines)).then_some(())
    });
    // Back again: what the killed run left is removed, and jobs run.
    let host = Host::join(&env, "doomed", &token, "", 1);
    assert!(
        host.machines_left().is_empty(),
        "{:?}",
        host.machines_left()
    );
    let quick = Repo::new(
        &env,
        "quick",
        &[("zeroCI.yaml", "script:\n  - echo again\n")],
    );
    let id = env.submit(&quick.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    assert_eq!(env.raw_log(id, None), b"again\n");
}

#[test]
fn a_host_rejoins_a_restarted_controller_and_its_running_job_finishes() {
    let mut env = pool_env(2);
    let token = make_token(&env, "rack");
    let mut host = Host::join(&env, "steady", &token, "", 1);
    let repo = Repo::new(&env, "gated", &[("zeroCI.yaml", "")]);
    let gate = repo.path.join("go");
    repo.commit(
        &[(
            "zeroCI.yaml",
            &crate::harness::pipeline(&[&format!(
                "echo started; while [ ! -e {} ]; do sleep 0.05; done; echo done",
                gate.display()
            )]),
        )],
        "gated",
    );
    let id = env.submit(&repo.path);
    env.wait_for_output(id, None, "started");
    let addr = env.grpc_addr.clone();
    env.kill_controller();
    env.start_controller(&addr);
    // The host dials again and names the machine it still runs.
    host.lines.wait_for("joined the pool");
    let listed = env.cli(&["agents", "--json"]).json();
    assert_eq!(
        listed["pool_hosts"][0]["machines"].as_array().map(Vec::len),
        Some(1),
        "{listed:#}"
    );
    std::fs::write(&gate, "").unwrap();
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    assert_eq!(env.raw_log(id, None), b"started\ndone\n");
    zeroci_testkit::wait_for("the host to remove the machine", || {
        host.machines_left().is_empty().then_some(())
    });
}

#[test]
fn an_in_process_host_runs_many_agents_as_tasks_of_one_process() {
    let env = pool_env(8);
    let token = make_token(&env, "load");
    let mut host = Host::spawn_via(
        &env,
        &env.grpc_addr,
        "swarm",
        &token,
        "",
        8,
        &["--isolation", "in-process"],
    );
    host.lines.wait_for("joined the pool");
    let repo = Repo::new(
        &env,
        "many",
        &[(
            "zeroCI.yaml",
            "script:\n  - echo job $ZEROCI_JOB_ID; sleep 0.5\n",
        )],
    );
    let jobs: Vec<u64> = (0..6).map(|_| env.submit(&repo.path)).collect();
    // All six run at once: their agents are connected together, in one process.
    let agents = zeroci_testkit::wait_for("six agents connected at once", || {
        let listed = env.cli(&["agents", "--json"]).json();
        let agents = listed["agents"].as_array().cloned().unwrap_or_default();
        (agents.len() == 6).then_some(agents)
    });
    let host_pid = host.proc.pid().to_string();
    let children = std::fs::read_to_string(format!("/proc/{host_pid}/task/{host_pid}/children"))
        .unwrap_or_default();
    let agent_processes = children
        .split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "zeroci-agent")
        })
        .count();
    assert_eq!(
        agent_processes, 0,
        "no agent process of its own: {agents:?}"
    );
    for id in jobs {
        let job = env.wait_job(id);
        assert_eq!(job["status"], "success", "{job:#}");
        let log = String::from_utf8(env.raw_log(id, None)).unwrap();
        assert!(log.contains("runs unisolated"), "it says so: {log}");
        assert!(log.ends_with(&format!("\njob {id}\n")), "{log}");
    }
    zeroci_testkit::wait_for("the host to remove every machine", || {
        host.machines_left().is_empty().then_some(())
    });
}

#[test]
fn an_in_process_machine_keeps_its_hosts_environment_from_jobs_and_dies_whole_with_its_host() {
    let env = pool_env(2);
    let token = make_token(&env, "tasks");
    let mut command = Host::command(&env, &env.grpc_addr, "tasks", &token, "", 2);
    command
        .args(["--isolation", "in-process"])
        .env("HOST_ONLY_SECRET", "s3cr3t-of-the-host");
    let mut host = Host::start(&env, "tasks", command);
    host.lines.wait_for("joined the pool");
    // A step that leaves a process behind in the background, deaf to SIGTERM (so only the abort
    // after the stop grace, and what it kills, ends it), then waits. Its name is this run's own.
    let marker = format!("6123.{}", std::process::id());
    let yaml = format!(
        "script:\n  - env; (trap '' TERM; exec sleep {marker}) & echo started; sleep 600\n"
    );
    let repo = Repo::new(&env, "lingering", &[("zeroCI.yaml", &yaml)]);
    let id = env.submit(&repo.path);
    let log = zeroci_testkit::wait_for("the step to start its background process", || {
        let log = String::from_utf8(env.raw_log(id, None)).unwrap();
        log.contains("started\n").then_some(log)
    });
    assert!(
        !log.contains("HOST_ONLY_SECRET") && !log.contains("s3cr3t"),
        "the host's environment reached the job: {log}"
    );
    let cmdline = format!("sleep\0{marker}\0").into_bytes();
    let lingering = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == cmdline))
            .count()
    };
    zeroci_testkit::wait_for("the background process to run", || {
        (lingering() == 1).then_some(())
    });
    // The host is stopped: its machine is destroyed, and with it everything its job started.
    host.proc.signal(libc::SIGTERM);
    let status = host
        .proc
        .wait_timeout(crate::harness::patience())
        .expect("the host to leave");
    assert!(status.success(), "the host left cleanly: {status}");
    zeroci_testkit::wait_for(
        "every process of the job to be gone with its machine",
        || (lingering() == 0).then_some(()),
    );
    assert!(
        host.machines_left().is_empty(),
        "{:?}",
        host.machines_left()
    );
}
