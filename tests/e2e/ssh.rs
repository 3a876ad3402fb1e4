//! `ssh` machines against a real OpenSSH server (Debian's openssh-server) started by the test in a
//! network namespace of its own — a host reached only over a veth pair, as a machine on the network
//! would be — with keys made for it: a full job, a host showing another key, the host gone mid-job.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Proc, Repo, Settings, TestEnv, spawn_process};
use zeroci_testkit::bin;

/// A network namespace joined to this one by a veth pair: the "host" side has `.1`, the namespace
/// `.2`, in a /30 of 198.18.0.0/15 (set aside for tests, so no real route is shadowed) picked at
/// random so parallel tests do not meet. Removed on drop, with every process still in it.
struct NetNs {
    name: String,
    /// This side of the veth pair (gone with the namespace, unless moving the other end failed).
    outer: String,
    /// The address this side has, where the controller listens.
    outside: String,
    /// The address inside, where sshd listens.
    inside: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    fn new() -> NetNs {
        let tag: u32 = rand::random();
        let (b, c, d) = (
            18 + ((tag >> 16) & 1) as u8,
            (tag >> 8) as u8,
            (tag as u8) & 0xfc,
        );
        let name = format!("zci-ssh-{tag:08x}");
        let (outer, inner) = (format!("zs{tag:08x}a"), format!("zs{tag:08x}b"));
        let outside = format!("198.{b}.{c}.{}", d + 1);
        let inside = format!("198.{b}.{c}.{}", d + 2);
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            name,
            outer: outer.clone(),
            outside,
            inside,
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/30", ns.outside), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.inside),
            "dev",
            &inner,
        ]);
        ip(&["-n", &ns.name, "link", "set", &inner, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        // Everything else through this side: a controller listening on another namespace's veth too.
        ip(&[
            "-n",
            &ns.name,
            "route",
            "add",
            "default",
            "via",
            &ns.outside,
        ]);
        ns
    }

    /// Kills every process in the namespace: the host is gone.
    fn kill_all(&self) {
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .expect("ip netns pids");
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) of a process in the test's own namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.kill_all();
        // The veth pair goes with the namespace; this side is removed too in case it never moved.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "delete", &self.outer])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// An sshd of the test's own in a namespace of its own, and the keys to reach it.
struct Sshd {
    proc: Proc,
    ns: NetNs,
    /// Keys, config and the machines' directory.
    dir: tempfile::TempDir,
    address: String,
    /// `ssh-ed25519 AAAA…` as a pinned host key.
    host_key: String,
    client_key: PathBuf,
    /// Where the machines live "on the host".
    work_dir: PathBuf,
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
}

/// `/usr/sbin/sshd`, installed by `scripts/install-test-services sshd` when missing.
fn sshd_program() -> PathBuf {
    let sshd = PathBuf::from("/usr/sbin/sshd");
    if !sshd.exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-test-services");
        let installed = Command::new(&script).arg("sshd").status();
        assert!(
            installed.is_ok_and(|s| s.success()) && sshd.exists(),
            "/usr/sbin/sshd is needed by this test and could not be installed: run `{} sshd` as root (Debian's openssh-server)",
            script.display()
        );
    }
    sshd
}

impl Sshd {
    /// With `client`: that key logs in too (hosts sharing one controller key), instead of a new one.
    fn start(client: Option<&Path>) -> Sshd {
        let sshd = sshd_program();
        let tempdir = tempfile::Builder::new()
            .prefix("zeroci-sshd-")
            .tempdir()
            .unwrap();
        let dir = tempdir.path().to_path_buf();
        keygen(&dir.join("host_key"));
        let client_key = match client {
            Some(key) => key.to_path_buf(),
            None => {
                keygen(&dir.join("client_key"));
                dir.join("client_key")
            }
        };
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )
        .unwrap();
        // Privilege separation wants its empty directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let ns = NetNs::new();
        let config = format!(
            "Port 22\nListenAddress {inside}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
            d = dir.display(),
            inside = ns.inside
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let proc = spawn_process(
            Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .arg(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap()),
            "sshd",
        );
        let address = format!("{}:22", ns.inside);
        zeroci_testkit::wait_for("sshd listening", || {
            std::net::TcpStream::connect(&address).ok().map(drop)
        });
        let host_key = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        Sshd {
            proc,
            ns,
            dir: tempdir,
            address,
            host_key: host_key
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            client_key,
            work_dir: dir.join("remote"),
        }
    }

    /// The `[provisioner]` table for this host, pinning `host_key`.
    /// The `[provisioner]` table for this host, pinning `host_key`.
    fn provisioner(&self, host_key: &str) -> toml::Table {
        provisioner(self, &[(&self.address, host_key)])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

/// The `[provisioner]` table for `hosts` (address, pinned key), logging in with `first`'s client key
/// and keeping machines under its work directory.
fn provisioner(first: &Sshd, hosts: &[(&str, &str)]) -> toml::Table {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|(address, key)| format!("{{ address = \"{address}\", host_key = \"{key}\" }}"))
        .collect();
    let text = format!(
        "kind = \"ssh\"\n[ssh]\nuser = \"root\"\nkey_file = \"{key}\"\nwork_dir = \"{work}\"\n\
         agent_binary = \"{agent}\"\nagent_give_up = 60\nhosts = [{hosts}]\n",
        key = first.client_key.display(),
        work = first.work_dir.display(),
        agent = bin("zeroci-agent").display(),
        hosts = hosts.join(", "),
    );
    toml::from_str(&text).unwrap()
}

/// A controller whose agents reach it from the host's namespace: it listens on this side of the veth.
fn env_with(sshd: &Sshd, host_key: &str) -> TestEnv {
    TestEnv::start_with(Settings {
        provisioner: Some(sshd.provisioner(host_key)),
        grpc_listen: format!("{}:0", sshd.ns.outside),
        ..Settings::default()
    })
}

/// True when some process's command line contains `needle` (NUL-separated arguments).
fn running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(needle))
    })
}

/// Directories of machines still on the host.
fn machines_left(work_dir: &Path) -> Vec<String> {
    std::fs::read_dir(work_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with("agent-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_job_runs_on_an_ssh_host_and_leaves_nothing_behind() {
    let sshd = Sshd::start(None);
    let env = env_with(&sshd, &sshd.host_key);
    let repo = Repo::new(
        &env,
        "over-ssh",
        &[(
            "zeroCI.yaml",
            "script:\n  - echo \"ran on $(hostname) in $PWD\"\n  - (sleep 6004 &)\n",
        )],
    );
    for _ in 0..2 {
        let id = env.submit(&repo.path);
        let job = env.wait_job(id);
        assert_eq!(job["status"], "success", "{job:#}");
        let log = String::from_utf8(env.raw_log(id, None)).unwrap();
        assert!(log.contains(&sshd.work_dir.display().to_string()), "{log}");
    }
    // The agent was copied once and checked; each machine's directory went with its job.
    let agents: Vec<_> = std::fs::read_dir(&sshd.work_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("agent-"))
        .collect();
    assert_eq!(agents.len(), 1);
    zeroci_testkit::wait_for("the machines removed from the host", || {
        machines_left(&sshd.work_dir).is_empty().then_some(())
    });
    // What a step left running went with its machine.
    zeroci_testkit::wait_for("the steps' leftovers killed", || {
        (!running("sleep\u{0}6004")).then_some(())
    });
}

#[test]
fn a_host_showing_another_key_is_refused_before_anything_is_sent() {
    let sshd = Sshd::start(None);
    let other = sshd.dir.path().join("other_key");
    keygen(&other);
    let other_key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_key: String = other_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let env = env_with(&sshd, &other_key);
    let repo = Repo::new(
        &env,
        "refused",
        &[("zeroCI.yaml", "script:\n  - echo never\n")],
    );
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "error", "{job:#}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("showed a host key other than the one pinned"),
        "{job:#}"
    );
    assert!(!sshd.work_dir.exists(), "nothing was copied to the host");
    zeroci_testkit::wait_for("no machine left on record", || {
        env.stored_job(id)["machine"].is_null().then_some(())
    });
}

#[test]
fn a_host_gone_mid_job_ends_the_job_with_the_agent_lost() {
    let sshd = Sshd::start(None);
    let env = env_with(&sshd, &sshd.host_key);
    let repo = Repo::new(
        &env,
        "vanishing",
        &[("zeroCI.yaml", "script:\n  - echo started; sleep 6003\n")],
    );
    let id = env.submit(&repo.path);
    env.wait_for_output(id, None, "started");
    // The host goes: its sshd and every process of the job's machine.
    let Sshd {
        proc,
        work_dir,
        dir,
        ..
    } = sshd;
    drop(proc);
    let killed = Command::new("pkill")
        .args(["-KILL", "-f"])
        .arg(work_dir.display().to_string())
        .status()
        .unwrap();
    assert!(killed.success(), "the machine's processes were found");
    let job = env.wait_job(id);
    assert_eq!(job["status"], "error", "{job:#}");
    assert!(job["reason"].as_str().unwrap().contains("lost"), "{job:#}");
    drop(dir);
}

#[test]
fn jobs_go_to_the_hosts_in_turn_and_pass_over_one_that_is_down() {
    let a = Sshd::start(None);
    let b = Sshd::start(Some(&a.client_key));
    let env = TestEnv::start_with(Settings {
        provisioner: Some(provisioner(
            &a,
            &[(&a.address, &a.host_key), (&b.address, &b.host_key)],
        )),
        grpc_listen: format!("{}:0", a.ns.outside),
        ..Settings::default()
    });
    let repo = Repo::new(
        &env,
        "spread",
        &[("zeroCI.yaml", "script:\n  - echo spread\n")],
    );
    let run = |env: &TestEnv| {
        for _ in 0..2 {
            let id = env.submit(&repo.path);
            let job = env.wait_job(id);
            assert_eq!(job["status"], "success", "{job:#}");
        }
    };
    run(&env);
    for host in [&a, &b] {
        assert!(
            host.log().contains("Accepted publickey"),
            "each host took a job"
        );
    }
    // Host a goes down: the next jobs all go to b.
    a.ns.kill_all();
    run(&env);
}
