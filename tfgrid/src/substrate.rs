//! [`Chain`] on the real TFChain: Substrate JSON-RPC over a WebSocket, through subxt's dynamic API.
//!
//! Nothing here is generated from a metadata file: the node's metadata is fetched when connecting
//! and kept current by subxt's runtime-upgrade watch, and calls, storage entries and events are
//! named by their pallet and field names (`SmartContractModule.create_node_contract`,
//! `TfgridModule.Twins`, ...). A runtime upgrade that keeps those names therefore needs no new
//! release; one that renames them fails loudly (as a refusal naming what is missing) instead of
//! encoding garbage.
//!
//! Connecting is lazy (the first call connects) and a connection that failed or stopped answering
//! is dropped, so the next call connects again. Every call is bounded: reads by
//! [`DEFAULT_CALL_TIMEOUT`], transactions by [`DEFAULT_TRANSACTION_TIMEOUT`].
//!
//! Transactions of this client are sent one at a time: the account nonce is only known once the
//! previous transaction reached the node's pool, so two in flight would race for the same nonce.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonrpsee::ws_client::{PingConfig, WsClientBuilder};
use subxt::backend::legacy::LegacyRpcMethods;
use subxt::backend::rpc::RpcClient;
use subxt::blocks::ExtrinsicEvents;
use subxt::config::DefaultExtrinsicParamsBuilder;
use subxt::dynamic::{At as _, DecodedValue, Value};
use subxt::error::{DispatchError, RpcError, TransactionError};
use subxt::ext::scale_value::{Composite, ValueDef};
use subxt::tx::{DynamicPayload, Signer, TxStatus};
use subxt::utils::{AccountId32, H256, MultiSignature};
use subxt::{OnlineClient, PolkadotConfig};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::chain::{
    Chain, ChainError, ContractState, MAX_DEPLOYMENT_DATA, NewNodeContract, NodeContract, Twin,
};
use crate::identity::{Identity, KeyType};

/// Bound on one read (storage query), connecting included.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one transaction: connecting, submitting, and waiting until it is in a block.
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// WebSocket pings keep NAT/proxy state alive and find a dead peer before a call waits on it.
const PING_INTERVAL: Duration = Duration::from_secs(20);

/// TFChain's `Address` is `MultiAddress<AccountId32, ()>` and its signature `MultiSignature`,
/// with the stock signed extensions: exactly subxt's Polkadot configuration.
type TfchainConfig = PolkadotConfig;

const TFGRID: &str = "TfgridModule";
const SMART_CONTRACT: &str = "SmartContractModule";

/// The chain URL is not a WebSocket URL.
#[derive(Debug, thiserror::Error)]
#[error("the TFChain URL {url:?} must start with ws:// or wss://")]
pub struct InvalidChainUrl {
    pub url: String,
}

/// TFChain over its WebSocket JSON-RPC (e.g. `wss://tfchain.grid.tf/ws`).
pub struct SubstrateChain {
    url: String,
    call_timeout: Duration,
    transaction_timeout: Duration,
    connection: Mutex<ConnectionSlot>,
    /// Held for the whole of a transaction, from reading the nonce until it is in a block. Waiting
    /// for it is not part of a transaction's timeout; each holder is bounded by its own.
    submitting: Mutex<()>,
}

impl std::fmt::Debug for SubstrateChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubstrateChain")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct ConnectionSlot {
    current: Option<Connection>,
    /// Tells connections apart, so a call that failed on an old connection does not drop the new
    /// one another call has made since.
    generation: u64,
}

#[derive(Clone)]
struct Connection {
    generation: u64,
    client: OnlineClient<TfchainConfig>,
    rpc: LegacyRpcMethods<TfchainConfig>,
    /// Applies runtime upgrades to `client`'s metadata; stops with the last clone.
    _runtime_upgrades: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SubstrateChain {
    /// A client of the node at `url`; nothing is connected until the first call.
    pub fn new(url: &str) -> Result<SubstrateChain, InvalidChainUrl> {
        let url = url.trim();
        let rest = url
            .strip_prefix("wss://")
            .or_else(|| url.strip_prefix("ws://"));
        if rest.is_none_or(str::is_empty) {
            return Err(InvalidChainUrl { url: url.into() });
        }
        Ok(SubstrateChain {
            url: url.into(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            transaction_timeout: DEFAULT_TRANSACTION_TIMEOUT,
            connection: Mutex::new(ConnectionSlot::default()),
            submitting: Mutex::new(()),
        })
    }

    /// Other bounds than [`DEFAULT_CALL_TIMEOUT`] and [`DEFAULT_TRANSACTION_TIMEOUT`].
    pub fn with_timeouts(mut self, call: Duration, transaction: Duration) -> SubstrateChain {
        self.call_timeout = call;
        self.transaction_timeout = transaction;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The live connection, made now if there is none.
    async fn connection(&self) -> Result<Connection, Failure> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = &slot.current {
            return Ok(connection.clone());
        }
        let (client, rpc) = connect(&self.url, self.call_timeout).await?;
        let updater = client.updater();
        let url = self.url.clone();
        let upgrades = tokio::spawn(async move {
            if let Err(e) = updater.perform_runtime_updates().await {
                // The next call that fails on this connection replaces it (and this watch).
                debug!(url, error = %e, "TFChain runtime upgrade watch ended");
            }
        });
        slot.generation += 1;
        let connection = Connection {
            generation: slot.generation,
            client,
            rpc,
            _runtime_upgrades: Arc::new(AbortOnDrop(upgrades.abort_handle())),
        };
        slot.current = Some(connection.clone());
        Ok(connection)
    }

    /// Drops connection `generation` if it is still the current one.
    async fn forget(&self, generation: u64) {
        let mut slot = self.connection.lock().await;
        if slot
            .current
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            slot.current = None;
        }
    }

    /// Runs `operation` on the connection within `limit` (connecting included); a connection that
    /// failed or did not answer in time is dropped so the next call starts afresh.
    async fn with_connection<R, F, Fut>(&self, limit: Duration, operation: F) -> Result<R, Failure>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<R, Failure>>,
    {
        let started = Instant::now();
        let connection = match tokio::time::timeout(limit, self.connection()).await {
            Ok(connection) => connection?,
            Err(_) => {
                return Err(Failure::Connection(format!(
                    "no connection to {} within {limit:?}",
                    self.url
                )));
            }
        };
        let generation = connection.generation;
        let remaining = limit.saturating_sub(started.elapsed());
        let outcome = match tokio::time::timeout(remaining, operation(connection)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Connection(format!(
                "{} did not answer within {limit:?}",
                self.url
            ))),
        };
        if let Err(Failure::Connection(reason)) = &outcome {
            warn!(url = %self.url, reason, "dropping the TFChain connection");
            self.forget(generation).await;
        }
        outcome
    }

    async fn read(
        &self,
        call: &'static str,
        pallet: &'static str,
        entry: &'static str,
        keys: Vec<Value>,
    ) -> Result<Option<DecodedValue>, ChainError> {
        self.with_connection(self.call_timeout, |connection| async move {
            let at = best_block(&connection).await?;
            fetch(&connection, at, pallet, entry, keys).await
        })
        .await
        .map_err(|failure| failure.into_chain_error(call))
    }
}

/// Opens the WebSocket and reads what subxt needs of the chain (genesis hash, runtime version,
/// metadata).
async fn connect(
    url: &str,
    limit: Duration,
) -> Result<(OnlineClient<TfchainConfig>, LegacyRpcMethods<TfchainConfig>), Failure> {
    let socket = WsClientBuilder::new()
        .with_custom_cert_store(crate::tls::client_config())
        .connection_timeout(limit)
        .request_timeout(limit)
        .enable_ws_ping(
            PingConfig::new()
                .ping_interval(PING_INTERVAL)
                .inactive_limit(PING_INTERVAL * 3),
        )
        .build(url)
        .await
        .map_err(|e| Failure::Connection(format!("cannot connect to {url}: {e}")))?;
    let rpc = RpcClient::new(socket);
    let client = OnlineClient::<TfchainConfig>::from_rpc_client(rpc.clone())
        .await
        .map_err(Failure::from)?;
    Ok((client, LegacyRpcMethods::new(rpc)))
}

/// The node's best block. Reads are made there rather than at the finalized block (subxt's
/// default) because transactions are taken as done once in a best block: a contract just created
/// must be visible to the next read, or a crash right after creating it would leave it unfound.
async fn best_block(connection: &Connection) -> Result<H256, Failure> {
    connection
        .rpc
        .chain_get_block_hash(None)
        .await
        .map_err(|e| Failure::from(subxt::Error::from(e)))?
        .ok_or_else(|| Failure::Connection("the node reports no best block".into()))
}

async fn fetch(
    connection: &Connection,
    at: H256,
    pallet: &'static str,
    entry: &'static str,
    keys: Vec<Value>,
) -> Result<Option<DecodedValue>, Failure> {
    let address = subxt::dynamic::storage(pallet, entry, keys);
    let stored = connection
        .client
        .storage()
        .at(at)
        .fetch(&address)
        .await
        .map_err(Failure::from)?;
    stored
        .map(|thunk| thunk.to_value())
        .transpose()
        .map_err(|e| Failure::Rejected(format!("cannot decode {pallet}.{entry}: {e}")))
}

/// A transaction in a block, and what it did.
struct Included {
    block: H256,
    /// `None`: in the block and not refused as far as could be told, but its events could not be
    /// read; what it did is then read from storage at `block`.
    events: Option<ExtrinsicEvents<TfchainConfig>>,
}

/// Signs `payload` as `signer`, submits it and waits until it is in a block; its events, or the
/// pallet error it failed with.
async fn submit(
    connection: &Connection,
    signer: &Identity,
    payload: &DynamicPayload,
) -> Result<Included, Failure> {
    let signer = TwinSigner::new(signer);
    let account = <TwinSigner<'_> as Signer<TfchainConfig>>::account_id(&signer);
    // The pool's view (best block plus pending transactions): subxt's default, the nonce at the
    // finalized block, would repeat the nonce of our previous transaction until it is finalized.
    let nonce = connection
        .rpc
        .system_account_next_index(&account)
        .await
        .map_err(|e| Failure::from(subxt::Error::from(e)))?;
    // Immortal like the Go client: the nonce already keeps it from being replayed, and a mortal
    // era would need one more round trip for the block it starts at.
    let params = DefaultExtrinsicParamsBuilder::<TfchainConfig>::new()
        .immortal()
        .nonce(nonce)
        .build();
    let mut progress = connection
        .client
        .tx()
        .sign_and_submit_then_watch(payload, &signer, params)
        .await
        .map_err(Failure::from)?;
    while let Some(status) = progress.next().await {
        match status.map_err(Failure::from)? {
            TxStatus::InBestBlock(in_block) | TxStatus::InFinalizedBlock(in_block) => {
                let block = in_block.block_hash();
                return match in_block.wait_for_success().await {
                    Ok(events) => Ok(Included {
                        block,
                        events: Some(events),
                    }),
                    // `ExtrinsicFailed`: the pallet's refusal.
                    Err(error @ subxt::Error::Runtime(_)) => Err(Failure::from(error)),
                    // Done, but reporting it as failed would hide a contract that exists.
                    Err(error) => {
                        warn!(%error, "transaction in a block, its events unreadable");
                        Ok(Included {
                            block,
                            events: None,
                        })
                    }
                };
            }
            TxStatus::Validated | TxStatus::Broadcasted | TxStatus::NoLongerInBestBlock => {}
            TxStatus::Invalid { message } => return Err(invalid_transaction(&message)),
            TxStatus::Dropped { message } => {
                return Err(Failure::NotNow(format!(
                    "the node dropped the transaction: {message}"
                )));
            }
            TxStatus::Error { message } => {
                return Err(Failure::Connection(format!(
                    "the node failed to follow the transaction: {message}"
                )));
            }
        }
    }
    Err(Failure::Connection(
        "the node stopped reporting the transaction's progress".into(),
    ))
}

#[async_trait]
impl Chain for SubstrateChain {
    async fn twin_id_of(&self, account: &[u8; 32]) -> Result<Option<u32>, ChainError> {
        const CALL: &str = "TfgridModule.TwinIdByAccountID";
        let Some(value) = self
            .read(
                CALL,
                TFGRID,
                "TwinIdByAccountID",
                vec![Value::from_bytes(account)],
            )
            .await?
        else {
            return Ok(None);
        };
        as_u32(&value).map(Some).ok_or_else(|| ChainError::Refused {
            call: CALL,
            reason: format!("expected a twin id, found {value}"),
        })
    }

    async fn twin(&self, id: u32) -> Result<Option<Twin>, ChainError> {
        const CALL: &str = "TfgridModule.Twins";
        let Some(value) = self
            .read(CALL, TFGRID, "Twins", vec![Value::u128(id.into())])
            .await?
        else {
            return Ok(None);
        };
        decode_twin(id, &value)
            .map(Some)
            .map_err(|reason| ChainError::Refused { call: CALL, reason })
    }

    async fn create_node_contract(
        &self,
        signer: &Identity,
        contract: &NewNodeContract,
    ) -> Result<u64, ChainError> {
        const CALL: &str = "SmartContractModule.create_node_contract";
        let refused = |reason: String| ChainError::Refused { call: CALL, reason };
        let hash = deployment_hash_bytes(&contract.deployment_hash).map_err(refused)?;
        if contract.deployment_data.len() > MAX_DEPLOYMENT_DATA {
            return Err(refused(format!(
                "deployment data of {} bytes is over the chain's limit of {MAX_DEPLOYMENT_DATA}",
                contract.deployment_data.len()
            )));
        }
        let payload = create_node_contract_tx(contract, &hash);
        let _turn = self.submitting.lock().await;
        self.with_connection(self.transaction_timeout, |connection| async move {
            let included = submit(&connection, signer, &payload).await?;
            if let Some(id) = included.events.as_ref().and_then(created_contract_id) {
                return Ok(id);
            }
            // No event we could read: the chain's index of live contracts knows it too.
            let keys = contract_by_hash_keys(contract.node_id, &hash);
            let stored = fetch(
                &connection,
                included.block,
                SMART_CONTRACT,
                "ContractIDByNodeIDAndHash",
                keys,
            )
            .await?;
            stored
                .as_ref()
                .and_then(as_u64)
                .filter(|id| *id != 0)
                .ok_or_else(|| {
                    Failure::Rejected(
                        "the contract was created but neither its event nor the index names its id"
                            .into(),
                    )
                })
        })
        .await
        .map_err(|failure| failure.into_chain_error(CALL))
    }

    async fn contract_id_by_node_and_hash(
        &self,
        node_id: u32,
        deployment_hash: &str,
    ) -> Result<Option<u64>, ChainError> {
        const CALL: &str = "SmartContractModule.ContractIDByNodeIDAndHash";
        let hash = deployment_hash_bytes(deployment_hash)
            .map_err(|reason| ChainError::Refused { call: CALL, reason })?;
        let Some(value) = self
            .read(
                CALL,
                SMART_CONTRACT,
                "ContractIDByNodeIDAndHash",
                contract_by_hash_keys(node_id, &hash),
            )
            .await?
        else {
            return Ok(None);
        };
        // A value query: "none" reads as 0 on some nodes instead of as absent.
        match as_u64(&value) {
            Some(0) => Ok(None),
            Some(id) => Ok(Some(id)),
            None => Err(ChainError::Refused {
                call: CALL,
                reason: format!("expected a contract id, found {value}"),
            }),
        }
    }

    async fn node_contract(&self, contract_id: u64) -> Result<Option<NodeContract>, ChainError> {
        const CALL: &str = "SmartContractModule.Contracts";
        let Some(value) = self
            .read(
                CALL,
                SMART_CONTRACT,
                "Contracts",
                vec![Value::u128(contract_id.into())],
            )
            .await?
        else {
            return Ok(None);
        };
        decode_node_contract(&value).map_err(|reason| ChainError::Refused { call: CALL, reason })
    }

    async fn cancel_contract(&self, signer: &Identity, contract_id: u64) -> Result<(), ChainError> {
        const CALL: &str = "SmartContractModule.cancel_contract";
        let payload = cancel_contract_tx(contract_id);
        let _turn = self.submitting.lock().await;
        let outcome = self
            .with_connection(self.transaction_timeout, |connection| async move {
                let included = submit(&connection, signer, &payload).await?;
                if included.events.is_some() {
                    return Ok(());
                }
                // Events unreadable: gone or deleted at that block is what was asked.
                let key = vec![Value::u128(contract_id.into())];
                let stored = fetch(
                    &connection,
                    included.block,
                    SMART_CONTRACT,
                    "Contracts",
                    key,
                )
                .await?;
                let state = stored.as_ref().and_then(|c| variant_name(c.at("state")));
                match state {
                    None | Some("Deleted") => Ok(()),
                    Some(state) => Err(Failure::Rejected(format!(
                        "cancelling was included in a block but contract {contract_id} is {state}"
                    ))),
                }
            })
            .await;
        cancel_outcome(outcome).map_err(|failure| failure.into_chain_error(CALL))
    }
}

/// Cancelling what is gone already is done.
fn cancel_outcome(outcome: Result<(), Failure>) -> Result<(), Failure> {
    match outcome {
        Err(Failure::Module { pallet, error })
            if pallet == SMART_CONTRACT && error == "ContractNotExists" =>
        {
            Ok(())
        }
        other => other,
    }
}

/// What went wrong, before it is phrased for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// No connection, a broken one, or no answer in time: drop the connection; retrying may work.
    Connection(String),
    /// The node took the request but cannot act on it now (a nonce race, a full pool, a
    /// temporary ban): retrying later may work, on the same connection.
    NotNow(String),
    /// A pallet refused the call it dispatched (`ExtrinsicFailed` with a module error).
    Module { pallet: String, error: String },
    /// Any other answer that trying again will not change.
    Rejected(String),
}

impl Failure {
    fn into_chain_error(self, call: &'static str) -> ChainError {
        match self {
            Failure::Connection(reason) | Failure::NotNow(reason) => {
                ChainError::Unreachable(reason)
            }
            Failure::Module { error, .. } => ChainError::Refused {
                call,
                reason: error,
            },
            Failure::Rejected(reason) => ChainError::Refused { call, reason },
        }
    }
}

impl From<subxt::Error> for Failure {
    fn from(error: subxt::Error) -> Failure {
        match error {
            subxt::Error::Rpc(RpcError::ClientError(subxt_rpcs::Error::User(user))) => rpc_refusal(
                user.code,
                &user.message,
                user.data.as_deref().map(|d| d.get()),
            ),
            subxt::Error::Rpc(RpcError::ClientError(
                subxt_rpcs::Error::Deserialization(_) | subxt_rpcs::Error::Decode(_),
            )) => Failure::Rejected(error.to_string()),
            subxt::Error::Rpc(_) | subxt::Error::Io(_) | subxt::Error::Block(_) => {
                Failure::Connection(error.to_string())
            }
            subxt::Error::Runtime(DispatchError::Module(module)) => match module.details() {
                Ok(details) => Failure::Module {
                    pallet: details.pallet.name().to_owned(),
                    error: details.variant.name.clone(),
                },
                Err(_) => Failure::Rejected(module.to_string()),
            },
            subxt::Error::Runtime(dispatch) => Failure::Rejected(dispatch.to_string()),
            subxt::Error::Transaction(TransactionError::Invalid(message)) => {
                invalid_transaction(&message)
            }
            subxt::Error::Transaction(TransactionError::Dropped(message)) => {
                Failure::NotNow(format!("the node dropped the transaction: {message}"))
            }
            subxt::Error::Transaction(_) => Failure::Connection(error.to_string()),
            // Metadata (a pallet, call or field the runtime does not have), encoding and decoding:
            // the chain is not what these calls were written for.
            other => Failure::Rejected(other.to_string()),
        }
    }
}

/// The transaction pool's JSON-RPC errors (`sc-rpc-api` `author` codes): 1010 invalid, 1011
/// unknown validity, 1012 temporarily banned, 1013 already imported, 1014 priority too low
/// (same nonce in the pool), 1016 immediately dropped. Other codes are the node refusing the
/// request itself.
fn rpc_refusal(code: i32, message: &str, data: Option<&str>) -> Failure {
    let detail = match data {
        Some(data) => format!("{message}: {}", data.trim_matches('"')),
        None => message.to_owned(),
    };
    match code {
        1010 => invalid_transaction(&detail),
        1011..=1016 => Failure::NotNow(detail),
        _ => Failure::Rejected(format!("the node answered {code}: {detail}")),
    }
}

/// An invalid transaction: mostly final (no funds, a call the runtime rejects), except a nonce
/// that another transaction took meanwhile, and a bad signature, which is what signing with
/// metadata from before a runtime upgrade (an old spec version) looks like.
fn invalid_transaction(message: &str) -> Failure {
    let lower = message.to_ascii_lowercase();
    if lower.contains("bad signature") || lower.contains("badproof") {
        Failure::Connection(format!(
            "transaction signature refused, refreshing the runtime: {message}"
        ))
    } else if ["outdated", "stale", "future", "ancient birth block"]
        .iter()
        .any(|word| lower.contains(word))
    {
        Failure::NotNow(format!("transaction not valid now: {message}"))
    } else if lower.contains("inability to pay") || lower.contains("payment") {
        Failure::Rejected(format!("the account cannot pay the fees: {message}"))
    } else {
        Failure::Rejected(format!("invalid transaction: {message}"))
    }
}

mod values;
pub use values::TwinSigner;
use values::*;

#[cfg(test)]
mod tests;
