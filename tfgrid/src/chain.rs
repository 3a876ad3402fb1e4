//! TFChain, as far as deploying a VM needs it: twins (whose keys verify signatures and whose relay
//! routes messages) and node contracts (what a node checks a deployment against, and what cancelling
//! removes). A trait, because the real chain is reached over Substrate RPC and tests use a chain held
//! in memory that enforces the same rules.

use async_trait::async_trait;

use crate::identity::Identity;

/// A twin as the chain stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Twin {
    pub id: u32,
    /// The account's public key: what the twin's signatures verify against.
    pub account: [u8; 32],
    /// The relay domain(s) the twin is reached through (`relay.grid.tf`, several joined with `_`).
    pub relay: Option<String>,
    /// The compressed secp256k1 key messages to the twin are encrypted for; `None`: plain text.
    pub e2e_key: Option<Vec<u8>>,
}

/// Where a contract stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractState {
    Created,
    Deleted,
    /// Out of funds: workloads are paused until the grace period ends.
    GracePeriod,
}

/// A node contract as the chain stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContract {
    pub contract_id: u64,
    pub twin_id: u32,
    pub node_id: u32,
    /// The deployment's challenge hash as 32 lowercase hex characters.
    pub deployment_hash: String,
    /// The deployment's metadata, at most [`MAX_DEPLOYMENT_DATA`] bytes.
    pub deployment_data: Vec<u8>,
    pub public_ips: u32,
    pub state: ContractState,
}

/// Longest `deployment_data` the chain accepts.
pub const MAX_DEPLOYMENT_DATA: usize = 512;

/// What creating a node contract asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNodeContract {
    pub node_id: u32,
    /// [`crate::Deployment::contract_hash_hex`]: 32 lowercase hex characters.
    pub deployment_hash: String,
    pub deployment_data: Vec<u8>,
    pub public_ips: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The chain refused the call (a module error such as `ContractIsNotUnique`); trying the same
    /// again will fail the same way.
    #[error("the chain refused {call}: {reason}")]
    Refused { call: &'static str, reason: String },
    /// The chain could not be reached or did not answer in time; trying again may work.
    #[error("cannot reach the chain: {0}")]
    Unreachable(String),
}

impl ChainError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ChainError::Unreachable(_))
    }
}

#[async_trait]
pub trait Chain: Send + Sync + 'static {
    /// The twin of the account `account`, if it has one.
    async fn twin_id_of(&self, account: &[u8; 32]) -> Result<Option<u32>, ChainError>;
    async fn twin(&self, id: u32) -> Result<Option<Twin>, ChainError>;
    /// Creates a node contract signed by `signer`; its id. Refused when a live contract already has
    /// the same node and hash, when the signer has no twin, or the node does not exist.
    async fn create_node_contract(
        &self,
        signer: &Identity,
        contract: &NewNodeContract,
    ) -> Result<u64, ChainError>;
    /// The live contract of `node_id` with `deployment_hash`, if any: how a contract whose creation
    /// was not seen to finish (a crash) is found.
    async fn contract_id_by_node_and_hash(
        &self,
        node_id: u32,
        deployment_hash: &str,
    ) -> Result<Option<u64>, ChainError>;
    async fn node_contract(&self, contract_id: u64) -> Result<Option<NodeContract>, ChainError>;
    /// Cancels a contract of `signer`'s twin; a contract that does not exist (or is cancelled
    /// already) is no error.
    async fn cancel_contract(&self, signer: &Identity, contract_id: u64) -> Result<(), ChainError>;
}
