//! The `tfgrid` provisioner against a simulated ThreeFold Grid (`zeroci-tfgrid-sim`): a real grid-proxy
//! HTTP server, a real RMB relay WebSocket with zos nodes behind it that check signatures, contracts
//! and deployment hashes, and an in-memory chain that keeps TFChain's rules. The controller runs
//! in-process (its own runtime, so "killing" it drops everything at once) with the provisioner wired
//! to the simulated grid; the nodes boot each zmachine as the real `zeroci-agent`, started from the
//! zmachine's environment, which dials the controller over mTLS. Jobs are submitted with the real
//! `zeroci` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use zeroci_controller::config::Config;
use zeroci_controller::provisioner::tfgrid::{GridSettings, TfgridProvisioner};
use zeroci_controller::provisioner::{Machines, capacity::Limited};
use zeroci_testkit::bin;
use zeroci_tfgrid::chain::ContractState;
use zeroci_tfgrid::identity::{Identity, KeyType};

mod sim;

use sim::{Behaviour, SimGrid};

const NODE: u32 = 11;
const FLIST: &str = "https://hub.grid.tf/zeroci/agent-ubuntu-22.04.flist";

/// The simulated grid, on a runtime of its own that outlives controller restarts.
struct Grid {
    /// Dropped before the runtime it runs on.
    sim: SimGrid,
    /// The controller's twin identity, registered on the simulated chain.
    identity_seed: [u8; 32],
    /// Runs the grid's servers; kept for as long as the grid.
    _runtime: tokio::runtime::Runtime,
}

impl Grid {
    /// A grid whose zmachines run as plain agent processes (for tests where none boots for long).
    fn start(dir: &Path) -> Grid {
        Grid::start_with(dir, None)
    }

    /// A grid whose zmachines boot as real VMs (the `vm` provisioner's test image; KVM where it
    /// works, software emulation elsewhere), running jobs of the repository at `repo`.
    fn with_vms(dir: &Path, repo: &Path) -> Grid {
        let mut config = Config::for_init("127.0.0.1:0", None, "http://ci.test");
        config.main.state_dir = dir.join("grid-vms");
        let vm = zeroci_controller::config::VmConfig {
            agent_binary: Some(bin("zeroci-agent")),
            images_dir: Some(zeroci_testkit::vm::test_images()),
            cpus: 1,
            memory_mb: 768,
            ..Default::default()
        };
        // The image store is found through the whole config's `[provisioner.vm]`.
        config.provisioner = zeroci_controller::config::ProvisionerConfig::Vm { vm: vm.clone() };
        let provisioner =
            zeroci_controller::provisioner::vm::VmProvisioner::from_config(&config, &vm)
                .expect("VMs can be made here");
        Grid::start_with(
            dir,
            Some(sim::VmBoot {
                provisioner: Arc::new(provisioner),
                repo: repo.to_path_buf(),
            }),
        )
    }

    fn start_with(dir: &Path, vm: Option<sim::VmBoot>) -> Grid {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let sim = runtime.block_on(SimGrid::start(
            &[NODE],
            bin("zeroci-agent"),
            dir.join("zmachines"),
            vm,
        ));
        let identity_seed = [7u8; 32];
        let identity = Identity::from_seed(&identity_seed, KeyType::Sr25519).unwrap();
        sim.chain().add_twin(
            identity.public_key(),
            Some("relay.sim".into()),
            Some(identity.e2e_public_key().to_vec()),
        );
        Grid {
            _runtime: runtime,
            sim,
            identity_seed,
        }
    }

    fn settings(&self, boot_timeout: Duration) -> GridSettings {
        GridSettings {
            proxy_url: self.sim.proxy_url(),
            relay_url: self.sim.relay_url(),
            farm_id: 1,
            images: [("default".to_string(), FLIST.to_string())].into(),
            entrypoint: "/sbin/zinit init".into(),
            cpus: 1,
            memory_mb: 512,
            disk_gb: 2,
            boot_timeout,
            status_poll: Duration::from_millis(100),
        }
    }

    fn contracts(&self) -> Vec<zeroci_tfgrid::chain::NodeContract> {
        self.sim.chain().contracts()
    }
}

/// A controller installation (`zeroci-controller init`) and, while it runs, its runtime.
struct Controller {
    home: PathBuf,
    config: Config,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
}

impl Controller {
    fn install(dir: &Path) -> Controller {
        let home = dir.join("home");
        let status = Command::new(bin("zeroci-controller"))
            .args(["init", "--dir"])
            .arg(&home)
            .args(["--grpc-listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let mut config = Config::load(&home.join("config.toml")).unwrap();
        config.main.workers = 2;
        config.main.lost_agent_timeout = 5;
        config.main.heartbeat_interval_ms = 300;
        // A VM's agent connects after the VM booted (seconds with KVM, more under emulation).
        config.main.provision_timeout = 60;
        config.main.shutdown_grace = 0;
        Controller {
            home,
            config,
            runtime: None,
            shutdown: CancellationToken::new(),
        }
    }

    /// Serves with the provisioner on `grid`; returns once the controller is ready.
    fn start(&mut self, grid: &Grid, boot_timeout: Duration) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let identity = Identity::from_seed(&grid.identity_seed, KeyType::Sr25519).unwrap();
        let provisioner =
            TfgridProvisioner::new(grid.settings(boot_timeout), identity, grid.sim.chain())
                .unwrap();
        let machines = Machines {
            provisioner: Limited::wrap(Arc::new(provisioner), None),
            pool_hosts: None,
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (ready, is_ready) = std::sync::mpsc::channel();
        self.shutdown = CancellationToken::new();
        let listeners = zeroci_controller::server::Listeners {
            grpc: listener,
            http: None,
            on_ready: Some(Box::new(move || {
                let _ = ready.send(());
            })),
        };
        let mut config = self.config.clone();
        config.main.grpc_listen = addr.clone();
        runtime.spawn(zeroci_controller::server::serve_with(
            config,
            listeners,
            self.shutdown.clone(),
            machines,
        ));
        is_ready
            .recv_timeout(zeroci_testkit::patience())
            .expect("the controller gets ready");
        let profile = self.home.join("cli.toml");
        let mut table: toml::Table =
            toml::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
        table.insert("controller".into(), addr.into());
        std::fs::write(&profile, toml::to_string(&table).unwrap()).unwrap();
        self.runtime = Some(runtime);
    }

    /// Ends the controller the way a crash does: every task dropped where it stands.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    fn cli(&self, args: &[&str]) -> (i32, Vec<u8>, String) {
        let out = Command::new(bin("zeroci"))
            .arg("--profile")
            .arg(self.home.join("cli.toml"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `zeroci run REPO --json`: the finished job.
    fn run(&self, repo: &Path) -> Value {
        let (_, stdout, stderr) = self.cli(&["run", repo.to_str().unwrap(), "--json"]);
        serde_json::from_slice(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
    }

    fn job(&self, id: u64) -> Value {
        let (code, stdout, stderr) = self.cli(&["show", &id.to_string(), "--json"]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_slice(&stdout).unwrap()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn repo(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("repo");
    zeroci_testkit::init_repo(
        &path,
        &[("zeroCI.yaml", &format!("script:\n  - {script}\n"))],
    );
    path
}

fn all_cancelled(grid: &Grid) -> bool {
    let contracts = grid.contracts();
    !contracts.is_empty() && contracts.iter().all(|c| c.state == ContractState::Deleted)
}

#[test]
fn a_job_runs_in_a_grid_vm_and_its_contract_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    // Inside a VM: the kernel's DMI vendor is QEMU's, not the host's.
    let repo = repo(dir.path(), "cat /sys/class/dmi/id/sys_vendor; echo grid");
    let grid = Grid::with_vms(dir.path(), &repo);
    let mut controller = Controller::install(dir.path());
    controller.start(&grid, Duration::from_secs(120));
    let job = controller.run(&repo);
    assert_eq!(job["status"], "success", "{job:#}");
    let (_, log, _) = controller.cli(&["logs", &job["id"].to_string(), "--raw"]);
    assert_eq!(String::from_utf8_lossy(&log), "QEMU\ngrid\n");
    // One contract, on the node, cancelled once the job ended; the node saw the signed deployment
    // with the agent's bootstrap in the zmachine's environment.
    let contracts = grid.contracts();
    assert_eq!(contracts.len(), 1, "{contracts:?}");
    assert_eq!(contracts[0].node_id, NODE);
    zeroci_testkit::wait_for("the contract to be cancelled", || {
        all_cancelled(&grid).then_some(())
    });
    let booted = grid.sim.boots();
    assert_eq!(booted.len(), 1);
    assert_eq!(
        (booted[0].node_id, booted[0].contract_id),
        (NODE, contracts[0].contract_id)
    );
    assert_eq!(booted[0].env["ZEROCI_JOB_ID"], job["id"].to_string());
    assert!(booted[0].env["ZEROCI_CA_PEM"].contains("BEGIN CERTIFICATE"));
    assert_eq!(booted[0].flist, FLIST);
    zeroci_testkit::wait_for("the VM to be stopped", || {
        (grid.sim.running() == 0).then_some(())
    });
}

#[test]
fn a_node_that_refuses_the_deployment_fails_the_job_and_nothing_stays_paid_for() {
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::start(dir.path());
    grid.sim.set_behaviour(
        NODE,
        Behaviour::AnswerError("no space left on the pool".into()),
    );
    let mut controller = Controller::install(dir.path());
    controller.start(&grid, Duration::from_secs(30));
    let job = controller.run(&repo(dir.path(), "true"));
    assert_eq!(job["status"], "error", "{job:#}");
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("no space left on the pool"), "{reason}");
    assert!(all_cancelled(&grid), "{:?}", grid.contracts());
}

#[test]
fn a_vm_that_never_boots_times_out_and_its_contracts_are_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::start(dir.path());
    grid.sim.set_behaviour(NODE, Behaviour::NeverBoot);
    let mut controller = Controller::install(dir.path());
    controller.start(&grid, Duration::from_secs(1));
    let job = controller.run(&repo(dir.path(), "true"));
    assert_eq!(job["status"], "error", "{job:#}");
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("did not run within"), "{reason}");
    assert!(all_cancelled(&grid), "{:?}", grid.contracts());
}

#[test]
fn a_contract_made_before_the_controller_died_is_cancelled_when_it_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid::start(dir.path());
    // The node takes the deployment and never answers: the controller is inside `create`, after
    // the contract was made, when it dies.
    grid.sim.set_behaviour(NODE, Behaviour::Silent);
    let mut controller = Controller::install(dir.path());
    // After the restart the job waits this long for an agent that never comes, then its machine
    // (the contract) is destroyed.
    controller.config.main.provision_timeout = 10;
    controller.start(&grid, Duration::from_secs(60));
    let (code, stdout, stderr) = controller.cli(&[
        "run",
        repo(dir.path(), "true").to_str().unwrap(),
        "--detach",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let id = serde_json::from_slice::<Value>(&stdout).unwrap()["id"]
        .as_u64()
        .unwrap();
    zeroci_testkit::wait_for("the contract to be made", || {
        (!grid.contracts().is_empty()).then_some(())
    });
    controller.kill();
    assert_eq!(grid.contracts()[0].state, ContractState::Created);
    grid.sim.set_behaviour(NODE, Behaviour::Normal);
    controller.start(&grid, Duration::from_secs(60));
    zeroci_testkit::wait_for("the leftover contract to be cancelled", || {
        (grid.contracts()[0].state == ContractState::Deleted).then_some(())
    });
    // The job itself is tried again or ended; either way it ends.
    let job = zeroci_testkit::wait_for("the job to end", || {
        let job = controller.job(id);
        (job["finished_at"] != Value::Null).then_some(job)
    });
    assert!(
        ["error", "success"].contains(&job["status"].as_str().unwrap()),
        "{job:#}"
    );
}
