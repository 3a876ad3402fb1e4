//! Reliable Message Bus (RMB) wire formats: the protobuf `Envelope` relayed between twins, its
//! signature, the relay login token ([`jwt`]) and end-to-end payload encryption ([`e2e`]).
//!
//! Everything here follows rmb-rs (`proto/types.proto`, `src/types/mod.rs`, `src/token`,
//! `src/peer/e2e`), because zos nodes talk through `rmb-peer` from that repository. [`client`] is
//! the WebSocket peer built on them.

pub mod client;
pub mod e2e;
pub mod jwt;

use md5::{Digest as _, Md5};

use crate::identity::{Identity, SignatureError, verify_prefixed_signature};

/// Schema string SDKs put on JSON payloads.
pub const SCHEMA_JSON: &str = "application/json";

/// A request: the command the destination should run.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub command: String,
}

/// A reply carrying a result in the payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {}

/// A reply carrying an application error instead of a payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorReply {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// A twin plus, optionally, one of its sessions (`sid` of its relay connection).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Address {
    #[prost(uint32, tag = "1")]
    pub twin: u32,
    #[prost(string, optional, tag = "2")]
    pub connection: Option<String>,
}

/// Application-level keepalive for clients that cannot send WebSocket pings.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Pong {}

/// One RMB message. Field numbers are rmb-rs `proto/types.proto`'s.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Random id; replies carry the request's uid.
    #[prost(string, tag = "1")]
    pub uid: String,
    #[prost(string, optional, tag = "2")]
    pub tags: Option<String>,
    /// Unix seconds when sent.
    #[prost(uint64, tag = "3")]
    pub timestamp: u64,
    /// Time to live in seconds from `timestamp`.
    #[prost(uint64, tag = "4")]
    pub expiration: u64,
    #[prost(message, optional, tag = "5")]
    pub source: Option<Address>,
    #[prost(message, optional, tag = "6")]
    pub destination: Option<Address>,
    #[prost(oneof = "envelope::Message", tags = "7, 8, 12, 15, 16")]
    pub message: Option<envelope::Message>,
    /// Type prefix byte ‖ signature of the MD5 of [`challenge`].
    #[prost(bytes = "vec", optional, tag = "9")]
    pub signature: Option<Vec<u8>>,
    #[prost(string, optional, tag = "10")]
    pub schema: Option<String>,
    /// Deprecated by rmb-rs but still signed when present.
    #[prost(string, optional, tag = "11")]
    pub federation: Option<String>,
    #[prost(oneof = "envelope::Payload", tags = "13, 14")]
    pub payload: Option<envelope::Payload>,
    /// Deprecated by rmb-rs but still signed.
    #[prost(string, repeated, tag = "17")]
    pub relays: Vec<String>,
}

pub mod envelope {
    /// What kind of message the envelope carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Message {
        #[prost(message, tag = "7")]
        Request(super::Request),
        #[prost(message, tag = "8")]
        Response(super::Response),
        #[prost(message, tag = "12")]
        Error(super::ErrorReply),
        #[prost(message, tag = "15")]
        Ping(super::Ping),
        #[prost(message, tag = "16")]
        Pong(super::Pong),
    }

    /// The body: plain bytes, or [`crate::rmb::e2e`] ciphertext.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Payload {
        #[prost(bytes = "vec", tag = "13")]
        Plain(Vec<u8>),
        #[prost(bytes = "vec", tag = "14")]
        Cipher(Vec<u8>),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message is not signed")]
    Unsigned,
    #[error("envelope signature: {0}")]
    Signature(#[from] SignatureError),
}

fn challenge_address(address: Option<&Address>, out: &mut Vec<u8>) {
    // rmb-rs reads an absent address as the default one (twin 0, no session).
    let twin = address.map_or(0, |a| a.twin);
    out.extend_from_slice(twin.to_string().as_bytes());
    if let Some(connection) = address.and_then(|a| a.connection.as_deref()) {
        out.extend_from_slice(connection.as_bytes());
    }
}

/// The bytes whose MD5 an envelope signature covers, in rmb-rs's order: uid, tags, timestamp,
/// expiration, source, destination, command (or error code + message), schema, federation,
/// payload bytes, relays. Absent optional fields contribute nothing.
pub fn challenge(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(envelope.uid.as_bytes());
    if let Some(tags) = &envelope.tags {
        out.extend_from_slice(tags.as_bytes());
    }
    out.extend_from_slice(envelope.timestamp.to_string().as_bytes());
    out.extend_from_slice(envelope.expiration.to_string().as_bytes());
    challenge_address(envelope.source.as_ref(), &mut out);
    challenge_address(envelope.destination.as_ref(), &mut out);
    match &envelope.message {
        Some(envelope::Message::Request(request)) => {
            out.extend_from_slice(request.command.as_bytes())
        }
        Some(envelope::Message::Error(error)) => {
            out.extend_from_slice(error.code.to_string().as_bytes());
            out.extend_from_slice(error.message.as_bytes());
        }
        Some(
            envelope::Message::Response(_)
            | envelope::Message::Ping(_)
            | envelope::Message::Pong(_),
        )
        | None => {}
    }
    if let Some(schema) = &envelope.schema {
        out.extend_from_slice(schema.as_bytes());
    }
    if let Some(federation) = &envelope.federation {
        out.extend_from_slice(federation.as_bytes());
    }
    match &envelope.payload {
        Some(envelope::Payload::Plain(data) | envelope::Payload::Cipher(data)) => {
            out.extend_from_slice(data)
        }
        None => {}
    }
    for relay in &envelope.relays {
        out.extend_from_slice(relay.as_bytes());
    }
    out
}

/// MD5 of [`challenge`]: the message the envelope signature signs.
pub fn challenge_hash(envelope: &Envelope) -> [u8; 16] {
    Md5::digest(challenge(envelope)).into()
}

/// Signs the envelope in place (prefix byte ‖ signature of the raw 16-byte digest). Sign last:
/// every other field is covered.
pub fn sign_envelope(envelope: &mut Envelope, identity: &Identity) {
    envelope.signature = Some(identity.sign_prefixed(&challenge_hash(envelope)));
}

/// Checks an envelope's signature against the sender twin's account id (from the chain).
pub fn verify_envelope(
    envelope: &Envelope,
    sender_account: &[u8; 32],
) -> Result<(), EnvelopeError> {
    let signature = envelope
        .signature
        .as_deref()
        .ok_or(EnvelopeError::Unsigned)?;
    verify_prefixed_signature(sender_account, &challenge_hash(envelope), signature)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::KeyType;
    use prost::Message as _;

    fn request() -> Envelope {
        Envelope {
            uid: "u1".into(),
            tags: None,
            timestamp: 1700000000,
            expiration: 300,
            source: Some(Address {
                twin: 7,
                connection: Some("tf-1".into()),
            }),
            destination: Some(Address {
                twin: 11,
                connection: None,
            }),
            message: Some(envelope::Message::Request(Request {
                command: "zos.system.version".into(),
            })),
            signature: None,
            schema: Some(SCHEMA_JSON.into()),
            federation: None,
            payload: Some(envelope::Payload::Plain(b"{}".to_vec())),
            relays: vec!["relay.grid.tf".into()],
        }
    }

    #[test]
    fn challenge_order_matches_rmb_rs() {
        assert_eq!(
            challenge(&request()),
            b"u117000000003007tf-111zos.system.versionapplication/json{}relay.grid.tf".to_vec()
        );
        let error = Envelope {
            message: Some(envelope::Message::Error(ErrorReply {
                code: 5,
                message: "bad".into(),
            })),
            tags: Some("t".into()),
            source: None,
            payload: None,
            relays: vec![],
            schema: None,
            ..request()
        };
        assert_eq!(challenge(&error), b"u1t17000000003000115bad".to_vec());
    }

    #[test]
    fn sign_then_verify_and_detect_tampering() {
        let id = Identity::from_seed(&[9u8; 32], KeyType::Sr25519).unwrap();
        let mut env = request();
        sign_envelope(&mut env, &id);
        verify_envelope(&env, &id.public_key()).unwrap();
        let bytes = env.encode_to_vec();
        let mut decoded = Envelope::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, env);
        decoded.timestamp += 1;
        assert!(verify_envelope(&decoded, &id.public_key()).is_err());
        decoded.signature = None;
        assert!(matches!(
            verify_envelope(&decoded, &id.public_key()),
            Err(EnvelopeError::Unsigned)
        ));
    }
}
