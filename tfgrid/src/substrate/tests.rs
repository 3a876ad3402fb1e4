//! Everything that does not need a node: signing, the hash form, the call values and their SCALE
//! encoding, decoding stored values, error classification, and connection behaviour against local
//! sockets that are closed or never answer.
//!
//! The SCALE tests use types shaped like TFChain's (field names and nesting from the pallets'
//! `types.rs`) registered in a `scale-info` registry: subxt encodes and decodes against the node's
//! metadata the same way, through the same `scale-value` code.

use std::time::{Duration, Instant};

use parity_scale_codec::Encode;
use scale_info::{PortableRegistry, Registry, TypeInfo};
use subxt::ext::scale_value::{self, Composite, Value};
use tokio::net::TcpListener;

use super::*;
use crate::identity::verify_signature;

fn identity(key_type: KeyType) -> Identity {
    Identity::from_seed(&[7u8; 32], key_type).expect("identity from a fixed seed")
}

// ---- Shapes of TFChain's types (pallet-tfgrid / pallet-smart-contract `types.rs`) ----

/// `BoundedVec<u8, _>`: its `TypeInfo` is a composite with one unnamed `Vec<u8>` field.
#[derive(Encode, TypeInfo, Clone)]
struct BoundedBytes(Vec<u8>);

/// `AccountId32`: a composite around `[u8; 32]`.
#[derive(Encode, TypeInfo)]
struct AccountId([u8; 32]);

#[derive(Encode, TypeInfo)]
struct EntityProof {
    entity_id: u32,
    signature: BoundedBytes,
}

#[derive(Encode, TypeInfo)]
struct ChainTwin {
    id: u32,
    account_id: AccountId,
    relay: Option<BoundedBytes>,
    entities: Vec<EntityProof>,
    pk: Option<BoundedBytes>,
}

/// A twin from a runtime that had no `pk` yet (nor `entities`): still a twin.
#[derive(Encode, TypeInfo)]
struct OlderChainTwin {
    id: u32,
    account_id: AccountId,
    relay: Option<BoundedBytes>,
}

#[derive(Encode, TypeInfo)]
enum Cause {
    CanceledByUser,
    #[allow(dead_code)]
    OutOfFunds,
}

#[derive(Encode, TypeInfo)]
enum ChainContractState {
    Created,
    Deleted(Cause),
    GracePeriod(u32),
}

#[derive(Encode, TypeInfo)]
struct PublicIp {
    ip: BoundedBytes,
    gateway: BoundedBytes,
    contract_id: u64,
}

#[derive(Encode, TypeInfo)]
struct ChainNodeContract {
    node_id: u32,
    deployment_hash: [u8; 32],
    deployment_data: BoundedBytes,
    public_ips: u32,
    public_ips_list: Vec<PublicIp>,
}

#[derive(Encode, TypeInfo)]
struct NameContract {
    name: BoundedBytes,
}

// The variant names are the chain's: they are what is being decoded.
#[allow(clippy::enum_variant_names)]
#[derive(Encode, TypeInfo)]
enum ContractData {
    NodeContract(ChainNodeContract),
    NameContract(NameContract),
    #[allow(dead_code)]
    RentContract {
        node_id: u32,
    },
}

#[derive(Encode, TypeInfo)]
struct ChainContract {
    version: u32,
    state: ChainContractState,
    contract_id: u64,
    twin_id: u32,
    contract_type: ContractData,
    solution_provider_id: Option<u64>,
}

/// The arguments of `create_node_contract` as the runtime declares them.
#[derive(Encode, TypeInfo)]
struct CreateNodeContractArgs {
    node_id: u32,
    deployment_hash: [u8; 32],
    deployment_data: BoundedBytes,
    public_ips: u32,
    solution_provider_id: Option<u64>,
}

#[derive(Encode, TypeInfo)]
struct CancelContractArgs {
    contract_id: u64,
}

/// `T` in a registry of its own, and its id there.
fn registry_of<T: TypeInfo + 'static>() -> (PortableRegistry, u32) {
    let mut registry = Registry::new();
    let id = registry.register_type(&scale_info::meta_type::<T>()).id;
    (registry.into(), id)
}

/// What subxt hands us for a stored `T`: its SCALE bytes decoded by type information alone.
fn decoded<T: Encode + TypeInfo + 'static>(value: &T) -> scale_value::Value<u32> {
    let (registry, id) = registry_of::<T>();
    let bytes = value.encode();
    scale_value::scale::decode_as_type(&mut &bytes[..], id, &registry).expect("decodes by type")
}

/// What subxt sends for `value` where the runtime expects a `T`.
fn encoded_as<T: TypeInfo + 'static, C>(value: &scale_value::Value<C>) -> Vec<u8> {
    let (registry, id) = registry_of::<T>();
    let mut out = Vec::new();
    scale_value::scale::encode_as_type(value, id, &registry, &mut out).expect("encodes to type");
    out
}

fn as_value(composite: &Composite<()>) -> Value<()> {
    Value {
        value: ValueDef::Composite(composite.clone()),
        context: (),
    }
}

const HASH: &str = "0123456789abcdef0123456789abcdef";

fn hash_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(HASH.as_bytes());
    bytes
}

// ---- Signing ----

#[test]
fn the_signer_is_the_identitys_account_and_its_signatures_verify() {
    for key_type in [KeyType::Sr25519, KeyType::Ed25519] {
        let identity = identity(key_type);
        let signer = TwinSigner::new(&identity);
        let account = <TwinSigner<'_> as Signer<TfchainConfig>>::account_id(&signer);
        assert_eq!(account.0, identity.public_key(), "{key_type:?}");
        let payload = b"a signer payload of some extrinsic";
        let signature = <TwinSigner<'_> as Signer<TfchainConfig>>::sign(&signer, payload);
        let bytes = match (key_type, &signature) {
            (KeyType::Sr25519, MultiSignature::Sr25519(bytes))
            | (KeyType::Ed25519, MultiSignature::Ed25519(bytes)) => bytes,
            other => panic!("wrong signature kind {other:?}"),
        };
        verify_signature(key_type, &identity.public_key(), payload, bytes)
            .expect("the signature verifies against the identity's key");
        assert!(
            verify_signature(key_type, &identity.public_key(), b"another payload", bytes).is_err()
        );
    }
}

#[test]
fn the_signer_works_with_the_substrate_configuration_too() {
    let identity = identity(KeyType::Sr25519);
    let signer = TwinSigner::new(&identity);
    let account = <TwinSigner<'_> as Signer<subxt::SubstrateConfig>>::account_id(&signer);
    assert_eq!(account.0, identity.public_key());
}

// ---- Deployment hash ----

#[test]
fn a_deployment_hash_is_its_32_ascii_characters() {
    assert_eq!(deployment_hash_bytes(HASH), Ok(hash_bytes()));
    assert_eq!(deployment_hash_text(&hash_bytes()), HASH);
}

#[test]
fn malformed_deployment_hashes_are_refused() {
    for bad in [
        "",
        &HASH[..31],
        &format!("{HASH}0"),
        &format!("{HASH}{HASH}"),
        "0123456789ABCDEF0123456789ABCDEF",
        "0123456789abcdef0123456789abcdeg",
        "0123456789abcdef0123456789abcdé",
    ] {
        assert!(deployment_hash_bytes(bad).is_err(), "{bad:?} was taken");
    }
}

#[test]
fn stored_hashes_that_are_not_text_come_back_as_hex() {
    assert_eq!(deployment_hash_text(&[0xff, 0x00]), "ff00");
    assert_eq!(deployment_hash_text(b"ab cd"), "6162206364");
}

// ---- Call values ----

fn new_contract(data: &[u8]) -> NewNodeContract {
    NewNodeContract {
        node_id: 11,
        deployment_hash: HASH.into(),
        deployment_data: data.to_vec(),
        public_ips: 1,
    }
}

#[test]
fn create_node_contract_names_every_argument() {
    let payload = create_node_contract_tx(&new_contract(b"{\"type\":\"vm\"}"), &hash_bytes());
    assert_eq!(payload.pallet_name(), "SmartContractModule");
    assert_eq!(payload.call_name(), "create_node_contract");
    let expected = Composite::named([
        ("node_id", Value::u128(11)),
        ("deployment_hash", Value::from_bytes(HASH.as_bytes())),
        ("deployment_data", Value::from_bytes(b"{\"type\":\"vm\"}")),
        ("public_ips", Value::u128(1)),
        ("solution_provider_id", Value::unnamed_variant("None", [])),
    ]);
    assert_eq!(payload.call_data(), &expected);
}

#[test]
fn create_node_contract_encodes_as_the_runtime_declares_it() {
    // Empty and one-byte data take other paths through scale-value than longer data.
    for data in [
        &b""[..],
        b"x",
        b"{\"version\":3,\"type\":\"vm\"}",
        &[b'a'; 512],
    ] {
        let payload = create_node_contract_tx(&new_contract(data), &hash_bytes());
        let expected = CreateNodeContractArgs {
            node_id: 11,
            deployment_hash: hash_bytes(),
            deployment_data: BoundedBytes(data.to_vec()),
            public_ips: 1,
            solution_provider_id: None,
        };
        assert_eq!(
            encoded_as::<CreateNodeContractArgs, _>(&as_value(payload.call_data())),
            expected.encode(),
            "{} bytes of data",
            data.len()
        );
    }
}

#[test]
fn cancel_contract_names_its_argument_and_encodes_as_a_u64() {
    let payload = cancel_contract_tx(1234);
    assert_eq!(payload.pallet_name(), "SmartContractModule");
    assert_eq!(payload.call_name(), "cancel_contract");
    assert_eq!(
        payload.call_data(),
        &Composite::named([("contract_id", Value::u128(1234))])
    );
    assert_eq!(
        encoded_as::<CancelContractArgs, _>(&as_value(payload.call_data())),
        CancelContractArgs { contract_id: 1234 }.encode()
    );
}

#[test]
fn storage_keys_encode_as_their_types() {
    let account = [9u8; 32];
    assert_eq!(
        encoded_as::<AccountId, _>(&Value::from_bytes(account)),
        AccountId(account).encode()
    );
    let keys = contract_by_hash_keys(11, &hash_bytes());
    assert_eq!(encoded_as::<u32, _>(&keys[0]), 11u32.encode());
    assert_eq!(encoded_as::<[u8; 32], _>(&keys[1]), hash_bytes().encode());
}

// ---- Decoding stored values ----

#[test]
fn a_twin_decodes_by_field_names() {
    let twin = ChainTwin {
        id: 42,
        account_id: AccountId([3u8; 32]),
        relay: Some(BoundedBytes(b"relay.grid.tf".to_vec())),
        entities: vec![EntityProof {
            entity_id: 1,
            signature: BoundedBytes(vec![1, 2, 3]),
        }],
        pk: Some(BoundedBytes(vec![2u8; 33])),
    };
    assert_eq!(
        decode_twin(42, &decoded(&twin)),
        Ok(Twin {
            id: 42,
            account: [3u8; 32],
            relay: Some("relay.grid.tf".into()),
            e2e_key: Some(vec![2u8; 33]),
        })
    );
}

#[test]
fn a_twin_without_relay_or_key_has_none() {
    let twin = ChainTwin {
        id: 5,
        account_id: AccountId([4u8; 32]),
        relay: None,
        entities: vec![],
        pk: None,
    };
    let plain = decode_twin(5, &decoded(&twin)).expect("decodes");
    assert_eq!((plain.relay, plain.e2e_key), (None, None));
    // A one-byte key takes another path through the newtype unwrapping than a long one.
    let twin = ChainTwin {
        pk: Some(BoundedBytes(vec![7])),
        ..twin
    };
    let keyed = decode_twin(5, &decoded(&twin)).expect("decodes");
    assert_eq!(keyed.e2e_key, Some(vec![7]));
}

#[test]
fn a_twin_missing_fields_of_a_later_runtime_still_decodes() {
    let twin = OlderChainTwin {
        id: 6,
        account_id: AccountId([5u8; 32]),
        relay: Some(BoundedBytes(b"r1.grid.tf_r2.grid.tf".to_vec())),
    };
    let older = decode_twin(6, &decoded(&twin)).expect("decodes");
    assert_eq!(older.account, [5u8; 32]);
    assert_eq!(older.relay.as_deref(), Some("r1.grid.tf_r2.grid.tf"));
    assert_eq!(older.e2e_key, None);
}

#[test]
fn a_twin_without_an_account_is_an_error() {
    assert!(decode_twin(1, &decoded(&CancelContractArgs { contract_id: 1 })).is_err());
}

fn chain_node_contract(state: ChainContractState) -> ChainContract {
    ChainContract {
        version: 4,
        state,
        contract_id: 77,
        twin_id: 42,
        contract_type: ContractData::NodeContract(ChainNodeContract {
            node_id: 11,
            deployment_hash: hash_bytes(),
            deployment_data: BoundedBytes(b"{\"name\":\"job\"}".to_vec()),
            public_ips: 1,
            public_ips_list: vec![PublicIp {
                ip: BoundedBytes(b"185.206.122.3/24".to_vec()),
                gateway: BoundedBytes(b"185.206.122.1".to_vec()),
                contract_id: 77,
            }],
        }),
        solution_provider_id: None,
    }
}

#[test]
fn a_node_contract_decodes_with_its_state() {
    for (state, expected) in [
        (ChainContractState::Created, ContractState::Created),
        (
            ChainContractState::Deleted(Cause::CanceledByUser),
            ContractState::Deleted,
        ),
        (
            ChainContractState::GracePeriod(123_456),
            ContractState::GracePeriod,
        ),
    ] {
        assert_eq!(
            decode_node_contract(&decoded(&chain_node_contract(state))),
            Ok(Some(NodeContract {
                contract_id: 77,
                twin_id: 42,
                node_id: 11,
                deployment_hash: HASH.into(),
                deployment_data: b"{\"name\":\"job\"}".to_vec(),
                public_ips: 1,
                state: expected,
            }))
        );
    }
}

#[test]
fn other_contract_types_are_not_node_contracts() {
    let name_contract = ChainContract {
        contract_type: ContractData::NameContract(NameContract {
            name: BoundedBytes(b"gateway".to_vec()),
        }),
        ..chain_node_contract(ChainContractState::Created)
    };
    assert_eq!(decode_node_contract(&decoded(&name_contract)), Ok(None));
}

#[test]
fn the_contract_created_event_gives_the_id() {
    // `ContractCreated(Contract)`: one unnamed field.
    let contract = decoded(&chain_node_contract(ChainContractState::Created));
    assert_eq!(
        contract_id_in_created_event(&Composite::unnamed([contract])),
        Some(77)
    );
    // Named forms, in case the event changes shape.
    assert_eq!(
        contract_id_in_created_event(&Composite::named([("contract_id", Value::u128(8))])),
        Some(8)
    );
    assert_eq!(
        contract_id_in_created_event(&Composite::named([(
            "contract",
            Value::named_composite([("contract_id", Value::u128(9))])
        )])),
        Some(9)
    );
    assert_eq!(
        contract_id_in_created_event(&Composite::unnamed([Value::u128(1)])),
        None
    );
}

// ---- Errors ----

fn module(error: &str) -> Failure {
    Failure::Module {
        pallet: "SmartContractModule".into(),
        error: error.into(),
    }
}

#[test]
fn module_errors_are_refusals_named_by_the_error() {
    match module("ContractIsNotUnique").into_chain_error("create") {
        ChainError::Refused { call, reason } => {
            assert_eq!((call, reason.as_str()), ("create", "ContractIsNotUnique"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !Failure::Rejected("no".into())
            .into_chain_error("x")
            .is_retryable()
    );
    assert!(
        Failure::Connection("gone".into())
            .into_chain_error("x")
            .is_retryable()
    );
    assert!(
        Failure::NotNow("busy".into())
            .into_chain_error("x")
            .is_retryable()
    );
}

#[test]
fn cancelling_a_contract_that_is_gone_is_done() {
    assert_eq!(cancel_outcome(Err(module("ContractNotExists"))), Ok(()));
    assert_eq!(
        cancel_outcome(Err(module("TwinNotAuthorizedToCancelContract"))),
        Err(module("TwinNotAuthorizedToCancelContract"))
    );
    // The same name from another pallet is not this one.
    let elsewhere = Failure::Module {
        pallet: "TfgridModule".into(),
        error: "ContractNotExists".into(),
    };
    assert_eq!(cancel_outcome(Err(elsewhere.clone())), Err(elsewhere));
    assert!(matches!(
        cancel_outcome(Err(Failure::Connection("x".into()))),
        Err(Failure::Connection(_))
    ));
}

fn user_error(code: i32, message: &str, data: Option<&str>) -> subxt::Error {
    let data = data.map(|data| {
        serde_json::value::RawValue::from_string(serde_json::to_string(data).expect("a string"))
            .expect("raw JSON")
    });
    subxt::Error::Rpc(RpcError::ClientError(subxt_rpcs::Error::User(
        subxt_rpcs::UserError {
            code,
            message: message.into(),
            data,
        },
    )))
}

#[test]
fn pool_rejections_are_told_apart() {
    let failure = |code, data| Failure::from(user_error(code, "Invalid Transaction", data));
    assert!(matches!(
        failure(1010, Some("Inability to pay some fees (e.g. account balance too low)")),
        Failure::Rejected(reason) if reason.contains("cannot pay")
    ));
    assert!(matches!(
        failure(1010, Some("Transaction is outdated")),
        Failure::NotNow(_)
    ));
    assert!(matches!(
        failure(1010, Some("Transaction has a bad signature")),
        Failure::Connection(_)
    ));
    assert!(matches!(
        failure(1010, Some("Transaction call is not expected")),
        Failure::Rejected(_)
    ));
    assert!(matches!(failure(1014, None), Failure::NotNow(_)));
    assert!(matches!(failure(1012, None), Failure::NotNow(_)));
    assert!(matches!(failure(-32601, None), Failure::Rejected(_)));
}

#[test]
fn transport_errors_are_connection_failures() {
    let broken = subxt::Error::Rpc(RpcError::ClientError(subxt_rpcs::Error::Client(Box::new(
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"),
    ))));
    assert!(matches!(Failure::from(broken), Failure::Connection(_)));
    assert!(matches!(
        Failure::from(subxt::Error::Rpc(RpcError::SubscriptionDropped)),
        Failure::Connection(_)
    ));
    assert!(matches!(
        Failure::from(subxt::Error::Runtime(DispatchError::BadOrigin)),
        Failure::Rejected(_)
    ));
    assert!(matches!(
        Failure::from(subxt::Error::Transaction(TransactionError::Dropped(
            "pool full".into()
        ))),
        Failure::NotNow(_)
    ));
}

// ---- Connecting ----

#[test]
fn only_websocket_urls_are_taken() {
    assert!(SubstrateChain::new("wss://tfchain.grid.tf/ws").is_ok());
    assert!(SubstrateChain::new(" ws://127.0.0.1:9944 ").is_ok());
    for bad in [
        "",
        "wss://",
        "https://tfchain.grid.tf/ws",
        "tfchain.grid.tf",
    ] {
        assert!(SubstrateChain::new(bad).is_err(), "{bad:?} was taken");
    }
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    port
}

fn chain_at(port: u16, timeout: Duration) -> SubstrateChain {
    SubstrateChain::new(&format!("ws://127.0.0.1:{port}"))
        .expect("url")
        .with_timeouts(timeout, timeout)
}

fn assert_unreachable(outcome: Result<impl std::fmt::Debug, ChainError>) {
    match outcome {
        Err(ChainError::Unreachable(_)) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_closed_port_is_unreachable_within_the_timeout() {
    let chain = chain_at(closed_port().await, Duration::from_secs(5));
    let started = Instant::now();
    assert_unreachable(chain.twin(1).await);
    assert_unreachable(chain.twin_id_of(&[1u8; 32]).await);
    assert_unreachable(chain.node_contract(1).await);
    assert_unreachable(chain.contract_id_by_node_and_hash(1, HASH).await);
    let signer = identity(KeyType::Sr25519);
    assert_unreachable(
        chain
            .create_node_contract(&signer, &new_contract(b"{}"))
            .await,
    );
    // Not "already gone": nothing was learnt about the contract.
    assert_unreachable(chain.cancel_contract(&signer, 1).await);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn nothing_connects_until_the_first_call_and_a_silent_node_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let timeout = Duration::from_millis(800);
    let chain = chain_at(port, timeout);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.accept())
            .await
            .is_err(),
        "connected before any call"
    );

    // A node that accepts the connection and never answers the WebSocket handshake.
    let (connections, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = connections.send(socket);
        }
    });
    let started = Instant::now();
    assert_unreachable(chain.twin(1).await);
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout / 2, "gave up after {elapsed:?}");
    assert!(elapsed < timeout * 3, "took {elapsed:?}");
    assert!(accepted.try_recv().is_ok(), "the call did not connect");

    // The failed connection was dropped: the next call connects again.
    assert_unreachable(chain.twin(1).await);
    assert!(
        accepted.try_recv().is_ok(),
        "the second call did not reconnect"
    );
    server.abort();
}

#[tokio::test]
async fn bad_contract_arguments_are_refused_before_connecting() {
    let chain = chain_at(closed_port().await, Duration::from_secs(5));
    let signer = identity(KeyType::Ed25519);
    let mut contract = new_contract(b"{}");
    contract.deployment_hash = "not a hash".into();
    assert!(matches!(
        chain.create_node_contract(&signer, &contract).await,
        Err(ChainError::Refused { .. })
    ));
    let oversized = new_contract(&[b'x'; MAX_DEPLOYMENT_DATA + 1]);
    assert!(matches!(
        chain.create_node_contract(&signer, &oversized).await,
        Err(ChainError::Refused { .. })
    ));
    assert!(matches!(
        chain.contract_id_by_node_and_hash(1, "ABC").await,
        Err(ChainError::Refused { .. })
    ));
}
