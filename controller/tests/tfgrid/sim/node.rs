//! Simulated zos nodes: what `zos.deployment.deploy` checks before it accepts a deployment (the
//! sender is the deployment's twin, the signatures verify against the twins' keys on the chain, a
//! live contract of this node holds exactly this hash), how the workloads go `init` → `ok`, and a
//! zmachine booted as the real agent started from the zmachine's environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use zeroci_tfgrid::chain::{Chain as _, ContractState, Twin};
use zeroci_tfgrid::deployment::{
    Deployment, ResultState, WorkloadData, WorkloadResult, verify_deployment_signatures,
};
use zeroci_tfgrid::identity::Identity;
use zeroci_tfgrid::rmb::envelope::{Message, Payload};
use zeroci_tfgrid::rmb::{
    Address, Envelope, ErrorReply, Response, SCHEMA_JSON, e2e, sign_envelope,
};

use tokio_util::sync::CancellationToken;
use zeroci_controller::jobs::MachineRecord;
use zeroci_controller::provisioner::vm::VmProvisioner;
use zeroci_controller::provisioner::{MachineLedger, MachineRequest, ProvisionError, Provisioner};

use super::Boot;
use super::chain::SimChain;

/// How a node treats deployments (tests turn it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// Deploys are answered with this error.
    AnswerError(String),
    /// Deploys are accepted; the workloads stay `init` forever.
    NeverBoot,
    /// Deploys are never answered.
    Silent,
}

pub struct Node {
    pub node_id: u32,
    pub twin: u32,
    identity: Identity,
    pub behaviour: Mutex<Behaviour>,
    /// Contract id → the deployment as stored, with its results.
    deployments: Mutex<BTreeMap<u64, Deployment>>,
}

/// A zmachine that runs: a VM booted through the `vm` provisioner, or (where VMs cannot run) the
/// agent as a plain process.
pub enum Machine {
    Vm(MachineRecord),
    Process(Child),
}

impl Machine {
    pub fn kill(&mut self, nodes: &Nodes) {
        match self {
            Machine::Process(child) => {
                // SAFETY: kill(2) on our own child's process group.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.wait();
            }
            Machine::Vm(record) => {
                if let Some(vm) = &nodes.vm {
                    let vm = vm.provisioner.clone();
                    let record = record.clone();
                    // Destroy is async; the caller may be in or out of a runtime.
                    std::thread::spawn(move || {
                        let runtime = tokio::runtime::Runtime::new().unwrap();
                        let _ = runtime.block_on(vm.destroy(&record));
                    })
                    .join()
                    .unwrap();
                }
            }
        }
    }
}

/// Zmachines as real VMs: the flist maps to the `vm` provisioner's `default` image; the job's
/// repository (a path on this host) is what the test names, since a zmachine's env has none.
pub struct VmBoot {
    pub provisioner: Arc<VmProvisioner>,
    pub repo: PathBuf,
}

struct NoLedger;

#[async_trait::async_trait]
impl MachineLedger for NoLedger {
    async fn record(&self, _: Value) -> Result<(), ProvisionError> {
        Ok(())
    }
}

pub struct Nodes {
    pub by_twin: BTreeMap<u32, Node>,
    pub chain: Arc<SimChain>,
    pub agent_binary: PathBuf,
    pub work_root: PathBuf,
    pub boots: Mutex<Vec<Boot>>,
    /// Contract id → its running zmachine.
    pub running: Mutex<BTreeMap<u64, Machine>>,
    /// `Some`: zmachines boot as VMs.
    pub vm: Option<VmBoot>,
}

impl Node {
    pub fn new(node_id: u32, twin: u32, identity: Identity) -> Node {
        Node {
            node_id,
            twin,
            identity,
            behaviour: Mutex::new(Behaviour::Normal),
            deployments: Mutex::default(),
        }
    }

    /// Answers one request envelope from `sender`; `None` when it stays unanswered.
    pub async fn handle(
        &self,
        nodes: &Nodes,
        request: Envelope,
        sender: &Twin,
    ) -> Option<Envelope> {
        let Some(Message::Request(call)) = &request.message else {
            return None;
        };
        let payload = match &request.payload {
            Some(Payload::Plain(data)) => data.clone(),
            Some(Payload::Cipher(data)) => {
                let key = sender.e2e_key.as_deref()?;
                e2e::decrypt(&self.identity, key, data).ok()?
            }
            None => Vec::new(),
        };
        let answer = match call.command.as_str() {
            "zos.system.version" => Ok(json!({"zos": "sim", "zinit": "sim"})),
            "zos.network.list_wg_ports" => Ok(json!([])),
            "zos.deployment.deploy" => {
                let behaviour = self.behaviour.lock().unwrap().clone();
                match behaviour {
                    Behaviour::Silent => return None,
                    Behaviour::AnswerError(message) => Err(message),
                    _ => self.deploy(nodes, &payload, sender.id, behaviour).await,
                }
            }
            "zos.deployment.get" => self.get(&payload, sender.id),
            "zos.deployment.delete" => {
                Err("deletion over the api is disabled, please cancel your contract instead".into())
            }
            other => Err(format!("unknown command {other}")),
        };
        Some(self.reply(&request, sender, answer))
    }

    fn reply(&self, request: &Envelope, to: &Twin, answer: Result<Value, String>) -> Envelope {
        let (message, payload) = match answer {
            Ok(value) => {
                let body = value.to_string().into_bytes();
                let payload = match &to.e2e_key {
                    Some(key) => Payload::Cipher(e2e::encrypt(&self.identity, key, &body).unwrap()),
                    None => Payload::Plain(body),
                };
                (Message::Response(Response {}), Some(payload))
            }
            Err(message) => (Message::Error(ErrorReply { code: 1, message }), None),
        };
        let mut reply = Envelope {
            uid: request.uid.clone(),
            tags: None,
            timestamp: request.timestamp,
            expiration: request.expiration,
            source: Some(Address {
                twin: self.twin,
                connection: None,
            }),
            destination: request.source.clone(),
            message: Some(message),
            signature: None,
            schema: Some(SCHEMA_JSON.into()),
            federation: None,
            payload,
            relays: Vec::new(),
        };
        sign_envelope(&mut reply, &self.identity);
        reply
    }

    async fn deploy(
        &self,
        nodes: &Nodes,
        payload: &[u8],
        sender: u32,
        behaviour: Behaviour,
    ) -> Result<Value, String> {
        let mut deployment: Deployment =
            serde_json::from_slice(payload).map_err(|e| format!("invalid deployment: {e}"))?;
        if deployment.twin_id != sender {
            return Err(format!(
                "twin id mismatch (deployment: {}, sender: {sender})",
                deployment.twin_id
            ));
        }
        let mut keys: BTreeMap<u32, [u8; 32]> = BTreeMap::new();
        for request in &deployment.signature_requirement.requests {
            if let Ok(Some(twin)) = nodes.chain.twin(request.twin_id).await {
                keys.insert(twin.id, twin.account);
            }
        }
        verify_deployment_signatures(&deployment, |twin| keys.get(&twin).copied())
            .map_err(|e| format!("failed to verify deployment signature: {e}"))?;
        let contract = nodes
            .chain
            .node_contract(deployment.contract_id)
            .await
            .ok()
            .flatten()
            .filter(|c| c.state == ContractState::Created)
            .ok_or("failed to get deployment contract: not found")?;
        if contract.node_id != self.node_id || contract.twin_id != sender {
            return Err("contract is not for this node or this twin".into());
        }
        let hash = deployment.contract_hash_hex().map_err(|e| e.to_string())?;
        if hash != contract.deployment_hash {
            return Err("contract hash does not match deployment hash".into());
        }
        let boot = behaviour != Behaviour::NeverBoot;
        for workload in &mut deployment.workloads {
            let state = match (&workload.data, boot) {
                (WorkloadData::ZMachine(_), false) => ResultState::Init,
                (WorkloadData::ZMachine(vm), true) => {
                    match nodes.boot(self.node_id, deployment.contract_id, vm).await {
                        Ok(()) => ResultState::Ok,
                        Err(message) => {
                            workload.result.message = message;
                            ResultState::Error
                        }
                    }
                }
                _ => ResultState::Ok,
            };
            workload.result = WorkloadResult {
                created: 1,
                state: Some(state),
                message: std::mem::take(&mut workload.result.message),
                data: json!({"id": workload.name, "ip": "10.20.2.2", "planetary_ip": "", "mycelium_ip": "", "console_url": ""}),
            };
        }
        self.deployments
            .lock()
            .unwrap()
            .insert(deployment.contract_id, deployment);
        Ok(Value::Null)
    }

    fn get(&self, payload: &[u8], sender: u32) -> Result<Value, String> {
        let query: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let id = query["contract_id"]
            .as_u64()
            .ok_or("contract_id is required")?;
        let deployments = self.deployments.lock().unwrap();
        let deployment = deployments
            .get(&id)
            .filter(|d| d.twin_id == sender)
            .ok_or("deployment not found")?;
        serde_json::to_value(deployment).map_err(|e| e.to_string())
    }

    fn forget(&self, contract_id: u64) {
        if let Some(deployment) = self.deployments.lock().unwrap().get_mut(&contract_id) {
            for workload in &mut deployment.workloads {
                workload.result.state = Some(ResultState::Deleted);
            }
        }
    }
}

impl Nodes {
    /// Boots a zmachine from its environment only: a VM whose agent gets the bootstrap the env
    /// holds, or the agent as a process with that env.
    async fn boot(
        &self,
        node_id: u32,
        contract_id: u64,
        vm: &zeroci_tfgrid::deployment::ZMachine,
    ) -> Result<(), String> {
        self.boots.lock().unwrap().push(Boot {
            node_id,
            contract_id,
            flist: vm.flist.clone(),
            env: vm.env.clone(),
        });
        if let Some(boot) = &self.vm {
            let bootstrap =
                zeroci::bootstrap::Bootstrap::from_env(|name| vm.env.get(name).cloned())?;
            let request = MachineRequest {
                job_id: bootstrap.job_id,
                attempt: 1,
                name: format!("zmachine-{contract_id}"),
                bootstrap,
                repo_url: boot.repo.display().to_string(),
                untrusted: false,
                resources: Default::default(),
                image_name: Some("default".into()),
                labels: Vec::new(),
            };
            let details = boot
                .provisioner
                .create(&request, &NoLedger, &CancellationToken::new())
                .await
                .map_err(|e| format!("cannot boot: {e}"))?;
            let record = MachineRecord {
                provisioner: "vm".into(),
                name: request.name,
                attempt: 1,
                token_sha256: None,
                details,
            };
            self.running
                .lock()
                .unwrap()
                .insert(contract_id, Machine::Vm(record));
            return Ok(());
        }
        let dir = self.work_root.join(format!("vm-{contract_id}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("agent.log")).map_err(|e| e.to_string())?;
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(&self.agent_binary)
                .args([
                    "run",
                    "--bootstrap-env",
                    "--give-up-after",
                    "60",
                    "--workdir",
                ])
                .arg(dir.join("job"))
                .env_clear()
                .envs(&vm.env)
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("HOME", &dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log),
            0,
        )
        .spawn()
        .map_err(|e| format!("cannot boot: {e}"))?;
        self.running
            .lock()
            .unwrap()
            .insert(contract_id, Machine::Process(child));
        Ok(())
    }
}

/// Stops the zmachines of contracts as they are cancelled, as zos does on the chain's event.
pub async fn stop_cancelled(nodes: Arc<Nodes>) {
    let mut cancelled = nodes.chain.cancellations();
    while let Ok(contract_id) = cancelled.recv().await {
        let machine = nodes.running.lock().unwrap().remove(&contract_id);
        if let Some(mut machine) = machine {
            machine.kill(&nodes);
        }
        for node in nodes.by_twin.values() {
            node.forget(contract_id);
        }
    }
}
