//! A job's code is a stranger's: it must not reach the controller's keys, config, environment or
//! other jobs, and nothing it starts may outlive its machine.

use std::process::{Command, Stdio};

use zeroci_testkit::{bin, wait_for};

use crate::harness::{Repo, Settings, TestEnv, pipeline};

/// Lines a probing step prints for each thing it could read; the tests expect none.
const LEAK: &str = "LEAK";

/// A shell command printing `LEAK <path>` when `path` is a readable non-empty file or a listable,
/// non-empty directory.
fn probe(path: &str) -> String {
    format!(
        "for p in {path}; do if [ -f \"$p\" ] && [ -s \"$p\" ] && cat \"$p\" >/dev/null 2>&1; then echo \"{LEAK} $p\"; \
         elif [ -d \"$p\" ] && [ -n \"$(ls -A \"$p\" 2>/dev/null)\" ]; then echo \"{LEAK} $p\"; fi; done"
    )
}

#[test]
fn a_job_cannot_reach_the_controllers_keys_config_environment_or_another_running_job() {
    let env = TestEnv::start_with(Settings {
        workers: 2,
        ..Settings::default()
    });
    let home = env.home();
    let home = home.to_str().unwrap();
    // Job A holds its machine open, with a file in its workspace, until the test opens the gate.
    let holder = Repo::new(&env, "holder", &[("README", "a")]);
    let gate = holder.path.join(".git/gate-open");
    holder.commit(
        &[(
            "zeroCI.yaml",
            &pipeline(&[
                "echo A-PRIVATE > private.txt",
                &format!("while [ ! -e {} ]; do sleep 0.02; done", gate.display()),
            ]),
        )],
        "hold",
    );
    let holder_id = env.submit(&holder.path);
    wait_for("job A's first step", || {
        let job = env.job(holder_id);
        (job["steps"][1]["status"] == "success").then_some(())
    });

    let controller_pid = env.controller.as_ref().unwrap().pid();
    let machines = format!("{home}/state/machines");
    let climbs: Vec<String> = (1..=6)
        .flat_map(|n| {
            let up = "../".repeat(n);
            [
                format!("$ZEROCI_WORKSPACE/{up}pki/ca.key"),
                format!("$ZEROCI_WORKSPACE/{up}config.toml"),
                format!("$ZEROCI_WORKSPACE/{up}state"),
            ]
        })
        .collect();
    let prober = Repo::new(
        &env,
        "prober",
        &[(
            "zeroCI.yaml",
            &pipeline(&[
                &probe(&format!(
                    "{home}/pki/ca.key {home}/pki {home}/config.toml {home}/state {machines} \
                     {machines}/job-{holder_id}-a1/job/workspace/private.txt \
                     /proc/{controller_pid}/environ"
                )),
                &probe(&climbs.join(" ")),
                // No process it can see has the controller's environment (split so that the step's
                // own command, which the agent exports, does not match); no bootstrap anywhere.
                &format!(
                    "for f in /proc/[0-9]*/environ; do if tr '\\0' '\\n' < \"$f\" 2>/dev/null | grep -q ^RUST\"\"_LOG=; then echo \"{LEAK} $f\"; fi; done"
                ),
                &format!("find / -xdev -name 'bootstrap*' 2>/dev/null | sed 's/^/{LEAK} /'"),
                // Everywhere a job can write or a host could keep job files (split so that this
                // pipeline file itself does not match).
                &format!(
                    "grep -rl \"A-PRIV\"\"ATE\" /job /tmp /dev/shm /home /root /var /srv /mnt 2>/dev/null | sed 's/^/{LEAK} /'"
                ),
                // Root inside cannot undo the machine's mounts: unmount what hides the host, remount a
                // read-only directory writable, or bind a directory without what covers parts of it.
                &format!(
                    "umount -l /tmp 2>/dev/null && echo {LEAK} umount; \
                     mount -o remount,bind,rw /usr 2>/dev/null && echo {LEAK} remount; \
                     mkdir -p /job/x && mount --bind /etc /job/x 2>/dev/null && echo {LEAK} bind; \
                     touch /usr/zeroci-probe 2>/dev/null && echo {LEAK} write; true"
                ),
                // The environment holds the job's variables, none of the controller's.
                &format!("env | grep -E '^(RUST_LOG|CARGO)' | sed 's/^/{LEAK} /'"),
                "echo probed",
            ]),
        )],
    );
    let prober_id = env.submit(&prober.path);
    let job = env.wait_job(prober_id);
    std::fs::write(&gate, "").unwrap();
    assert_eq!(job["status"], "success", "{job:#}");
    let log = String::from_utf8(env.raw_log(prober_id, None)).unwrap();
    assert!(log.contains("probed"), "{log}");
    assert!(
        !log.contains(LEAK),
        "the job reached what it must not:\n{log}"
    );
    assert_eq!(env.wait_job(holder_id)["status"], "success");
}

/// Host processes whose command line contains `needle`.
fn processes_running(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(cmdline)
        })
        .collect()
}

#[test]
fn nothing_a_job_starts_outlives_its_machine() {
    let env = TestEnv::start();
    // A duration nobody else uses marks the stray on the host.
    let marker = format!("600.{}", std::process::id());
    let repo = Repo::new(
        &env,
        "stray",
        &[(
            "zeroCI.yaml",
            &pipeline(&[
                &format!("setsid sleep {marker} >/dev/null 2>&1 </dev/null &"),
                &format!("nohup sleep {marker} >/dev/null 2>&1 </dev/null &"),
                "echo left behind",
            ]),
        )],
    );
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    wait_for("the machine to be destroyed", || {
        env.stored_job(id)["machine"].is_null().then_some(())
    });
    // Checked before any harness cleanup: the machine's destruction alone must have ended them.
    assert_eq!(
        processes_running(&format!("sleep {marker}")),
        Vec::<String>::new()
    );
}

#[test]
fn a_job_that_asks_for_64_processes_cannot_fork_past_them_in_its_own_control_group() {
    let env = TestEnv::start();
    let repo = Repo::new(
        &env,
        "forks",
        &[(
            "zeroCI.yaml",
            &format!(
                "prerequisites: {{pids: 64}}\n{}",
                pipeline(&[
                    "grep '^0::' /proc/self/cgroup",
                    // dash gives up at the first fork the kernel refuses.
                    "for i in $(seq 500); do sleep 5 >/dev/null 2>&1 </dev/null & done; echo all-500-started",
                ])
            ),
        )],
    );
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "failure", "{job:#}");
    let machine = format!("job-{id}-a1");
    let first = String::from_utf8(env.raw_log(id, Some("1"))).unwrap();
    assert!(
        first.starts_with("zeroci: this machine's limits: 64 processes\n")
            && first.contains(&format!(".{machine}\n"))
            && first.contains("0::/zeroci/"),
        "{first}"
    );
    let forks = String::from_utf8(env.raw_log(id, Some("2"))).unwrap();
    assert!(
        forks.contains("Cannot fork") && !forks.contains("all-500-started"),
        "{forks}"
    );
    // The group goes with the machine, and the sleeps with it.
    wait_for("the machine to be destroyed", || {
        env.stored_job(id)["machine"].is_null().then_some(())
    });
    let groups = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find_map(|line| {
            let (fields, kind) = line.split_once(" - ")?;
            kind.starts_with("cgroup2 ")
                .then(|| fields.split_whitespace().nth(4).map(str::to_string))?
        })
        .expect("a cgroup v2 file system is mounted");
    let group = first
        .lines()
        .find_map(|line| line.strip_prefix("0::/"))
        .unwrap();
    assert!(
        !std::path::Path::new(&groups).join(group).exists(),
        "the machine's control group {group} is left behind"
    );
}

#[test]
fn an_unisolated_job_says_so_in_its_log() {
    let env = TestEnv::start_with(Settings {
        extra: "[provisioner.local]\nisolation = \"none\"\n".into(),
        ..Settings::default()
    });
    let repo = Repo::new(&env, "plain", &[("zeroCI.yaml", &pipeline(&["echo ran"]))]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let checkout = String::from_utf8(env.raw_log(id, Some("checkout"))).unwrap();
    assert!(checkout.contains("runs unisolated"), "{checkout}");
}

#[test]
fn a_controller_whose_kernel_refuses_namespaces_does_not_start_sandboxed_machines() {
    let mut env = TestEnv::start();
    env.kill_controller();
    // A user namespace allowed no namespaces of its own stands for a kernel that refuses them.
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c"])
        .arg("echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"")
        .arg("sh")
        .arg(bin("zeroci-controller"))
        .arg("--config")
        .arg(env.home().join("config.toml"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `unshare` is needed (apt-get install util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {stderr}");
    assert!(
        stderr.contains("refuses them") && stderr.contains("isolation = \"none\""),
        "{stderr}"
    );
}
