//! Faults on purpose, with real processes: the agent's link to the controller cut like a network
//! partition, the controller SIGKILLed again and again in one job, a full disk, an outlived
//! certificate, a stale agent of an earlier attempt coming back. Each test checks that the stored
//! log is byte for byte what the commands printed: nothing lost, nothing twice.

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use sha2::{Digest, Sha256};
use zeroci_testkit::link::Link;

use crate::harness::{Repo, Settings, TestEnv, free_address};
use crate::pool::{Host, runs_under};

/// Lines printed per round; a round's lines come out as fast as the shell can print them.
const LINES_PER_ROUND: usize = 300;

/// A barrier between the step and the test over loopback: the step connects and blocks until the
/// test lets it go, so the test decides exactly when each burst of output happens.
struct Gate {
    listener: TcpListener,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    /// Shell that waits at the gate (bash: its /dev/tcp; the step shares the host's network).
    fn wait_command(&self) -> String {
        let port = self.listener.local_addr().unwrap().port();
        format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; read -r _ <&3'")
    }

    /// Waits for the step to reach the gate (everything before it has been printed), then lets it
    /// through.
    fn open(&self) {
        self.listener.set_nonblocking(false).unwrap();
        let (mut step, _) = self.listener.accept().expect("the step reaches the gate");
        step.write_all(b"go\n").unwrap();
    }
}

/// A step that prints `rounds` bursts of numbered lines with a gate between each two, and what it
/// prints in all.
fn gated_rounds(gate: &Gate, rounds: usize) -> (String, String) {
    let script = format!(
        "for r in $(seq 1 {rounds}); do for l in $(seq 1 {LINES_PER_ROUND}); do echo \"round $r line $l: the quick brown fox jumps over the lazy dog\"; done; if [ $r -lt {rounds} ]; then {}; fi; done",
        gate.wait_command()
    );
    let yaml = format!("script:\n  - {}\n", serde_json::to_string(&script).unwrap());
    let mut expected = String::new();
    for r in 1..=rounds {
        for l in 1..=LINES_PER_ROUND {
            expected.push_str(&format!(
                "round {r} line {l}: the quick brown fox jumps over the lazy dog\n"
            ));
        }
    }
    (yaml, expected)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The stored log equals what the step printed: compared by checksum first (a short message), then in
/// full (where they differ).
fn assert_log_is(env: &TestEnv, id: u64, expected: &str) {
    let stored = env.raw_log(id, None);
    if sha256(&stored) != sha256(expected.as_bytes()) {
        let stored = String::from_utf8_lossy(&stored);
        let first_difference = stored
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b);
        panic!(
            "stored log ({} bytes) differs from what was printed ({} bytes); first different line: {first_difference:?}",
            stored.len(),
            expected.len()
        );
    }
}

#[test]
fn the_agent_link_cut_for_twenty_seconds_mid_step_loses_and_repeats_nothing() {
    let listen = free_address();
    let link = Link::to(&listen);
    let env = TestEnv::start_with(Settings {
        grpc_listen: listen,
        // Longer than the cut: the agent is silent, not lost.
        lost_agent_timeout: 60,
        extra: format!("[main]\nagent_endpoint = \"{}\"\n", link.addr),
        ..Settings::default()
    });
    let gate = Gate::new();
    let (yaml, expected) = gated_rounds(&gate, 3);
    let repo = Repo::new(&env, "partitioned", &[("zeroCI.yaml", &yaml)]);
    let id = env.submit(&repo.path);
    env.wait_for_output(id, None, &format!("round 1 line {LINES_PER_ROUND}:"));

    // Round 2 is printed while nothing crosses the link; round 3 after it healed.
    link.cut();
    gate.open();
    // The fault itself lasts 20 s (what the test is about), not a wait for something to happen.
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(
        env.job(id)["status"],
        "running",
        "a silent agent is not lost yet"
    );
    link.restore();
    gate.open();
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    assert_log_is(&env, id, &expected);
    assert_eq!(job["attempt"], 1, "the job kept its machine");
    assert!(
        link.accepted() >= 2,
        "the agent noticed the silence and dialled again through the link"
    );
}

#[test]
fn the_controller_killed_ten_times_in_one_job_loses_and_repeats_nothing() {
    let mut env = TestEnv::start_with(Settings {
        grpc_listen: free_address(),
        lost_agent_timeout: 30,
        ..Settings::default()
    });
    let addr = env.grpc_addr.clone();
    let gate = Gate::new();
    let kills = 10;
    let (yaml, expected) = gated_rounds(&gate, kills + 1);
    let repo = Repo::new(&env, "battered", &[("zeroCI.yaml", &yaml)]);
    let id = env.submit(&repo.path);
    for round in 1..=kills {
        env.wait_for_output(id, None, &format!("round {round} line {LINES_PER_ROUND}:"));
        // The next round's burst is being printed and streamed when the controller dies.
        gate.open();
        env.kill_controller();
        env.start_controller(&addr);
    }
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    assert_log_is(&env, id, &expected);
    assert_eq!(
        job["attempt"], 1,
        "the job kept its machine through every restart"
    );
}

/// A small tmpfs for the controller's state directory, so a test can fill it; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("zeroci-small-disk-")
            .tempdir()
            .unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs for the state directory: this test needs root (CI runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_state_disk_gives_clear_errors_corrupts_nothing_and_later_jobs_run() {
    // The agent binary lives on the same file system, so machines get it as a hard link, as they do
    // in an installation; what is left is ~40 MiB for the state.
    let agent = zeroci_testkit::bin("zeroci-agent");
    let size_mib = std::fs::metadata(&agent).unwrap().len() / (1 << 20) + 40;
    let disk = SmallDisk::mount(size_mib);
    let agent_copy = disk.path().join("zeroci-agent");
    std::fs::copy(&agent, &agent_copy).unwrap();
    let state = disk.path().join("state");
    // The store's patience is longer than the agent's: the agent, refused and backing off, is silent
    // for longer than `lost_agent_timeout`, and must not be declared lost for it.
    let mut env = TestEnv::start_with(Settings {
        grpc_listen: free_address(),
        lost_agent_timeout: 3,
        extra: format!(
            "[main]\nstate_dir = \"{}\"\nstore_failure_timeout = 8\n[provisioner.local]\nagent_binary = \"{}\"\n",
            state.display(),
            agent_copy.display()
        ),
        ..Settings::default()
    });
    let addr = env.grpc_addr.clone();
    let hello = Repo::new(
        &env,
        "hello",
        &[("zeroCI.yaml", "script:\n  - echo hello\n")],
    );
    let before = env.submit(&hello.path);
    let first = env.wait_job(before);
    assert_eq!(first["status"], "success", "{first:#}");

    // A job streams output when the disk fills up under it.
    let gate = Gate::new();
    let (yaml, expected) = gated_rounds(&gate, 2);
    let repo = Repo::new(&env, "filler", &[("zeroCI.yaml", &yaml)]);
    let id = env.submit(&repo.path);
    env.wait_for_output(id, None, &format!("round 1 line {LINES_PER_ROUND}:"));
    let filler = disk.fill();
    gate.open();
    let job = env.wait_job(id);
    assert_eq!(job["status"], "error", "{job:#}");
    let reason = job["reason"].as_str().unwrap();
    assert!(
        reason.contains("the store keeps failing") && reason.contains("No space left on device"),
        "the reason names the cause: {reason}"
    );
    // What was stored is what the step printed, up to where the disk filled: a prefix, no hole.
    let stored = env.raw_log(id, None);
    assert!(
        expected.as_bytes().starts_with(&stored) && stored.len() >= LINES_PER_ROUND * 10,
        "stored {} bytes, not a prefix of what was printed",
        stored.len()
    );

    // Space comes back: jobs run again, and after a restart everything stored reads back the same.
    std::fs::remove_file(filler).unwrap();
    let after = env.submit(&hello.path);
    assert_eq!(env.wait_job(after)["status"], "success");
    env.kill_controller();
    env.start_controller(&addr);
    assert_eq!(env.raw_log(before, None), b"hello\n");
    assert_eq!(env.raw_log(id, None), stored);
    assert_eq!(env.job(id)["reason"], reason);
    assert_eq!(env.raw_log(after, None), b"hello\n");
}

#[test]
fn an_agent_whose_job_outlives_its_certificate_renews_it_and_reconnects_with_the_new_one() {
    let listen = free_address();
    let link = Link::to(&listen);
    let env = TestEnv::start_with(Settings {
        grpc_listen: listen,
        lost_agent_timeout: 60,
        extra: format!(
            "[main]\nagent_endpoint = \"{}\"\n[tls]\nagent_cert_ttl = 10\n",
            link.addr
        ),
        ..Settings::default()
    });
    let gate = Gate::new();
    let (yaml, expected) = gated_rounds(&gate, 2);
    let repo = Repo::new(&env, "long-lived", &[("zeroCI.yaml", &yaml)]);
    let id = env.submit(&repo.path);
    env.wait_for_output(id, None, &format!("round 1 line {LINES_PER_ROUND}:"));
    // The first certificate lives 10 s; the agent renews it at two thirds of that (~6.7 s), and the
    // renewed one at two thirds of its own life (~13.3 s): once that second renewal happened, the
    // first certificate has expired.
    zeroci_testkit::wait_for("the agent's certificate renewed twice", || {
        (env.controller_log_text()
            .matches("agent certificate renewed")
            .count()
            >= 2)
            .then_some(())
    });
    // Now the link breaks: the agent must dial again, and only a renewed certificate gets it in.
    link.reset();
    gate.open();
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    assert_log_is(&env, id, &expected);
    assert!(
        link.accepted() >= 2,
        "the agent dialled again after the reset"
    );
}

/// A stale agent, for real: the first pipeline job's machine outlives its part because its pool host
/// cannot be reached to destroy it, and its agent never learns that its part is over (the controller's
/// replies to it are lost: a one-way partition). When it gets through again, the second pipeline job
/// runs on another host: the old agent is refused as stale and ends itself, and the new attempt goes
/// on untouched.
#[test]
fn a_stale_agent_reconnecting_while_the_next_attempt_runs_is_refused_and_changes_nothing() {
    let listen = free_address();
    // Every agent's route to the controller, and the first host's own.
    let agents = Link::to(&listen);
    let first_host_route = Link::to(&listen);
    let env = TestEnv::start_with(Settings {
        grpc_listen: listen,
        provisioner: Some(
            // The stale agent must not give up before it gets through (the destroy waits ~30 s).
            toml::from_str("kind = \"pool\"\n[pool]\nagent_give_up = 600\n").unwrap(),
        ),
        extra: format!("[main]\nagent_endpoint = \"{}\"\n", agents.addr),
        ..Settings::default()
    });
    let token = crate::pool::make_token(&env, "rack");
    let mut first = Host::spawn_via(&env, &first_host_route.addr, "first", &token, "", 1, &[]);
    first.lines.wait_for("joined the pool");
    let repo = Repo::new(&env, "stages", &[("zeroCI.yaml", "")]);
    let (gate_one, gate_two) = (repo.path.join("go-one"), repo.path.join("go-two"));
    let wait_at =
        |gate: &std::path::Path| format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display());
    // Nothing printed after the first gate: a step's exit is reported once its output is
    // acknowledged, so the first part can end while the controller's replies are held.
    let first_part = format!("echo one; {}", wait_at(&gate_one));
    let second_part = format!("echo two; {}; echo two-more", wait_at(&gate_two));
    let yaml = format!(
        "jobs:\n  - name: first\n    script:\n      - {}\n  - name: second\n    script:\n      - {}\n",
        serde_json::to_string(&first_part).unwrap(),
        serde_json::to_string(&second_part).unwrap()
    );
    repo.commit(&[("zeroCI.yaml", &yaml)], "two pipeline jobs");
    let id = env.submit(&repo.path);
    env.wait_for_output(id, None, "one\n");
    // Only now a second host: the first pipeline job is on the first one.
    let mut second = Host::join(&env, "second", &token, "", 1);

    // The first host drops off the network; the controller's replies to the agents stop arriving.
    first_host_route.cut();
    agents.hold_replies();
    std::fs::write(&gate_one, "").unwrap();
    // The controller stores the first part's end (requests still arrive), fails to destroy its
    // machine, and starts the second part on the second host.
    let started = second.lines.wait_for("machine started");
    assert!(started.contains(&format!("job-{id}-a2")), "{started}");
    let first_machines = first.work_dir.join("machines");
    assert!(
        runs_under(&first_machines),
        "the first machine and its agent are still there"
    );
    assert!(
        !first.lines.all().iter().any(|l| l.contains("agent exited")),
        "{:?}",
        first.lines.seen
    );

    // The partition heals: the old agent dials again with its attempt-1 certificate.
    agents.restore();
    let refusal = format!("attempt 1 of job {id} is stale; the job is on attempt 2");
    zeroci_testkit::wait_for("the controller to refuse the stale agent", || {
        let log = env.controller_log_text();
        log.lines()
            .any(|l| l.contains("agent refused") && l.contains(&refusal))
            .then_some(())
    });
    let exited = first.lines.wait_for("machine's agent exited");
    assert!(
        exited.contains(&format!("job-{id}-a1")) && exited.contains("exit status: 1"),
        "the stale agent ends itself: {exited}"
    );
    zeroci_testkit::wait_for("the stale machine's processes to end", || {
        (!runs_under(&first_machines)).then_some(())
    });

    // The new attempt never noticed.
    env.wait_for_output(id, None, "two\n");
    assert_eq!(env.job(id)["status"], "running");
    std::fs::write(&gate_two, "").unwrap();
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    assert_eq!(job["attempt"], 2, "{job:#}");
    assert_log_is(&env, id, "one\ntwo\ntwo-more\n");
    first_host_route.restore();
    zeroci_testkit::wait_for("both hosts to hold no machine", || {
        (first.machines_left().is_empty() && second.machines_left().is_empty()).then_some(())
    });
}
