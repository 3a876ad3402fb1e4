//! Step 2 of regenerating the golden vectors (see `tests/data/golden.mjs`): writes signatures made
//! by this crate to `tests/data/rust_signatures.json`, for polkadot to verify in step 3 (sr25519 is
//! randomized, so the two sides are compared by verifying each other's signatures).
//!
//!   cargo run -p zeroci-tfgrid --example emit_rust_signatures

use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;
use zeroci_tfgrid::identity::{Identity, KeyType};

fn main() -> anyhow::Result<()> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(data.join("golden.json"))?)?;
    let secret = golden["identities"][0]["secret"]
        .as_str()
        .context("identities[0].secret")?;
    let hash = golden["deployments"]["vm_network_ip"]["go_hash"]
        .as_str()
        .context("deployments.vm_network_ip.go_hash")?;
    let message = hex::decode(hash.trim_start_matches("0x"))?;
    let mut entries = Vec::new();
    for kind in [KeyType::Sr25519, KeyType::Ed25519] {
        let id = Identity::from_secret(secret, kind)?;
        entries.push(serde_json::json!({
            "key_type": kind.signature_type(),
            "public_key": format!("0x{}", hex::encode(id.public_key())),
            "message": format!("0x{}", hex::encode(&message)),
            "signature": format!("0x{}", hex::encode(id.sign(&message))),
        }));
    }
    let text = serde_json::to_string_pretty(&entries)?;
    std::fs::write(data.join("rust_signatures.json"), text + "\n")?;
    Ok(())
}
