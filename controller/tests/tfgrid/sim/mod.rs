//! A simulated ThreeFold Grid on loopback, so the `tfgrid` provisioner's real client code runs
//! against servers that check what zos and the relay check:
//! - a grid proxy (`GET /nodes` with the filters the client sends), over real HTTP;
//! - an RMB relay WebSocket: a client logs in with a relay token verified against its twin's key on
//!   the chain; every envelope's signature is checked; replies are signed by the node's twin and
//!   encrypted for the caller's e2e key;
//! - zos nodes behind it: `zos.deployment.deploy` checks the sender twin, the deployment's signatures
//!   and that a live contract of this node holds its hash, then boots each zmachine by starting the
//!   real agent from the zmachine's environment; a cancelled contract stops it;
//! - [`chain::SimChain`], TFChain's rules in memory.

pub mod chain;
mod node;
mod proxy;
mod relay;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use zeroci_tfgrid::identity::{Identity, KeyType};

pub use chain::SimChain;
pub use node::{Behaviour, VmBoot};

/// What a node did with one zmachine.
#[derive(Debug, Clone)]
pub struct Boot {
    pub node_id: u32,
    pub contract_id: u64,
    pub flist: String,
    pub env: BTreeMap<String, String>,
}

/// The grid; dropping it stops every booted machine.
pub struct SimGrid {
    chain: Arc<SimChain>,
    nodes: Arc<node::Nodes>,
    proxy_url: String,
    relay_url: String,
    _servers: Vec<tokio::task::AbortHandle>,
}

impl SimGrid {
    /// Starts the proxy, the relay and one node per id in farm 1; zmachines boot as VMs with `vm`,
    /// else they run `agent_binary` with their environment, in directories under `work_root`.
    pub async fn start(
        node_ids: &[u32],
        agent_binary: PathBuf,
        work_root: PathBuf,
        vm: Option<node::VmBoot>,
    ) -> SimGrid {
        let chain = Arc::new(SimChain::default());
        let mut nodes = BTreeMap::new();
        for &node_id in node_ids {
            let identity = Identity::from_seed(&[node_id as u8; 32], KeyType::Sr25519).unwrap();
            let twin = chain.add_twin(
                identity.public_key(),
                Some("relay.sim".into()),
                Some(identity.e2e_public_key().to_vec()),
            );
            chain.add_node(node_id, twin);
            nodes.insert(twin, node::Node::new(node_id, twin, identity));
        }
        let nodes = Arc::new(node::Nodes {
            by_twin: nodes,
            chain: chain.clone(),
            agent_binary,
            work_root,
            boots: Mutex::default(),
            running: Mutex::default(),
            vm,
        });
        let (proxy_url, proxy) = proxy::serve(nodes.clone()).await;
        let (relay_url, relay) = relay::serve(nodes.clone()).await;
        let watcher = tokio::spawn(node::stop_cancelled(nodes.clone())).abort_handle();
        SimGrid {
            chain,
            nodes,
            proxy_url,
            relay_url,
            _servers: vec![proxy, relay, watcher],
        }
    }

    pub fn chain(&self) -> Arc<SimChain> {
        self.chain.clone()
    }

    pub fn proxy_url(&self) -> String {
        self.proxy_url.clone()
    }

    pub fn relay_url(&self) -> String {
        self.relay_url.clone()
    }

    pub fn set_behaviour(&self, node_id: u32, behaviour: Behaviour) {
        for node in self.nodes.by_twin.values() {
            if node.node_id == node_id {
                *node.behaviour.lock().unwrap() = behaviour.clone();
            }
        }
    }

    /// Every zmachine booted so far.
    pub fn boots(&self) -> Vec<Boot> {
        self.nodes.boots.lock().unwrap().clone()
    }

    /// How many booted machines still run.
    pub fn running(&self) -> usize {
        self.nodes.running.lock().unwrap().len()
    }
}

impl Drop for SimGrid {
    fn drop(&mut self) {
        let machines: Vec<_> = std::mem::take(&mut *self.nodes.running.lock().unwrap())
            .into_values()
            .collect();
        for mut machine in machines {
            machine.kill(&self.nodes);
        }
        for server in &self._servers {
            server.abort();
        }
    }
}
