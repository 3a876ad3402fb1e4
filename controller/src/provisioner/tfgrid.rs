//! The `tfgrid` provisioner: a VM per job on a ThreeFold Grid farm (Freefarm by default). Steps, each
//! written down in the ledger before it costs anything:
//!
//! 1. the grid proxy names the farm's nodes that are up with room; each in turn is asked
//!    `zos.system.version` over RMB (a node that does not answer costs nothing);
//! 2. the deployment (a private network + a zmachine from the image's flist, whose env carries the
//!    agent's bootstrap) is hashed and signed; the node and hash are recorded;
//! 3. the node contract is created on TFChain and its id recorded;
//! 4. the deployment goes to the node over RMB (again while the node does not see the contract yet);
//! 5. the node is asked how it goes until the VM runs (or it fails, or `boot_timeout` passes).
//!
//! Any failure after step 3 cancels the contract before it returns; a crash anywhere leaves a record
//! from which `destroy` finds the contract (by id, or by node and hash) and cancels it, and the node
//! removes the VM when it sees the cancellation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroci::resources::Resources;
use zeroci_tfgrid::chain::{Chain, NewNodeContract};
use zeroci_tfgrid::deployment::{Deployment, ResultState};
use zeroci_tfgrid::identity::{Identity, KeyType};
use zeroci_tfgrid::proxy::{GridProxy, NodeQuery};
use zeroci_tfgrid::rmb::client::{Peer, RmbClient, RmbError};
use zeroci_tfgrid::vm::VmSpec;

use super::{MachineLedger, MachineRequest, ProvisionError, Provisioner};
use crate::config::TfgridConfig;
use crate::jobs::MachineRecord;

/// Nodes tried for one machine before giving up on this attempt.
const NODES_PER_ATTEMPT: usize = 3;
/// How long a node may take to answer one RMB call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A liveness question: a node slower than this is passed over.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Deploys sent while the node does not see the new contract yet.
const DEPLOY_TRIES: u32 = 8;
/// How often, and how far apart, a contract whose transaction got no answer is looked for before it
/// is taken as never made: a few of TFChain's 6 s blocks.
const LATE_CONTRACT_LOOKS: u32 = 5;
const LATE_CONTRACT_PAUSE: Duration = Duration::from_secs(6);
/// The environment variable holding the twin's phrase when no `mnemonic_file` is set.
pub const MNEMONIC_ENV: &str = "ZEROCI_TFGRID_MNEMONIC";

/// What the provisioner is set up with; from `[provisioner.tfgrid]`.
#[derive(Debug, Clone)]
pub struct GridSettings {
    pub proxy_url: String,
    pub relay_url: String,
    pub farm_id: u32,
    pub images: BTreeMap<String, String>,
    pub entrypoint: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub boot_timeout: Duration,
    pub status_poll: Duration,
}

impl GridSettings {
    pub fn from_config(config: &TfgridConfig) -> GridSettings {
        let (proxy, relay, _) = config.network.endpoints();
        GridSettings {
            proxy_url: config.proxy_url.clone().unwrap_or_else(|| proxy.into()),
            relay_url: config.relay_url.clone().unwrap_or_else(|| relay.into()),
            farm_id: config.farm_id,
            images: config.images.clone(),
            entrypoint: config.entrypoint.clone(),
            cpus: config.cpus,
            memory_mb: config.memory_mb,
            disk_gb: config.disk_gb,
            boot_timeout: Duration::from_secs(config.boot_timeout),
            status_poll: Duration::from_millis(config.status_poll_ms),
        }
    }
}

/// The twin's keys, from `mnemonic_file` or [`MNEMONIC_ENV`].
pub fn identity_from_config(config: &TfgridConfig) -> Result<Identity, ProvisionError> {
    let unavailable = |message: String| ProvisionError::Unavailable {
        kind: "tfgrid",
        message,
    };
    let secret = match &config.mnemonic_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| unavailable(format!("mnemonic_file {}: {e}", path.display())))?,
        None => std::env::var(MNEMONIC_ENV).map_err(|_| {
            unavailable(format!(
                "the twin's phrase is needed: set [provisioner.tfgrid] mnemonic_file or {MNEMONIC_ENV}"
            ))
        })?,
    };
    let key_type = if config.key_type == "ed25519" {
        KeyType::Ed25519
    } else {
        KeyType::Sr25519
    };
    Identity::from_secret(secret.trim(), key_type)
        .map_err(|e| unavailable(format!("the twin's phrase or seed: {e}")))
}

pub struct TfgridProvisioner {
    settings: GridSettings,
    identity: Arc<Identity>,
    chain: Arc<dyn Chain>,
    proxy: GridProxy,
    /// Our twin and the RMB client speaking as it, found on first use (the chain may be down at
    /// start-up; the controller must still start and serve what it has).
    peer: OnceCell<(u32, Arc<RmbClient>)>,
}

/// What is recorded of a grid machine, step by step.
#[derive(Debug, Default, Serialize, Deserialize)]
struct GridDetails {
    node_id: u32,
    node_twin: u32,
    /// The deployment's contract hash: finds the contract when a crash came before its id was
    /// recorded.
    deployment_hash: String,
    #[serde(default)]
    contract_id: Option<u64>,
    /// The contract's transaction was sent: it may land even when no answer came.
    #[serde(default)]
    contract_sent: bool,
    #[serde(default)]
    cpus: u32,
    #[serde(default)]
    memory_mb: u64,
    /// The VM's address on its private network, once it runs.
    #[serde(default)]
    ip: String,
}

impl GridDetails {
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// How a try on one node ended, when it did not give a machine.
enum NodeFailure {
    /// Nothing was spent or everything spent was given back: the next node may do.
    PassOver(String),
    /// Stop trying this attempt.
    Stop(ProvisionError),
}

impl TfgridProvisioner {
    /// From `[provisioner.tfgrid]`, on the real grid.
    pub fn from_config(config: &TfgridConfig) -> Result<TfgridProvisioner, ProvisionError> {
        let identity = identity_from_config(config)?;
        let (_, _, chain_url) = config.network.endpoints();
        let chain_url = config.chain_url.clone().unwrap_or_else(|| chain_url.into());
        let chain = zeroci_tfgrid::substrate::SubstrateChain::new(&chain_url).map_err(|e| {
            ProvisionError::Unavailable {
                kind: "tfgrid",
                message: format!("chain_url: {e}"),
            }
        })?;
        TfgridProvisioner::new(GridSettings::from_config(config), identity, Arc::new(chain))
    }

    pub fn new(
        settings: GridSettings,
        identity: Identity,
        chain: Arc<dyn Chain>,
    ) -> Result<TfgridProvisioner, ProvisionError> {
        let proxy =
            GridProxy::new(&settings.proxy_url).map_err(|e| ProvisionError::Unavailable {
                kind: "tfgrid",
                message: e.to_string(),
            })?;
        Ok(TfgridProvisioner {
            settings,
            identity: Arc::new(identity),
            chain,
            proxy,
            peer: OnceCell::new(),
        })
    }

    /// Our twin id and RMB client.
    async fn peer(&self) -> Result<&(u32, Arc<RmbClient>), String> {
        self.peer
            .get_or_try_init(|| async {
                let twin = self
                    .chain
                    .twin_id_of(&self.identity.public_key())
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!(
                            "account {} has no twin on this grid: create one (dashboard) first",
                            self.identity.ss58_address()
                        )
                    })?;
                let mut session = [0u8; 6];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut session);
                let client = RmbClient::new(
                    Peer {
                        identity: self.identity.clone(),
                        twin_id: twin,
                        relay_url: self.settings.relay_url.clone(),
                        session: format!("zeroci-{}", zeroci::encoding::hex(&session)),
                    },
                    self.chain.clone(),
                );
                Ok((twin, Arc::new(client)))
            })
            .await
    }

    /// CPUs, memory (MiB) and disk (GiB) for a request: the configured size, lowered by the job's
    /// limits (zos's minimum memory is 250 MiB).
    fn fit(&self, resources: &Resources) -> (u32, u64, u64) {
        let cpus = resources.cpus.map_or(self.settings.cpus, |c| {
            (c.ceil() as u32).clamp(1, self.settings.cpus)
        });
        let memory = resources.memory_mb.map_or(self.settings.memory_mb, |m| {
            m.clamp(256, self.settings.memory_mb)
        });
        let disk = resources
            .disk_gb
            .map_or(self.settings.disk_gb, |d| d.clamp(1, self.settings.disk_gb));
        (cpus, memory, disk)
    }

    /// One try on one node: preflight, contract, deploy, wait.
    #[allow(clippy::too_many_arguments)]
    async fn try_node(
        &self,
        request: &MachineRequest,
        ledger: &dyn MachineLedger,
        cancel: &CancellationToken,
        rmb: &RmbClient,
        twin: u32,
        node: &zeroci_tfgrid::proxy::Node,
        spec: &VmSpec,
        details: &mut GridDetails,
    ) -> Result<(), NodeFailure> {
        let name = &request.name;
        let pass_over = |message: String| NodeFailure::PassOver(message);
        rmb.call(node.twin_id, "zos.system.version", b"null", PING_TIMEOUT)
            .await
            .map_err(|e| pass_over(format!("node {} does not answer: {e}", node.node_id)))?;
        let used = rmb
            .call(
                node.twin_id,
                "zos.network.list_wg_ports",
                b"null",
                PING_TIMEOUT,
            )
            .await
            .map_err(|e| {
                pass_over(format!(
                    "node {} does not list its ports: {e}",
                    node.node_id
                ))
            })?;
        let used: Vec<u16> = serde_json::from_slice(&used).unwrap_or_default();
        let mut spec = spec.clone();
        spec.wireguard_port = free_port(&used);
        let mut deployment = zeroci_tfgrid::vm::deployment(twin, &spec);
        let hash = deployment
            .contract_hash_hex()
            .map_err(|e| NodeFailure::Stop(prepare(name, e.to_string(), false)))?;
        deployment
            .sign(twin, &self.identity)
            .map_err(|e| NodeFailure::Stop(prepare(name, e.to_string(), false)))?;
        details.node_id = node.node_id;
        details.node_twin = node.twin_id;
        details.deployment_hash = hash.clone();
        details.contract_id = None;
        details.contract_sent = true;
        ledger
            .record(details.to_value())
            .await
            .map_err(NodeFailure::Stop)?;
        if cancel.is_cancelled() {
            return Err(NodeFailure::Stop(ProvisionError::Cancelled {
                name: name.clone(),
            }));
        }
        let contract = NewNodeContract {
            node_id: node.node_id,
            deployment_hash: hash,
            deployment_data: deployment.metadata.clone().into_bytes(),
            public_ips: 0,
        };
        let contract_id = match self
            .chain
            .create_node_contract(&self.identity, &contract)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                if !e.is_retryable() {
                    // Refused: nothing will land, nothing is to be looked for.
                    details.contract_sent = false;
                    let _ = ledger.record(details.to_value()).await;
                }
                let retryable = e.is_retryable();
                return Err(NodeFailure::Stop(prepare(
                    name,
                    format!("node contract: {e}"),
                    retryable,
                )));
            }
        };
        details.contract_id = Some(contract_id);
        ledger
            .record(details.to_value())
            .await
            .map_err(NodeFailure::Stop)?;
        info!(job_id = request.job_id, machine = %name, node = node.node_id, contract_id, "grid contract created");
        deployment.contract_id = contract_id;
        let outcome = self
            .deploy_and_wait(rmb, node.twin_id, &deployment, cancel, name)
            .await;
        match outcome {
            Ok(ip) => {
                details.ip = ip;
                Ok(())
            }
            Err(failure) => {
                // Nothing is left running or paid for when this returns.
                if let Err(e) = self
                    .chain
                    .cancel_contract(&self.identity, contract_id)
                    .await
                {
                    warn!(contract_id, error = %e, "cannot cancel the contract now; destroy retries");
                    return Err(NodeFailure::Stop(failure));
                }
                details.contract_id = None;
                details.contract_sent = false;
                details.deployment_hash.clear();
                let _ = ledger.record(details.to_value()).await;
                Err(NodeFailure::Stop(failure))
            }
        }
    }

    /// The contract of a transaction that was sent but not seen to finish: looked up by node and
    /// hash for a few blocks, since it may still be on its way into one.
    async fn sent_contract(
        &self,
        node_id: u32,
        hash: &str,
    ) -> Result<Option<u64>, zeroci_tfgrid::chain::ChainError> {
        for look in 0..LATE_CONTRACT_LOOKS {
            if let Some(id) = self
                .chain
                .contract_id_by_node_and_hash(node_id, hash)
                .await?
            {
                return Ok(Some(id));
            }
            if look + 1 < LATE_CONTRACT_LOOKS {
                tokio::time::sleep(LATE_CONTRACT_PAUSE).await;
            }
        }
        Ok(None)
    }

    /// Sends the deployment (again while the node does not see the contract yet) and waits for the
    /// VM to run; its private address.
    async fn deploy_and_wait(
        &self,
        rmb: &RmbClient,
        node_twin: u32,
        deployment: &Deployment,
        cancel: &CancellationToken,
        name: &str,
    ) -> Result<String, ProvisionError> {
        let body =
            serde_json::to_vec(deployment).map_err(|e| prepare(name, e.to_string(), false))?;
        let query = serde_json::json!({"contract_id": deployment.contract_id}).to_string();
        let mut tries = 0;
        loop {
            tries += 1;
            // Private: the deployment carries the agent's one-time token.
            match rmb
                .call_private(node_twin, "zos.deployment.deploy", &body, CALL_TIMEOUT)
                .await
            {
                Ok(_) => break,
                Err(RmbError::Remote { message, .. })
                    if tries < DEPLOY_TRIES && contract_not_seen_yet(&message) =>
                {
                    info!(machine = %name, tries, %message, "node does not see the contract yet");
                }
                Err(e) if e.is_retryable() && tries < DEPLOY_TRIES => {
                    // It may have arrived and only the answer was lost: sending it again would be
                    // refused as a duplicate, so ask first.
                    let arrived = rmb
                        .call(
                            node_twin,
                            "zos.deployment.get",
                            query.as_bytes(),
                            CALL_TIMEOUT,
                        )
                        .await
                        .is_ok();
                    if arrived {
                        break;
                    }
                    info!(machine = %name, tries, error = %e, "deploy not delivered; again");
                }
                Err(e) => {
                    return Err(prepare(
                        name,
                        format!("the node refused the VM: {e}"),
                        false,
                    ));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.status_poll) => {}
                () = cancel.cancelled() => return Err(ProvisionError::Cancelled { name: name.into() }),
            }
        }
        let deadline = tokio::time::Instant::now() + self.settings.boot_timeout;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.settings.status_poll) => {}
                () = cancel.cancelled() => return Err(ProvisionError::Cancelled { name: name.into() }),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ProvisionError::Start {
                    name: name.into(),
                    message: format!(
                        "the VM did not run within {:?}; its contract is cancelled",
                        self.settings.boot_timeout
                    ),
                    retryable: true,
                });
            }
            let answer = match rmb
                .call(
                    node_twin,
                    "zos.deployment.get",
                    query.as_bytes(),
                    CALL_TIMEOUT,
                )
                .await
            {
                Ok(answer) => answer,
                Err(e) if e.is_retryable() => {
                    warn!(machine = %name, error = %e, "cannot ask the node; asking again");
                    continue;
                }
                Err(e) => return Err(prepare(name, e.to_string(), false)),
            };
            let now: Deployment = serde_json::from_slice(&answer)
                .map_err(|e| prepare(name, format!("the node's answer: {e}"), true))?;
            match progress(&now) {
                Progress::Running(ip) => return Ok(ip),
                Progress::Waiting => {}
                Progress::Failed(message) => {
                    return Err(prepare(
                        name,
                        format!("the node could not make the VM: {message}"),
                        false,
                    ));
                }
            }
        }
    }
}

/// Whether a node's refusal of a deployment means it has not read the new contract from the chain
/// yet (zos: "failed to get deployment contract", "contract ... not found"), which passes on its own;
/// a hash mismatch, a foreign contract or a validation error does not.
fn contract_not_seen_yet(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("contract")
        && (message.contains("not found") || message.contains("failed to get"))
        && !message.contains("hash")
}

/// A WireGuard port the node does not use, from the range the SDKs pick in (a node claiming every
/// one gets the first, and refuses the deployment itself).
fn free_port(used: &[u16]) -> u16 {
    let start = rand::random_range(1024..32767u16);
    (start..32767)
        .chain(1024..start)
        .find(|port| !used.contains(port))
        .unwrap_or(1024)
}

fn prepare(name: &str, message: String, retryable: bool) -> ProvisionError {
    ProvisionError::Prepare {
        name: name.to_string(),
        message,
        retryable,
    }
}

/// Where a deployment stands, from its workloads' results.
#[derive(Debug, PartialEq)]
enum Progress {
    /// Every workload is up; the zmachine's private address.
    Running(String),
    Waiting,
    Failed(String),
}

fn progress(deployment: &Deployment) -> Progress {
    let mut ip = String::new();
    let mut waiting = false;
    for workload in &deployment.workloads {
        match workload.result.state {
            Some(state) if state.is_okay() => {
                if let Ok(result) = workload
                    .result
                    .data_as::<zeroci_tfgrid::deployment::ZMachineResult>()
                    && !result.ip.is_empty()
                {
                    ip = result.ip;
                }
            }
            Some(ResultState::Init) | None => waiting = true,
            Some(state) => {
                let message = if workload.result.message.is_empty() {
                    format!("{state:?}")
                } else {
                    workload.result.message.clone()
                };
                return Progress::Failed(format!("{}: {message}", workload.name));
            }
        }
    }
    if waiting || deployment.workloads.is_empty() {
        Progress::Waiting
    } else {
        Progress::Running(ip)
    }
}

#[async_trait]
impl Provisioner for TfgridProvisioner {
    fn kind(&self) -> &'static str {
        "tfgrid"
    }

    fn needs_prerequisites(&self) -> bool {
        true
    }

    async fn create(
        &self,
        request: &MachineRequest,
        ledger: &dyn MachineLedger,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, ProvisionError> {
        let name = request.name.clone();
        let image = request.image_name.as_deref().unwrap_or("default");
        let flist = self.settings.images.get(image).ok_or_else(|| {
            prepare(
                &name,
                format!("no flist for image {image:?}: add it to [provisioner.tfgrid] images"),
                false,
            )
        })?;
        let (twin, rmb) = self
            .peer()
            .await
            .map(|(twin, rmb)| (*twin, rmb.clone()))
            .map_err(|message| prepare(&name, message, true))?;
        let (cpus, memory_mb, disk_gb) = self.fit(&request.resources);
        let mut env: BTreeMap<String, String> = request
            .bootstrap
            .to_env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.insert("ZEROCI_MACHINE".into(), name.clone());
        let spec = VmSpec {
            name: name.clone(),
            flist: flist.clone(),
            entrypoint: self.settings.entrypoint.clone(),
            env,
            cpu: u8::try_from(cpus).unwrap_or(u8::MAX),
            memory_bytes: memory_mb << 20,
            rootfs_bytes: disk_gb << 30,
            project: format!("zeroci/{name}"),
            // Chosen per node, from the ports it does not use.
            wireguard_port: 0,
        };
        let query = NodeQuery {
            farm_id: self.settings.farm_id,
            memory_bytes: spec.memory_bytes,
            ssd_bytes: spec.rootfs_bytes,
            features: vec!["zmachine".into(), "network".into()],
            twin_id: twin,
            excluded: Vec::new(),
        };
        let nodes = self
            .proxy
            .nodes(&query)
            .await
            .map_err(|e| prepare(&name, e.to_string(), true))?;
        if nodes.is_empty() {
            return Err(ProvisionError::NoCapacity {
                kind: "tfgrid",
                message: format!(
                    "no node of farm {} is up with {memory_mb} MiB and {disk_gb} GiB free",
                    self.settings.farm_id
                ),
            });
        }
        let mut details = GridDetails {
            cpus,
            memory_mb,
            ..GridDetails::default()
        };
        let mut passed_over = Vec::new();
        for node in nodes.iter().take(NODES_PER_ATTEMPT) {
            if cancel.is_cancelled() {
                return Err(ProvisionError::Cancelled { name });
            }
            match self
                .try_node(
                    request,
                    ledger,
                    cancel,
                    &rmb,
                    twin,
                    node,
                    &spec,
                    &mut details,
                )
                .await
            {
                Ok(()) => {
                    info!(job_id = request.job_id, machine = %name, node = node.node_id, ip = %details.ip, "grid VM running");
                    return Ok(details.to_value());
                }
                Err(NodeFailure::PassOver(why)) => {
                    warn!(machine = %name, node = node.node_id, reason = %why, "node passed over");
                    passed_over.push(why);
                }
                Err(NodeFailure::Stop(error)) => return Err(error),
            }
        }
        Err(prepare(
            &name,
            format!("no node took the VM: {}", passed_over.join("; ")),
            true,
        ))
    }

    async fn limit(
        &self,
        machine: &MachineRecord,
        resources: &Resources,
    ) -> Result<Vec<String>, ProvisionError> {
        let Ok(details) = serde_json::from_value::<GridDetails>(machine.details.clone()) else {
            return Ok(Vec::new());
        };
        let (cpus, memory_mb, _) = self.fit(resources);
        if (cpus, memory_mb) == (details.cpus, details.memory_mb) {
            return Ok(Vec::new());
        }
        Ok(vec![format!(
            "a grid VM's size is fixed when it is made: this one has {} CPUs and {} MiB, not the {cpus} CPUs and {memory_mb} MiB asked",
            details.cpus, details.memory_mb
        )])
    }

    async fn destroy(&self, machine: &MachineRecord) -> Result<(), ProvisionError> {
        let Ok(details) = serde_json::from_value::<GridDetails>(machine.details.clone()) else {
            return Ok(());
        };
        let failed = |message: String| ProvisionError::Destroy {
            name: machine.name.clone(),
            message,
        };
        let contract_id = match details.contract_id {
            Some(id) => Some(id),
            // A crash (or a lost answer) between sending the contract and recording its id: the
            // chain knows it by node and hash, once its transaction is in a block.
            None if details.contract_sent && !details.deployment_hash.is_empty() => self
                .sent_contract(details.node_id, &details.deployment_hash)
                .await
                .map_err(|e| failed(e.to_string()))?,
            None => None,
        };
        if let Some(contract_id) = contract_id {
            self.chain
                .cancel_contract(&self.identity, contract_id)
                .await
                .map_err(|e| failed(format!("cancelling contract {contract_id}: {e}")))?;
            info!(machine = %machine.name, contract_id, "grid contract cancelled");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroci_tfgrid::deployment::{Workload, WorkloadData, WorkloadResult};

    fn with_states(states: &[(Option<ResultState>, &str)]) -> Deployment {
        let workloads = states
            .iter()
            .enumerate()
            .map(|(i, (state, message))| {
                let mut w = Workload::new(format!("w{i}"), WorkloadData::PublicIpV4);
                w.result = WorkloadResult {
                    state: *state,
                    message: message.to_string(),
                    data: serde_json::json!({"id": "x", "ip": "10.20.2.2"}),
                    ..Default::default()
                };
                w
            })
            .collect();
        Deployment::new(1, workloads)
    }

    #[test]
    fn only_a_contract_the_node_has_not_read_yet_is_worth_sending_again() {
        assert!(contract_not_seen_yet(
            "failed to get deployment contract: not found"
        ));
        assert!(contract_not_seen_yet("contract 12 not found"));
        assert!(!contract_not_seen_yet(
            "contract hash does not match deployment hash"
        ));
        assert!(!contract_not_seen_yet("twin id mismatch"));
    }

    #[test]
    fn a_free_port_is_one_the_node_does_not_use() {
        let used: Vec<u16> = (1024..32767).filter(|p| *p != 5000).collect();
        assert_eq!(free_port(&used), 5000);
        assert!((1024..32767).contains(&free_port(&[])));
    }

    #[test]
    fn a_deployment_runs_when_every_workload_is_ok_and_fails_on_the_first_error() {
        assert_eq!(
            progress(&with_states(&[
                (Some(ResultState::Ok), ""),
                (Some(ResultState::Init), "")
            ])),
            Progress::Waiting
        );
        assert_eq!(
            progress(&with_states(&[(Some(ResultState::Ok), ""), (None, "")])),
            Progress::Waiting
        );
        assert_eq!(
            progress(&with_states(&[
                (Some(ResultState::Ok), ""),
                (Some(ResultState::Ok), "")
            ])),
            Progress::Running("10.20.2.2".into())
        );
        assert_eq!(
            progress(&with_states(&[
                (Some(ResultState::Ok), ""),
                (Some(ResultState::Error), "no flist")
            ])),
            Progress::Failed("w1: no flist".into())
        );
        assert_eq!(progress(&with_states(&[])), Progress::Waiting);
    }
}
