//! The values SubstrateChain exchanges with TFChain: dynamic call payloads, storage keys, the
//! deployment hash as the chain holds it, the decoding of twins, contracts and events, and the
//! signer that lets a twin's [`Identity`] sign extrinsics.

use super::*;

/// `SmartContractModule.create_node_contract(node_id, deployment_hash, deployment_data,
/// public_ips, solution_provider_id)`. Fields go by name, so a runtime that reorders them still
/// gets the right values and one that renames them is refused before anything is signed.
pub(super) fn create_node_contract_tx(
    contract: &NewNodeContract,
    hash: &[u8; 32],
) -> DynamicPayload {
    subxt::dynamic::tx(
        SMART_CONTRACT,
        "create_node_contract",
        Composite::named([
            ("node_id", Value::u128(contract.node_id.into())),
            ("deployment_hash", Value::from_bytes(hash)),
            (
                "deployment_data",
                Value::from_bytes(&contract.deployment_data),
            ),
            ("public_ips", Value::u128(contract.public_ips.into())),
            ("solution_provider_id", Value::unnamed_variant("None", [])),
        ]),
    )
}

/// `SmartContractModule.cancel_contract(contract_id)`.
pub(super) fn cancel_contract_tx(contract_id: u64) -> DynamicPayload {
    subxt::dynamic::tx(
        SMART_CONTRACT,
        "cancel_contract",
        Composite::named([("contract_id", Value::u128(contract_id.into()))]),
    )
}

/// The keys of `ContractIDByNodeIDAndHash(node_id, deployment_hash)`.
pub(super) fn contract_by_hash_keys(node_id: u32, hash: &[u8; 32]) -> Vec<Value> {
    vec![Value::u128(node_id.into()), Value::from_bytes(hash)]
}

/// The chain's `HexHash`: the 32 ASCII characters of the hex digest themselves (not the 16
/// bytes they spell), which is what zos compares with its own hash of the deployment.
pub(super) fn deployment_hash_bytes(hash: &str) -> Result<[u8; 32], String> {
    let well_formed = hash.len() == 32
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return Err(format!(
            "a deployment hash is 32 lowercase hex characters, not {hash:?}"
        ));
    }
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(hash.as_bytes());
    Ok(bytes)
}

/// The reverse of [`deployment_hash_bytes`]. A contract someone else made may hold any bytes:
/// those come back hex-encoded, which never equals a well-formed hash.
pub(super) fn deployment_hash_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.bytes().all(|b| b.is_ascii_graphic()) => text.to_owned(),
        _ => hex::encode(bytes),
    }
}

/// Signs extrinsics with a twin's [`Identity`], so the key that signs deployments and RMB
/// envelopes is also the account that pays for the contracts.
#[derive(Debug, Clone, Copy)]
pub struct TwinSigner<'a> {
    identity: &'a Identity,
}

impl<'a> TwinSigner<'a> {
    pub fn new(identity: &'a Identity) -> TwinSigner<'a> {
        TwinSigner { identity }
    }
}

impl<T> Signer<T> for TwinSigner<'_>
where
    T: subxt::Config<AccountId = AccountId32, Signature = MultiSignature>,
{
    fn account_id(&self) -> AccountId32 {
        AccountId32(self.identity.public_key())
    }

    /// subxt hands over the payload already hashed when it is longer than 256 bytes, as the
    /// runtime expects.
    fn sign(&self, signer_payload: &[u8]) -> MultiSignature {
        let signature = self.identity.sign(signer_payload);
        // Both schemes give 64 bytes; anything else would be refused by the chain as a bad
        // signature, which is where such a bug would show.
        let mut bytes = [0u8; 64];
        let len = signature.len().min(64);
        bytes[..len].copy_from_slice(&signature[..len]);
        match self.identity.key_type() {
            KeyType::Sr25519 => MultiSignature::Sr25519(bytes),
            KeyType::Ed25519 => MultiSignature::Ed25519(bytes),
        }
    }
}

/// The id in this extrinsic's `SmartContractModule.ContractCreated` event, if it has one.
/// Events that do not decode are passed over: the storage index is asked instead.
pub(super) fn created_contract_id(events: &ExtrinsicEvents<TfchainConfig>) -> Option<u64> {
    events
        .iter()
        .filter_map(|event| event.ok())
        .filter(|event| {
            event.pallet_name() == SMART_CONTRACT && event.variant_name() == "ContractCreated"
        })
        .find_map(|event| {
            let fields = event.field_values().ok()?;
            contract_id_in_created_event(&fields)
        })
}

/// `ContractCreated(Contract)`: the contract is the one unnamed field. A named field
/// `contract_id` (or one level deeper) is taken too, should the event ever change shape.
pub(super) fn contract_id_in_created_event<T>(fields: &Composite<T>) -> Option<u64> {
    fields.at("contract_id").and_then(as_u64).or_else(|| {
        fields
            .values()
            .find_map(|value| value.at("contract_id").and_then(as_u64))
    })
}

/// `TfgridModule.Twins(id)`: `{ id, account_id, relay: Option<bytes>, entities, pk: Option<bytes> }`.
/// Only `account_id` is required; a field the runtime dropped reads as absent.
pub(super) fn decode_twin<T>(
    id: u32,
    value: &subxt::ext::scale_value::Value<T>,
) -> Result<Twin, String> {
    let account = value
        .at("account_id")
        .and_then(bytes_of)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| format!("twin {id} has no 32-byte account_id: {}", brief(value)))?;
    let relay = optional_bytes(value.at("relay"))
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|relay| !relay.is_empty());
    let e2e_key = optional_bytes(value.at("pk")).filter(|key| !key.is_empty());
    Ok(Twin {
        id,
        account,
        relay,
        e2e_key,
    })
}

/// `SmartContractModule.Contracts(id)`: `{ version, state, contract_id, twin_id, contract_type,
/// solution_provider_id }`, with `contract_type` the variant `NodeContract(NodeContract {
/// node_id, deployment_hash, deployment_data, public_ips, public_ips_list })`. Contracts of another
/// type (name, rent) are `None`.
pub(super) fn decode_node_contract<T>(
    value: &subxt::ext::scale_value::Value<T>,
) -> Result<Option<NodeContract>, String> {
    let missing = |what: &str| format!("contract without {what}: {}", brief(value));
    let contract_id = value
        .at("contract_id")
        .and_then(as_u64)
        .ok_or_else(|| missing("contract_id"))?;
    let twin_id = value
        .at("twin_id")
        .and_then(as_u32)
        .ok_or_else(|| missing("twin_id"))?;
    let state = match variant_name(value.at("state")) {
        Some("Created") => ContractState::Created,
        Some("Deleted") => ContractState::Deleted,
        Some("GracePeriod") => ContractState::GracePeriod,
        other => return Err(format!("contract {contract_id} in unknown state {other:?}")),
    };
    let Some(ValueDef::Variant(contract_type)) = value.at("contract_type").map(|v| &v.value) else {
        return Err(missing("contract_type"));
    };
    if contract_type.name != "NodeContract" {
        return Ok(None);
    }
    let body = variant_body(&contract_type.values)
        .ok_or_else(|| format!("node contract {contract_id} has no fields"))?;
    let node_id = body
        .at("node_id")
        .and_then(as_u32)
        .ok_or_else(|| missing("node_id"))?;
    let deployment_hash = body
        .at("deployment_hash")
        .and_then(bytes_of)
        .map(|bytes| deployment_hash_text(&bytes))
        .ok_or_else(|| missing("deployment_hash"))?;
    Ok(Some(NodeContract {
        contract_id,
        twin_id,
        node_id,
        deployment_hash,
        deployment_data: body
            .at("deployment_data")
            .and_then(bytes_of)
            .unwrap_or_default(),
        public_ips: body.at("public_ips").and_then(as_u32).unwrap_or(0),
        state,
    }))
}

/// The fields of a variant: its own when named, else those of the struct it wraps
/// (`NodeContract(NodeContract { .. })`).
pub(super) fn variant_body<T>(fields: &Composite<T>) -> Option<&Composite<T>> {
    match fields {
        Composite::Named(_) => Some(fields),
        Composite::Unnamed(values) => match values.as_slice() {
            [only] => match &only.value {
                ValueDef::Composite(inner) => Some(inner),
                _ => None,
            },
            _ => None,
        },
    }
}

pub(super) fn variant_name<T>(value: Option<&subxt::ext::scale_value::Value<T>>) -> Option<&str> {
    match &value?.value {
        ValueDef::Variant(variant) => Some(&variant.name),
        _ => None,
    }
}

pub(super) fn as_u32<T>(value: &subxt::ext::scale_value::Value<T>) -> Option<u32> {
    value.as_u128().and_then(|n| u32::try_from(n).ok())
}

pub(super) fn as_u64<T>(value: &subxt::ext::scale_value::Value<T>) -> Option<u64> {
    value.as_u128().and_then(|n| u64::try_from(n).ok())
}

/// Byte strings (`Vec<u8>`, `BoundedVec<u8, _>`, `[u8; N]`, `AccountId32`) decode as composites
/// of numbers, possibly inside single-field newtypes: the bytes, if that is what `value` is.
pub(super) fn bytes_of<T>(value: &subxt::ext::scale_value::Value<T>) -> Option<Vec<u8>> {
    let ValueDef::Composite(composite) = &value.value else {
        return None;
    };
    if let Composite::Unnamed(values) = composite {
        if let [
            only @ subxt::ext::scale_value::Value {
                value: ValueDef::Composite(_),
                ..
            },
        ] = values.as_slice()
        {
            return bytes_of(only);
        }
    }
    composite
        .values()
        .map(|byte| byte.as_u128().and_then(|n| u8::try_from(n).ok()))
        .collect()
}

/// `Option<bytes>` decodes as the variants `None` and `Some(bytes)`; a missing field is `None`.
pub(super) fn optional_bytes<T>(
    value: Option<&subxt::ext::scale_value::Value<T>>,
) -> Option<Vec<u8>> {
    let ValueDef::Variant(variant) = &value?.value else {
        return None;
    };
    if variant.name != "Some" {
        return None;
    }
    variant.values.values().next().and_then(bytes_of)
}

/// A value for an error message, cut short: a twin or contract can hold hundreds of numbers.
pub(super) fn brief<T>(value: &subxt::ext::scale_value::Value<T>) -> String {
    let text = value.to_string();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
