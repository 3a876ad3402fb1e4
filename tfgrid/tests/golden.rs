//! Checks every vector in `tests/data/golden.json` (made by `tests/data/golden.mjs` with the
//! published TypeScript SDK and polkadot; see that script's header for how to regenerate).

use std::path::PathBuf;

use prost::Message as _;
use serde_json::Value;
use zeroci_tfgrid::deployment::{Deployment, verify_deployment_signatures};
use zeroci_tfgrid::identity::{self, Identity, KeyType, mini_secret_from_phrase, verify_signature};
use zeroci_tfgrid::rmb::{self, Envelope, e2e, jwt};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(data_dir().join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text.trim_start_matches("0x")).expect("hex")
}

fn key32(text: &str) -> [u8; 32] {
    unhex(text).try_into().expect("32 bytes")
}

fn key_type(text: &str) -> KeyType {
    text.parse().expect("key type")
}

#[test]
fn deployment_challenges_match_zos() {
    let g = golden();
    let deployments = g["deployments"].as_object().expect("deployments");
    assert!(deployments.len() >= 4);
    for (name, v) in deployments {
        let d: Deployment = serde_json::from_value(v["input"].clone())
            .unwrap_or_else(|e| panic!("{name}: input does not parse: {e}"));
        // zos (Go) is the truth; the SDK's text is recorded separately where it differs.
        assert_eq!(
            d.challenge_text().unwrap(),
            str_of(v, "go_challenge"),
            "{name}: challenge text"
        );
        assert_eq!(
            d.contract_hash_hex().unwrap(),
            str_of(v, "go_hash"),
            "{name}: hash"
        );
        assert_eq!(
            hex::encode(d.challenge_hash().unwrap()),
            str_of(v, "go_hash")
        );
        // Our JSON reads back to the same deployment (and the same hash).
        let again: Deployment = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(again, d, "{name}: JSON round trip");
    }
    // The one known SDK/zos difference stays visible: network-light's unset fields.
    let light = &deployments["light"];
    assert_ne!(light["ts_hash"], light["go_hash"]);
}

#[test]
fn sdk_deployment_signatures_verify_and_ed25519_is_identical() {
    let g = golden();
    let phrase = str_of(&g["identities"][0], "secret");
    for (name, v) in g["deployments"].as_object().unwrap() {
        let Some(sigs) = v.get("sdk_signatures") else {
            continue;
        };
        let base: Deployment = serde_json::from_value(v["input"].clone()).unwrap();
        for (type_name, sig) in sigs.as_object().unwrap() {
            let id = Identity::from_secret(phrase, key_type(type_name)).unwrap();
            let mut theirs = base.clone();
            theirs.signature_requirement.signatures =
                vec![serde_json::from_value(sig.clone()).expect("signature entry")];
            let twin = base.twin_id;
            let keys = |t: u32| (t == twin).then(|| id.public_key());
            if base.signature_requirement.requests.len() == 1 {
                verify_deployment_signatures(&theirs, keys)
                    .unwrap_or_else(|e| panic!("{name}/{type_name}: SDK signature refused: {e}"));
            } else {
                // Multi-request deployments need every twin's signature; check the one we have.
                let raw = unhex(str_of(sig, "signature"));
                verify_signature(
                    id.key_type(),
                    &id.public_key(),
                    &base.challenge_hash().unwrap(),
                    &raw,
                )
                .unwrap();
            }
            let mut ours = base.clone();
            ours.sign(twin, &id).unwrap();
            let ours_sig = &ours.signature_requirement.signatures[0];
            assert_eq!(ours_sig.signature_type, str_of(sig, "signature_type"));
            if id.key_type() == KeyType::Ed25519 {
                assert_eq!(
                    ours_sig.signature,
                    str_of(sig, "signature"),
                    "{name}: ed25519 is deterministic"
                );
            }
        }
    }
}

#[test]
fn identities_match_polkadot() {
    let g = golden();
    for v in g["identities"].as_array().unwrap() {
        let secret = str_of(v, "secret");
        if let Some(mini) = v["mini_secret"].as_str() {
            assert_eq!(
                hex::encode(*mini_secret_from_phrase(secret).unwrap()),
                mini.trim_start_matches("0x")
            );
        }
        for kind in [KeyType::Sr25519, KeyType::Ed25519] {
            let id = Identity::from_secret(secret, kind).unwrap();
            let expected = &v[kind.signature_type()];
            assert_eq!(
                format!("0x{}", hex::encode(id.public_key())),
                str_of(expected, "public_key")
            );
            assert_eq!(id.ss58_address(), str_of(expected, "ss58"));
            assert_eq!(
                identity::ss58_decode(str_of(expected, "ss58")),
                Some((id.public_key(), identity::SS58_PREFIX_SUBSTRATE))
            );
            assert_eq!(
                format!("0x{}", hex::encode(id.e2e_public_key())),
                str_of(v, "e2e_public_key")
            );
        }
    }
}

#[test]
fn polkadot_signatures_verify_in_rust() {
    let g = golden();
    for v in g["polkadot_signatures"].as_array().unwrap() {
        let kind = key_type(str_of(v, "key_type"));
        let id = Identity::from_secret(str_of(v, "secret"), kind).unwrap();
        let public = key32(str_of(v, "public_key"));
        assert_eq!(public, id.public_key());
        let message = unhex(str_of(v, "message"));
        let signature = unhex(str_of(v, "signature"));
        verify_signature(kind, &public, &message, &signature).unwrap();
        if kind == KeyType::Ed25519 {
            assert_eq!(id.sign(&message), signature);
        }
    }
}

#[test]
fn rust_signatures_verified_by_polkadot() {
    let g = golden();
    let made = g["rust_made_signatures"]
        .as_array()
        .expect("rust_made_signatures");
    assert!(
        made.len() >= 2,
        "regenerate golden.json after emit_rust_signatures (see golden.mjs)"
    );
    for v in made {
        assert_eq!(v["polkadot_verified"], Value::Bool(true), "{v}");
        let kind = key_type(str_of(v, "key_type"));
        verify_signature(
            kind,
            &key32(str_of(v, "public_key")),
            &unhex(str_of(v, "message")),
            &unhex(str_of(v, "signature")),
        )
        .unwrap();
    }
}

#[test]
fn envelopes_match_the_ts_client() {
    let g = golden();
    for v in g["envelopes"].as_array().unwrap() {
        let kind = key_type(str_of(v, "key_type"));
        let id = Identity::from_secret(str_of(v, "secret"), kind).unwrap();
        let encoded = unhex(str_of(v, "encoded"));
        let envelope = Envelope::decode(encoded.as_slice()).expect("envelope decodes");
        assert_eq!(envelope.source.as_ref().map(|a| a.twin), Some(4242));
        assert_eq!(envelope.schema.as_deref(), Some(rmb::SCHEMA_JSON));
        assert!(
            matches!(&envelope.message, Some(rmb::envelope::Message::Request(r)) if r.command == "zos.deployment.deploy")
        );
        assert_eq!(
            hex::encode(rmb::challenge_hash(&envelope)),
            str_of(v, "challenge_md5")
        );
        assert_eq!(
            hex::encode(envelope.signature.as_deref().unwrap()),
            str_of(v, "signature")
        );
        rmb::verify_envelope(&envelope, &id.public_key()).unwrap();
        // Re-encoding gives the same bytes, and our signature of it is the TS one for ed25519.
        assert_eq!(envelope.encode_to_vec(), encoded);
        let mut ours = envelope.clone();
        rmb::sign_envelope(&mut ours, &id);
        rmb::verify_envelope(&ours, &id.public_key()).unwrap();
        if kind == KeyType::Ed25519 {
            assert_eq!(ours.encode_to_vec(), encoded);
        }
    }
}

#[test]
fn relay_tokens_match_the_ts_client() {
    let g = golden();
    for v in g["tokens"].as_array().unwrap() {
        let kind = key_type(str_of(v, "key_type"));
        let id = Identity::from_secret(str_of(v, "secret"), kind).unwrap();
        let now = v["now"].as_u64().unwrap();
        let token = str_of(v, "token");
        let claims =
            jwt::verify_relay_token(token, &id.public_key(), now).expect("TS token verifies");
        assert_eq!(claims.sub as u64, v["twin"].as_u64().unwrap());
        assert_eq!(claims.sid.as_deref(), v["session"].as_str());
        let ours = jwt::build_relay_token(
            &id,
            claims.sub,
            claims.sid.as_deref(),
            now,
            v["ttl"].as_u64().unwrap(),
        );
        if kind == KeyType::Ed25519 {
            assert_eq!(ours, token);
        } else {
            assert_eq!(
                ours.rsplit_once('.').unwrap().0,
                token.rsplit_once('.').unwrap().0
            );
        }
    }
}

#[test]
fn e2e_matches_the_ts_client() {
    let g = golden();
    let v = &g["e2e"];
    let sender = Identity::from_secret(str_of(v, "sender_secret"), KeyType::Sr25519).unwrap();
    let receiver = Identity::from_secret(str_of(v, "receiver_secret"), KeyType::Ed25519).unwrap();
    let shared = e2e::shared_key(&sender, &receiver.e2e_public_key()).unwrap();
    assert_eq!(hex::encode(*shared), str_of(v, "shared_key"));
    let nonce: [u8; 12] = unhex(str_of(v, "nonce")).try_into().unwrap();
    let plaintext = str_of(v, "plaintext").as_bytes();
    let payload =
        e2e::encrypt_with_nonce(&sender, &receiver.e2e_public_key(), plaintext, nonce).unwrap();
    assert_eq!(hex::encode(&payload), str_of(v, "payload"));
    let opened = e2e::decrypt(
        &receiver,
        &sender.e2e_public_key(),
        &unhex(str_of(v, "payload")),
    )
    .unwrap();
    assert_eq!(opened, plaintext);
}
