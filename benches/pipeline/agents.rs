//! Section 5, second half: many agents connected to one controller at once. The agents are the real
//! agent code, many per process: a pool host joined with `--isolation in-process`, whose machines
//! are tasks of its own. Each job's step sleeps, so every agent stays connected until all are.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zeroci::pb;
use zeroci_testkit::bin_dir;

use crate::report::{Report, Target};
use crate::setup::{self, Controller, Machines};

/// How long each job's step keeps its agent connected.
const HOLD: Duration = Duration::from_secs(120);

/// The pool host, stopped with SIGTERM (it then removes its machines and their steps) on drop.
struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

pub async fn many_agents(report: &mut Report, agents: usize) {
    let controller = Controller::start(&Machines::Pool, agents.min(1000));
    let scratch = controller.scratch().to_path_buf();
    let ca = scratch.join("pool-ca.pem");
    let out = Command::new(bin_dir().join("zeroci"))
        .arg("--profile")
        .arg(controller.profile())
        .args(["agents", "token", "create", "bench", "--json", "--write-ca"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token_file = scratch.join("bench.token");
    std::fs::write(&token_file, token["token"].as_str().unwrap()).unwrap();
    let host = Host(
        Command::new(bin_dir().join("zeroci-agent"))
            .args(["join", "--controller", &controller.grpc, "--ca"])
            .arg(&ca)
            .arg("--token-file")
            .arg(&token_file)
            .args([
                "--name",
                "swarm",
                "--isolation",
                "in-process",
                "--local-repos",
            ])
            .args(["--capacity", &agents.to_string()])
            .arg("--work-dir")
            .arg(scratch.join("host"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.join("host.log")).unwrap())
            .spawn()
            .expect("zeroci-agent join"),
    );
    let mut client = controller.client().await;
    let joined = wait_until(&mut client, Duration::from_secs(30), |listed| {
        !listed.pool_hosts.is_empty()
    })
    .await;
    assert!(joined, "the pool host did not join");
    let baseline = controller.rss_kib();
    let yaml = format!("script:\n  - exec sleep {}\n", HOLD.as_secs());
    let repo = setup::repo(&scratch, "held", &yaml);
    let start = Instant::now();
    for _ in 0..agents {
        setup::submit(&mut client, &repo).await;
    }
    let all = wait_until(&mut client, HOLD / 2, |listed| {
        listed.agents.len() >= agents
    })
    .await;
    let connected = start.elapsed();
    let listed = client
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let rss = controller.rss_kib();
    let per_agent = (rss - baseline) / listed.agents.len().max(1) as f64;
    let host_rss = setup::status_kib(host.0.id(), "VmRSS:");
    report.add(
        "5 many jobs",
        format!("{agents} agents connected to one controller at once"),
        listed.agents.len() as f64,
        "agents",
        Some(Target::AtLeast(agents as f64)),
        format!(
            "{} in {:.1} s from the first submission{}",
            if all {
                "all connected"
            } else {
                "not all connected"
            },
            connected.as_secs_f64(),
            ""
        ),
    );
    report.add(
        "5 many jobs",
        "controller memory per connected agent",
        per_agent,
        "KiB",
        Some(Target::AtMost(100.0)),
        format!(
            "RSS {:.0} MiB with them, {:.0} MiB before; their host process {:.0} MiB ({:.0} KiB per agent)",
            rss / 1024.0,
            baseline / 1024.0,
            host_rss / 1024.0,
            host_rss / listed.agents.len().max(1) as f64
        ),
    );
    drop(host);
}

/// Asks for the connected agents every 100 ms until `done` says so or `limit` passes.
async fn wait_until(
    client: &mut setup::Client,
    limit: Duration,
    done: impl Fn(&pb::ListAgentsResponse) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let listed = client
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .unwrap()
            .into_inner();
        if done(&listed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
