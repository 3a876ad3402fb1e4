//! TFChain in memory, with its rules: a signer needs a twin, a node must exist, a live contract's
//! (node, hash) is unique, `deployment_data` is at most 512 bytes, a cancel of what is gone is fine.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::broadcast;
use zeroci_tfgrid::chain::{
    Chain, ChainError, ContractState, MAX_DEPLOYMENT_DATA, NewNodeContract, NodeContract, Twin,
};
use zeroci_tfgrid::identity::Identity;

#[derive(Default)]
struct State {
    twins: BTreeMap<u32, Twin>,
    /// Node id → its twin.
    nodes: BTreeMap<u32, u32>,
    contracts: BTreeMap<u64, NodeContract>,
}

pub struct SimChain {
    state: Mutex<State>,
    cancelled: broadcast::Sender<u64>,
}

impl Default for SimChain {
    fn default() -> Self {
        SimChain {
            state: Mutex::default(),
            cancelled: broadcast::channel(64).0,
        }
    }
}

impl SimChain {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn add_twin(
        &self,
        account: [u8; 32],
        relay: Option<String>,
        e2e_key: Option<Vec<u8>>,
    ) -> u32 {
        let mut state = self.state();
        let id = state.twins.len() as u32 + 1;
        state.twins.insert(
            id,
            Twin {
                id,
                account,
                relay,
                e2e_key,
            },
        );
        id
    }

    pub fn add_node(&self, node_id: u32, twin_id: u32) {
        self.state().nodes.insert(node_id, twin_id);
    }

    pub fn contracts(&self) -> Vec<NodeContract> {
        self.state().contracts.values().cloned().collect()
    }

    /// Contract ids as they are cancelled.
    pub fn cancellations(&self) -> broadcast::Receiver<u64> {
        self.cancelled.subscribe()
    }

    fn twin_of(&self, signer: &Identity) -> Option<u32> {
        let account = signer.public_key();
        self.state()
            .twins
            .values()
            .find(|t| t.account == account)
            .map(|t| t.id)
    }
}

fn refused(call: &'static str, reason: &str) -> ChainError {
    ChainError::Refused {
        call,
        reason: reason.into(),
    }
}

#[async_trait]
impl Chain for SimChain {
    async fn twin_id_of(&self, account: &[u8; 32]) -> Result<Option<u32>, ChainError> {
        Ok(self
            .state()
            .twins
            .values()
            .find(|t| &t.account == account)
            .map(|t| t.id))
    }

    async fn twin(&self, id: u32) -> Result<Option<Twin>, ChainError> {
        Ok(self.state().twins.get(&id).cloned())
    }

    async fn create_node_contract(
        &self,
        signer: &Identity,
        contract: &NewNodeContract,
    ) -> Result<u64, ChainError> {
        const CALL: &str = "create_node_contract";
        let twin_id = self
            .twin_of(signer)
            .ok_or_else(|| refused(CALL, "TwinNotExists"))?;
        let mut state = self.state();
        if !state.nodes.contains_key(&contract.node_id) {
            return Err(refused(CALL, "NodeNotExists"));
        }
        if contract.deployment_data.len() > MAX_DEPLOYMENT_DATA {
            return Err(refused(CALL, "DeploymentDataTooLong"));
        }
        let taken = state.contracts.values().any(|c| {
            c.state != ContractState::Deleted
                && c.node_id == contract.node_id
                && c.deployment_hash == contract.deployment_hash
        });
        if taken {
            return Err(refused(CALL, "ContractIsNotUnique"));
        }
        let contract_id = state.contracts.len() as u64 + 1;
        state.contracts.insert(
            contract_id,
            NodeContract {
                contract_id,
                twin_id,
                node_id: contract.node_id,
                deployment_hash: contract.deployment_hash.clone(),
                deployment_data: contract.deployment_data.clone(),
                public_ips: contract.public_ips,
                state: ContractState::Created,
            },
        );
        Ok(contract_id)
    }

    async fn contract_id_by_node_and_hash(
        &self,
        node_id: u32,
        deployment_hash: &str,
    ) -> Result<Option<u64>, ChainError> {
        Ok(self
            .state()
            .contracts
            .values()
            .find(|c| {
                c.state != ContractState::Deleted
                    && c.node_id == node_id
                    && c.deployment_hash == deployment_hash
            })
            .map(|c| c.contract_id))
    }

    async fn node_contract(&self, contract_id: u64) -> Result<Option<NodeContract>, ChainError> {
        Ok(self.state().contracts.get(&contract_id).cloned())
    }

    async fn cancel_contract(&self, signer: &Identity, contract_id: u64) -> Result<(), ChainError> {
        let twin_id = self
            .twin_of(signer)
            .ok_or_else(|| refused("cancel_contract", "TwinNotExists"))?;
        let mut state = self.state();
        let Some(contract) = state.contracts.get_mut(&contract_id) else {
            return Ok(());
        };
        if contract.twin_id != twin_id {
            return Err(refused(
                "cancel_contract",
                "TwinNotAuthorizedToCancelContract",
            ));
        }
        if contract.state != ContractState::Deleted {
            contract.state = ContractState::Deleted;
            let _ = self.cancelled.send(contract_id);
        }
        Ok(())
    }
}
