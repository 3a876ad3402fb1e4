//! A twin's keys, derived from a BIP-39 phrase or a `0x` hex seed exactly as substrate (polkadot
//! keyring, `subxt-signer`, the Go and TS grid SDKs, rmb-rs) does, so the account id we compute is
//! the one registered on TFChain.
//!
//! * The 32-byte seed ("mini secret") of a phrase is substrate's, not BIP-39's: the first 32
//!   bytes of PBKDF2-HMAC-SHA512 over the phrase's *entropy* with salt `"mnemonic"` and 2048
//!   rounds. A `0x` hex seed is used as is.
//! * sr25519: schnorrkel mini secret expanded in Ed25519 mode, signing context `substrate`
//!   (signatures are randomized). ed25519: the seed is the RFC 8032 secret.
//! * The RMB end-to-end key is a secp256k1 secret equal to the same seed (rmb-rs `e2e::Pair`).

use std::fmt;

use ed25519_dalek::{Signer as _, Verifier as _};
use pbkdf2::pbkdf2_hmac;
use sha2::Sha512;
use zeroize::Zeroizing;

/// SS58 address format of the generic substrate network, which TFChain uses.
pub const SS58_PREFIX_SUBSTRATE: u16 = 42;

/// Signing context substrate uses for sr25519.
const SR25519_CONTEXT: &[u8] = b"substrate";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid BIP-39 phrase: {0}")]
    InvalidPhrase(String),
    #[error("invalid hex seed: expected 0x followed by 64 hex digits")]
    InvalidSeed,
    #[error("seed is not usable as a secp256k1 secret key")]
    InvalidE2eSecret,
    #[error("invalid key type '{0}' (expected sr25519 or ed25519)")]
    InvalidKeyType(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed public key")]
    BadPublicKey,
    #[error("malformed signature")]
    BadSignatureEncoding,
    #[error("signature does not verify")]
    Mismatch,
    #[error("unknown signature type prefix {0:#04x}")]
    UnknownPrefix(u8),
}

/// Which signature scheme a twin's account key uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Sr25519,
    Ed25519,
}

impl KeyType {
    /// The deployment `signature_type` string.
    pub fn signature_type(self) -> &'static str {
        match self {
            KeyType::Sr25519 => "sr25519",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// The byte RMB puts before a signature so a verifier holding only a 32-byte account id
    /// knows which scheme to use.
    pub fn rmb_prefix(self) -> u8 {
        match self {
            KeyType::Sr25519 => b's',
            KeyType::Ed25519 => b'e',
        }
    }

    pub fn from_rmb_prefix(prefix: u8) -> Option<Self> {
        match prefix {
            b's' => Some(KeyType::Sr25519),
            b'e' => Some(KeyType::Ed25519),
            _ => None,
        }
    }
}

impl std::str::FromStr for KeyType {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sr25519" => Ok(KeyType::Sr25519),
            "ed25519" => Ok(KeyType::Ed25519),
            _ => Err(IdentityError::InvalidKeyType(s.to_string())),
        }
    }
}

enum SigningKey {
    Sr25519(Box<schnorrkel::Keypair>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A twin's signing key plus its RMB e2e key. Cheap to share by reference; never printed.
pub struct Identity {
    signing: SigningKey,
    public: [u8; 32],
    e2e_secret: k256::SecretKey,
}

/// Only the scheme and the public address: the seed must never reach a log.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("key_type", &self.key_type())
            .field("address", &self.ss58_address())
            .finish_non_exhaustive()
    }
}

/// Substrate's mini secret of a BIP-39 phrase (no password), as in `substrate-bip39`.
pub fn mini_secret_from_phrase(phrase: &str) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let mnemonic = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, phrase.trim())
        .map_err(|e| IdentityError::InvalidPhrase(e.to_string()))?;
    let (entropy, len) = mnemonic.to_entropy_array();
    let entropy = Zeroizing::new(entropy);
    let mut seed = Zeroizing::new([0u8; 64]);
    pbkdf2_hmac::<Sha512>(&entropy[..len], b"mnemonic", 2048, seed.as_mut());
    let mut mini = Zeroizing::new([0u8; 32]);
    mini.copy_from_slice(&seed[..32]);
    Ok(mini)
}

fn seed_from_hex(text: &str) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let digits = text.strip_prefix("0x").ok_or(IdentityError::InvalidSeed)?;
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(digits, seed.as_mut()).map_err(|_| IdentityError::InvalidSeed)?;
    Ok(seed)
}

impl Identity {
    /// From what operators configure: a BIP-39 phrase, or `0x` + 64 hex digits of seed.
    pub fn from_secret(secret: &str, key_type: KeyType) -> Result<Self, IdentityError> {
        let secret = secret.trim();
        let seed = if secret.starts_with("0x") {
            seed_from_hex(secret)?
        } else {
            mini_secret_from_phrase(secret)?
        };
        Self::from_seed(&seed, key_type)
    }

    /// From the 32-byte seed (mini secret).
    pub fn from_seed(seed: &[u8; 32], key_type: KeyType) -> Result<Self, IdentityError> {
        let (signing, public) = match key_type {
            KeyType::Sr25519 => {
                // A 32-byte slice is always a valid mini secret.
                let mini = schnorrkel::MiniSecretKey::from_bytes(seed)
                    .map_err(|_| IdentityError::InvalidSeed)?;
                let pair = mini.expand_to_keypair(schnorrkel::ExpansionMode::Ed25519);
                let public = pair.public.to_bytes();
                (SigningKey::Sr25519(Box::new(pair)), public)
            }
            KeyType::Ed25519 => {
                let key = ed25519_dalek::SigningKey::from_bytes(seed);
                let public = key.verifying_key().to_bytes();
                (SigningKey::Ed25519(Box::new(key)), public)
            }
        };
        let e2e_secret =
            k256::SecretKey::from_slice(seed).map_err(|_| IdentityError::InvalidE2eSecret)?;
        Ok(Identity {
            signing,
            public,
            e2e_secret,
        })
    }

    pub fn key_type(&self) -> KeyType {
        match self.signing {
            SigningKey::Sr25519(_) => KeyType::Sr25519,
            SigningKey::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// The account id: the 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The account id in SS58 form (prefix 42), as the chain and the grid proxy show it.
    pub fn ss58_address(&self) -> String {
        ss58_encode(&self.public, SS58_PREFIX_SUBSTRATE)
    }

    /// A 64-byte signature of `message` (sr25519 with context `substrate`).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.signing {
            SigningKey::Sr25519(pair) => pair
                .sign_simple(SR25519_CONTEXT, message)
                .to_bytes()
                .to_vec(),
            SigningKey::Ed25519(key) => key.sign(message).to_bytes().to_vec(),
        }
    }

    /// RMB form: the type prefix byte followed by the 64-byte signature.
    pub fn sign_prefixed(&self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(65);
        out.push(self.key_type().rmb_prefix());
        out.extend(self.sign(message));
        out
    }

    /// Compressed (33-byte) secp256k1 public key for RMB end-to-end encryption; this is what
    /// goes into the twin's `pk` on chain.
    pub fn e2e_public_key(&self) -> [u8; 33] {
        use k256::elliptic_curve::sec1::ToEncodedPoint as _;
        let point = self.e2e_secret.public_key().to_encoded_point(true);
        let mut out = [0u8; 33];
        out.copy_from_slice(point.as_bytes());
        out
    }

    pub(crate) fn e2e_secret(&self) -> &k256::SecretKey {
        &self.e2e_secret
    }
}

/// Verifies a 64-byte signature of `message` by the account `public` of the given scheme.
pub fn verify_signature(
    key_type: KeyType,
    public: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    match key_type {
        KeyType::Sr25519 => {
            let public = schnorrkel::PublicKey::from_bytes(public)
                .map_err(|_| SignatureError::BadPublicKey)?;
            let signature = schnorrkel::Signature::from_bytes(signature)
                .map_err(|_| SignatureError::BadSignatureEncoding)?;
            public
                .verify_simple(SR25519_CONTEXT, message, &signature)
                .map_err(|_| SignatureError::Mismatch)
        }
        KeyType::Ed25519 => {
            let public = ed25519_dalek::VerifyingKey::from_bytes(public)
                .map_err(|_| SignatureError::BadPublicKey)?;
            let signature = ed25519_dalek::Signature::from_slice(signature)
                .map_err(|_| SignatureError::BadSignatureEncoding)?;
            // Cofactorless like Go's crypto/ed25519, which zos and the relay's peers use.
            public
                .verify(message, &signature)
                .map_err(|_| SignatureError::Mismatch)
        }
    }
}

/// Verifies an RMB-style prefixed signature (65 bytes) against a bare account id, taking the
/// scheme from the prefix like rmb-rs's `AccountId32::verify`.
pub fn verify_prefixed_signature(
    public: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    if signature.len() != 65 {
        return Err(SignatureError::BadSignatureEncoding);
    }
    let key_type = KeyType::from_rmb_prefix(signature[0])
        .ok_or(SignatureError::UnknownPrefix(signature[0]))?;
    verify_signature(key_type, public, message, &signature[1..])
}

const SS58_CHECKSUM_CONTEXT: &[u8] = b"SS58PRE";

fn ss58_checksum(payload: &[u8]) -> [u8; 2] {
    use blake2::{Blake2b512, Digest as _};
    let mut hasher = Blake2b512::new();
    hasher.update(SS58_CHECKSUM_CONTEXT);
    hasher.update(payload);
    let hash = hasher.finalize();
    [hash[0], hash[1]]
}

fn ss58_prefix_bytes(prefix: u16) -> Vec<u8> {
    if prefix < 64 {
        vec![prefix as u8]
    } else {
        // Two-byte form of the SS58 spec (prefixes 64..16383).
        let first = ((prefix & 0b0000_0000_1111_1100) as u8 >> 2) | 0b0100_0000;
        let second = ((prefix >> 8) as u8) | ((prefix & 0b0000_0000_0000_0011) as u8) << 6;
        vec![first, second]
    }
}

/// SS58 text of a 32-byte account id.
pub fn ss58_encode(public: &[u8; 32], prefix: u16) -> String {
    let mut payload = ss58_prefix_bytes(prefix);
    payload.extend_from_slice(public);
    let checksum = ss58_checksum(&payload);
    payload.extend_from_slice(&checksum);
    bs58::encode(payload).into_string()
}

/// Parses an SS58 account address into (account id, network prefix).
pub fn ss58_decode(address: &str) -> Option<([u8; 32], u16)> {
    let raw = bs58::decode(address).into_vec().ok()?;
    let (prefix, prefix_len) = match raw.first()? {
        b @ 0..=63 => (u16::from(*b), 1),
        64..=127 => {
            let (a, b) = (u16::from(raw[0]), u16::from(*raw.get(1)?));
            (
                ((a & 0b0011_1111) << 2) | (b >> 6) | ((b & 0b0011_1111) << 8),
                2,
            )
        }
        _ => return None,
    };
    if raw.len() != prefix_len + 32 + 2 {
        return None;
    }
    let (payload, checksum) = raw.split_at(prefix_len + 32);
    if ss58_checksum(payload) != checksum {
        return None;
    }
    let mut public = [0u8; 32];
    public.copy_from_slice(&payload[prefix_len..]);
    Some((public, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV_PHRASE: &str =
        "bottom drive obey lake curtain smoke basket hold race lonely fit walk";

    #[test]
    fn dev_phrase_gives_the_well_known_root_key() {
        let id = Identity::from_secret(DEV_PHRASE, KeyType::Sr25519).unwrap();
        assert_eq!(
            hex::encode(id.public_key()),
            "46ebddef8cd9bb167dc30878d7113b7e168e6f0646beffd77d69d39bad76b47a"
        );
        assert_eq!(
            id.ss58_address(),
            "5DfhGyQdFobKM8NsWvEeAKk5EQQgYe9AydgJ7rMB6E1EqRzV"
        );
    }

    #[test]
    fn sign_verify_round_trip_both_schemes() {
        for key_type in [KeyType::Sr25519, KeyType::Ed25519] {
            let id = Identity::from_secret(DEV_PHRASE, key_type).unwrap();
            let sig = id.sign(b"hello");
            assert_eq!(sig.len(), 64);
            verify_signature(key_type, &id.public_key(), b"hello", &sig).unwrap();
            assert_eq!(
                verify_signature(key_type, &id.public_key(), b"hellO", &sig),
                Err(SignatureError::Mismatch)
            );
            let prefixed = id.sign_prefixed(b"m");
            assert_eq!(prefixed[0], key_type.rmb_prefix());
            verify_prefixed_signature(&id.public_key(), b"m", &prefixed).unwrap();
        }
    }

    #[test]
    fn hex_seed_and_phrase_agree() {
        let seed = mini_secret_from_phrase(DEV_PHRASE).unwrap();
        let from_hex =
            Identity::from_secret(&format!("0x{}", hex::encode(*seed)), KeyType::Sr25519).unwrap();
        let from_phrase = Identity::from_secret(DEV_PHRASE, KeyType::Sr25519).unwrap();
        assert_eq!(from_hex.public_key(), from_phrase.public_key());
        assert_eq!(from_hex.e2e_public_key(), from_phrase.e2e_public_key());
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(Identity::from_secret("not a phrase", KeyType::Sr25519).is_err());
        assert!(Identity::from_secret("0x1234", KeyType::Sr25519).is_err());
        assert!(
            Identity::from_secret(&format!("0x{}", "zz".repeat(32)), KeyType::Ed25519).is_err()
        );
        // Bad checksum word.
        let bad = DEV_PHRASE.replace("walk", "wall");
        assert!(Identity::from_secret(&bad, KeyType::Sr25519).is_err());
    }

    #[test]
    fn debug_never_shows_the_seed() {
        let seed = mini_secret_from_phrase(DEV_PHRASE).unwrap();
        let id = Identity::from_seed(&seed, KeyType::Ed25519).unwrap();
        let text = format!("{id:?}");
        assert!(!text.contains(&hex::encode(*seed)), "{text}");
        assert!(text.contains("Ed25519") && text.contains(&id.ss58_address()));
    }

    #[test]
    fn ss58_round_trip_and_checksum() {
        let public = [7u8; 32];
        for prefix in [0u16, 42, 63, 64, 255, 16383] {
            let text = ss58_encode(&public, prefix);
            assert_eq!(
                ss58_decode(&text),
                Some((public, prefix)),
                "prefix {prefix}"
            );
        }
        let mut text = ss58_encode(&public, 42).into_bytes();
        let last = text.len() - 1;
        text[last] = if text[last] == b'1' { b'2' } else { b'1' };
        assert_eq!(ss58_decode(std::str::from_utf8(&text).unwrap()), None);
    }

    #[test]
    fn key_type_strings() {
        assert_eq!("SR25519".parse::<KeyType>().unwrap(), KeyType::Sr25519);
        assert_eq!(KeyType::Ed25519.signature_type(), "ed25519");
        assert_eq!(KeyType::from_rmb_prefix(b's'), Some(KeyType::Sr25519));
        assert!("rsa".parse::<KeyType>().is_err());
    }
}
