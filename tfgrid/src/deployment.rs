//! The zos deployment model (zosbase `pkg/gridtypes`): JSON exactly as zos reads and writes it,
//! the challenge text and MD5 hash that the contract and the signatures are bound to, signing,
//! and a zos-faithful signature check for the simulated node.
//!
//! The challenge is the riskiest part of talking to the grid: zos recomputes it from the JSON it
//! receives and refuses the deployment (or the contract check fails) if a single byte differs.
//! The rules, all taken from the Go `Challenge(io.Writer)` methods:
//! * values are concatenated with no separators, numbers in decimal, bools as `true`/`false`;
//! * `contract_id` is left out (the hash is needed to create the contract);
//! * workload data hashes from the *parsed* Go values: canonical IP text, `<nil>` for an unset
//!   network, lowercase `%x` for bytes, env as `K=V` sorted by key, `corex` not at all.

pub mod gonet;
pub mod workloads;

use md5::{Digest as _, Md5};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::{Identity, KeyType, SignatureError, verify_signature};
pub use gonet::{HexBytes, InvalidCidr, IpNet};
pub use workloads::*;

/// Signature style whose signed message is `<Bytes>{hex digest}</Bytes>` (polkadot wallets).
pub const SIGNATURE_STYLE_POLKA_WALLET: &str = "polka-wallet";

/// Longest workload name zos accepts (virtio-fs tag limit).
pub const MAX_WORKLOAD_NAME_LEN: usize = 36;

#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("workload '{name}' has type '{kind}' whose challenge this library does not know")]
    UnsupportedWorkloadType { name: String, kind: String },
    #[error("workload '{name}' data does not parse as '{kind}': {source}")]
    BadWorkloadData {
        name: String,
        kind: String,
        source: serde_json::Error,
    },
    #[error("invalid workload name '{0}': {1}")]
    InvalidName(String, &'static str),
    #[error("missing required signature for twin '{0}'")]
    MissingSignature(u32),
    #[error("failed to get public key for twin '{0}'")]
    UnknownTwin(u32),
    #[error("invalid signature for twin '{0}': not hex")]
    SignatureNotHex(u32),
    #[error("failed to verify signature of twin '{twin}': {source}")]
    BadSignature { twin: u32, source: SignatureError },
    #[error("originator twin id must be in the signature requests")]
    OriginatorNotRequested,
    #[error("required signature weight is not reached")]
    WeightNotReached,
}

/// A deployment: the unit a node contract pays for and a node provisions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// 0 on creation, +1 on every update.
    #[serde(default)]
    pub version: u32,
    pub twin_id: u32,
    /// Set after the contract exists; not part of the hash.
    #[serde(default)]
    pub contract_id: u64,
    /// Also sent on chain as the contract's `deployment_data` (≤ 512 bytes).
    #[serde(default)]
    pub metadata: String,
    #[serde(default)]
    pub description: String,
    /// Deprecated by zos, kept because it is hashed.
    #[serde(default)]
    pub expiration: i64,
    #[serde(default)]
    pub signature_requirement: SignatureRequirement,
    #[serde(default, deserialize_with = "gonet::null_as_default")]
    pub workloads: Vec<Workload>,
}

/// Who must sign, and the signatures collected so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SignatureRequirement {
    #[serde(default, deserialize_with = "gonet::null_as_default")]
    pub requests: Vec<SignatureRequest>,
    #[serde(default)]
    pub weight_required: u64,
    #[serde(default, deserialize_with = "gonet::null_as_default")]
    pub signatures: Vec<Signature>,
    /// `""` (sign the raw digest) or [`SIGNATURE_STYLE_POLKA_WALLET`].
    #[serde(default)]
    pub signature_style: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRequest {
    pub twin_id: u32,
    /// zos forces this to true for the deployment's own twin.
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub weight: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub twin_id: u32,
    /// Lowercase hex of the 64-byte signature (no type prefix).
    pub signature: String,
    /// `"sr25519"` or `"ed25519"`.
    pub signature_type: String,
}

/// One workload: common fields plus typed `type`/`data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WorkloadWire", into = "WorkloadWire")]
pub struct Workload {
    pub version: u32,
    /// Unique in the deployment, `^[a-zA-Z0-9_]+$`, see [`sanitize_workload_name`].
    pub name: String,
    pub data: WorkloadData,
    pub metadata: String,
    pub description: String,
    /// Filled in by the node.
    pub result: WorkloadResult,
}

/// The type-specific part of a workload. Types this library has no model for are kept as raw
/// JSON so a deployment read from a node round-trips, but they cannot be hashed.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkloadData {
    Network(Network),
    NetworkLight(NetworkLight),
    ZMachine(Box<ZMachine>),
    ZMachineLight(Box<ZMachineLight>),
    PublicIp(PublicIp),
    /// The deprecated `ipv4` type: no data, empty challenge.
    PublicIpV4,
    ZMount(DiskSize),
    Volume(DiskSize),
    Other {
        kind: String,
        data: serde_json::Value,
    },
}

impl WorkloadData {
    /// The workload `type` string.
    pub fn kind(&self) -> &str {
        match self {
            WorkloadData::Network(_) => kind::NETWORK,
            WorkloadData::NetworkLight(_) => kind::NETWORK_LIGHT,
            WorkloadData::ZMachine(_) => kind::ZMACHINE,
            WorkloadData::ZMachineLight(_) => kind::ZMACHINE_LIGHT,
            WorkloadData::PublicIp(_) => kind::IP,
            WorkloadData::PublicIpV4 => kind::IPV4,
            WorkloadData::ZMount(_) => kind::ZMOUNT,
            WorkloadData::Volume(_) => kind::VOLUME,
            WorkloadData::Other { kind, .. } => kind,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let value = match self {
            WorkloadData::Network(d) => serde_json::to_value(d),
            WorkloadData::NetworkLight(d) => serde_json::to_value(d),
            WorkloadData::ZMachine(d) => serde_json::to_value(d),
            WorkloadData::ZMachineLight(d) => serde_json::to_value(d),
            WorkloadData::PublicIp(d) => serde_json::to_value(d),
            WorkloadData::PublicIpV4 => Ok(serde_json::json!({})),
            WorkloadData::ZMount(d) | WorkloadData::Volume(d) => serde_json::to_value(d),
            WorkloadData::Other { data, .. } => Ok(data.clone()),
        };
        // Our data types serialize only strings, numbers, bools, lists and string-keyed maps.
        value.unwrap_or(serde_json::Value::Null)
    }

    fn from_json(kind: &str, data: serde_json::Value) -> Result<Self, serde_json::Error> {
        use serde_json::from_value;
        Ok(match kind {
            kind::NETWORK => WorkloadData::Network(from_value(data)?),
            kind::NETWORK_LIGHT => WorkloadData::NetworkLight(from_value(data)?),
            kind::ZMACHINE => WorkloadData::ZMachine(Box::new(from_value(data)?)),
            kind::ZMACHINE_LIGHT => WorkloadData::ZMachineLight(Box::new(from_value(data)?)),
            kind::IP => WorkloadData::PublicIp(from_value(data)?),
            kind::IPV4 => WorkloadData::PublicIpV4,
            kind::ZMOUNT => WorkloadData::ZMount(from_value(data)?),
            kind::VOLUME => WorkloadData::Volume(from_value(data)?),
            other => WorkloadData::Other {
                kind: other.to_string(),
                data,
            },
        })
    }

    /// Appends the type-specific challenge; `None` for types without a model.
    fn challenge(&self, out: &mut String) -> Option<()> {
        match self {
            WorkloadData::Network(d) => d.challenge(out),
            WorkloadData::NetworkLight(d) => d.challenge(out),
            WorkloadData::ZMachine(d) => d.challenge(out),
            WorkloadData::ZMachineLight(d) => d.challenge(out),
            WorkloadData::PublicIp(d) => d.challenge(out),
            WorkloadData::PublicIpV4 => {}
            WorkloadData::ZMount(d) | WorkloadData::Volume(d) => d.challenge(out),
            WorkloadData::Other { .. } => return None,
        }
        Some(())
    }
}

/// The JSON shape of a workload; `data` is typed by `type` on the way in.
#[derive(Serialize, Deserialize)]
struct WorkloadWire {
    #[serde(default)]
    version: u32,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    result: WorkloadResult,
}

impl TryFrom<WorkloadWire> for Workload {
    type Error = DeploymentError;

    fn try_from(w: WorkloadWire) -> Result<Self, Self::Error> {
        let data = WorkloadData::from_json(&w.kind, w.data).map_err(|source| {
            DeploymentError::BadWorkloadData {
                name: w.name.clone(),
                kind: w.kind.clone(),
                source,
            }
        })?;
        Ok(Workload {
            version: w.version,
            name: w.name,
            data,
            metadata: w.metadata,
            description: w.description,
            result: w.result,
        })
    }
}

impl From<Workload> for WorkloadWire {
    fn from(w: Workload) -> Self {
        WorkloadWire {
            version: w.version,
            kind: w.data.kind().to_string(),
            data: w.data.to_json(),
            name: w.name,
            metadata: w.metadata,
            description: w.description,
            result: w.result,
        }
    }
}

impl Workload {
    /// A version-0 workload with empty metadata/description and no result.
    pub fn new(name: impl Into<String>, data: WorkloadData) -> Self {
        Workload {
            version: 0,
            name: name.into(),
            data,
            metadata: String::new(),
            description: String::new(),
            result: WorkloadResult::default(),
        }
    }

    fn challenge(&self, out: &mut String) -> Result<(), DeploymentError> {
        out.push_str(&self.version.to_string());
        out.push_str(&self.name);
        out.push_str(self.data.kind());
        out.push_str(&self.metadata);
        out.push_str(&self.description);
        self.data
            .challenge(out)
            .ok_or_else(|| DeploymentError::UnsupportedWorkloadType {
                name: self.name.clone(),
                kind: self.data.kind().to_string(),
            })
    }
}

/// Provisioning state of a workload, as reported by the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultState {
    Init,
    Ok,
    Error,
    Deleted,
    Paused,
    /// An update failed but the previous state still stands.
    Unchanged,
}

impl ResultState {
    /// zos's `IsOkay`: running (paused workloads still exist and resume once funded).
    pub fn is_okay(self) -> bool {
        matches!(self, ResultState::Ok | ResultState::Paused)
    }
}

/// `gridtypes.Result`. An unset result has an empty `state` in zos's JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadResult {
    /// Unix seconds.
    #[serde(default)]
    pub created: i64,
    #[serde(default, with = "state_or_empty")]
    pub state: Option<ResultState>,
    /// Error text when `state` is `error`.
    #[serde(default)]
    pub message: String,
    /// Type-specific result, e.g. [`ZMachineResult`]; `null` until provisioned.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl WorkloadResult {
    /// Reads `data` as the given result type.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.data.clone())
    }
}

mod state_or_empty {
    use super::*;

    pub fn serialize<S: Serializer>(state: &Option<ResultState>, s: S) -> Result<S::Ok, S::Error> {
        match state {
            Some(state) => state.serialize(s),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ResultState>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => {
                ResultState::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(text))
                    .map(Some)
            }
        }
    }
}

impl Deployment {
    /// A version-0 deployment owned and signed by `twin_id` alone (weight 1 of 1), the shape
    /// every SDK sends.
    pub fn new(twin_id: u32, workloads: Vec<Workload>) -> Self {
        Deployment {
            twin_id,
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id,
                    required: false,
                    weight: 1,
                }],
                weight_required: 1,
                ..Default::default()
            },
            workloads,
            ..Default::default()
        }
    }

    /// The exact text zos feeds to MD5 (`Deployment.Challenge`).
    pub fn challenge_text(&self) -> Result<String, DeploymentError> {
        let mut out = String::new();
        out.push_str(&self.version.to_string());
        out.push_str(&self.twin_id.to_string());
        // contract_id is intentionally not hashed.
        out.push_str(&self.metadata);
        out.push_str(&self.description);
        out.push_str(&self.expiration.to_string());
        for workload in &self.workloads {
            workload.challenge(&mut out)?;
        }
        let requirement = &self.signature_requirement;
        for request in &requirement.requests {
            out.push_str(&request.twin_id.to_string());
            out.push_str(if request.required { "true" } else { "false" });
            out.push_str(&request.weight.to_string());
        }
        out.push_str(&requirement.weight_required.to_string());
        out.push_str(&requirement.signature_style);
        Ok(out)
    }

    /// MD5 of [`Self::challenge_text`]: what signatures sign.
    pub fn challenge_hash(&self) -> Result<[u8; 16], DeploymentError> {
        Ok(Md5::digest(self.challenge_text()?.as_bytes()).into())
    }

    /// The contract's `deployment_hash`: the digest as 32 lowercase ASCII hex characters.
    pub fn contract_hash_hex(&self) -> Result<String, DeploymentError> {
        Ok(hex::encode(self.challenge_hash()?))
    }

    /// The message a signature covers, depending on the signature style.
    fn signed_message(&self) -> Result<Vec<u8>, DeploymentError> {
        let digest = self.challenge_hash()?;
        Ok(
            if self.signature_requirement.signature_style == SIGNATURE_STYLE_POLKA_WALLET {
                format!("<Bytes>{}</Bytes>", hex::encode(digest)).into_bytes()
            } else {
                digest.to_vec()
            },
        )
    }

    /// Signs the challenge hash (the raw 16-byte digest) as `twin_id` and records the signature,
    /// replacing an earlier one of the same twin. Sign after every change: the hash covers all
    /// fields except `contract_id`.
    ///
    /// zos's own `Sign` always signs the raw digest; here a `polka-wallet` deployment gets the
    /// wrapped message instead, because that is what zos's `Verify` checks.
    pub fn sign(&mut self, twin_id: u32, identity: &Identity) -> Result<(), DeploymentError> {
        let signature = hex::encode(identity.sign(&self.signed_message()?));
        let signature_type = identity.key_type().signature_type().to_string();
        let signatures = &mut self.signature_requirement.signatures;
        match signatures.iter_mut().find(|s| s.twin_id == twin_id) {
            Some(existing) => {
                existing.signature = signature;
                existing.signature_type = signature_type;
            }
            None => signatures.push(Signature {
                twin_id,
                signature,
                signature_type,
            }),
        }
        Ok(())
    }
}

/// Checks a deployment's signatures the way a zos node does (`Deployment.Verify`), given each
/// requested twin's on-chain account public key.
///
/// Faithful to zos, including its quirks: the originator is always required; every request is
/// checked, so a request without a signature fails even when not required; a signature type
/// other than `sr25519` is treated as ed25519.
pub fn verify_deployment_signatures(
    deployment: &Deployment,
    account_key: impl Fn(u32) -> Option<[u8; 32]>,
) -> Result<(), DeploymentError> {
    let message = deployment.signed_message()?;
    let requirement = &deployment.signature_requirement;
    let mut originator_found = false;
    let mut weight = 0u64;
    for request in &requirement.requests {
        let mut required = request.required;
        if request.twin_id == deployment.twin_id {
            originator_found = true;
            required = true;
        }
        let signature = requirement
            .signatures
            .iter()
            .find(|s| s.twin_id == request.twin_id);
        if signature.is_none() && required {
            return Err(DeploymentError::MissingSignature(request.twin_id));
        }
        let public =
            account_key(request.twin_id).ok_or(DeploymentError::UnknownTwin(request.twin_id))?;
        let (kind, hex_sig) = match signature {
            Some(s) if s.signature_type == KeyType::Sr25519.signature_type() => {
                (KeyType::Sr25519, s.signature.as_str())
            }
            Some(s) => (KeyType::Ed25519, s.signature.as_str()),
            None => (KeyType::Ed25519, ""),
        };
        let raw =
            hex::decode(hex_sig).map_err(|_| DeploymentError::SignatureNotHex(request.twin_id))?;
        verify_signature(kind, &public, &message, &raw).map_err(|source| {
            DeploymentError::BadSignature {
                twin: request.twin_id,
                source,
            }
        })?;
        weight += request.weight;
    }
    if !originator_found {
        return Err(DeploymentError::OriginatorNotRequested);
    }
    if weight < requirement.weight_required {
        return Err(DeploymentError::WeightNotReached);
    }
    Ok(())
}

/// zos's `IsValidName`: 1–36 characters of `[a-zA-Z0-9_]`, not the reserved `ygg`.
pub fn validate_workload_name(name: &str) -> Result<(), DeploymentError> {
    let invalid = |why| Err(DeploymentError::InvalidName(name.to_string(), why));
    if name.is_empty() {
        return invalid("name cannot be empty");
    }
    if name.len() > MAX_WORKLOAD_NAME_LEN {
        return invalid("name cannot exceed 36 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return invalid("unsupported character in workload name");
    }
    if name == "ygg" {
        return invalid("name is reserved");
    }
    Ok(())
}

/// Turns any text (a CI job id such as `build-42.linux`) into a valid workload name: every
/// other character becomes `_`, the result is cut to 36 bytes, and empty or reserved results
/// get a `w_` prefix. Deterministic, so the same job always maps to the same name.
pub fn sanitize_workload_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name == "ygg" {
        name.insert_str(0, "w_");
    }
    // Only ASCII is left, so any byte index is a char boundary.
    name.truncate(MAX_WORKLOAD_NAME_LEN);
    name
}

#[cfg(test)]
mod tests;
