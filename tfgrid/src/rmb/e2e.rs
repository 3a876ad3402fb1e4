//! End-to-end encryption of RMB payloads between two twins (rmb-rs `src/peer/e2e`).
//!
//! Both sides derive the same AES-256 key: SHA-256 of the x coordinate of the ECDH point
//! (our secp256k1 secret × their compressed public key, the twin's `pk` on chain). The payload is
//! `nonce (12 random bytes) ‖ AES-256-GCM ciphertext+tag`. rmb-rs takes the first 32 bytes of
//! `secp256k1::ecdh::shared_secret_point` (x ‖ y) and the TS client slices x out of the
//! compressed point; k256's `raw_secret_bytes` is that same x coordinate.

use aes_gcm::aead::{Aead as _, KeyInit as _};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::identity::Identity;

pub const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("peer public key is not a valid secp256k1 point")]
    BadPublicKey,
    #[error("ciphertext is shorter than its nonce")]
    TooShort,
    #[error("ciphertext does not decrypt (wrong key or tampered)")]
    Decrypt,
}

/// The AES-256 key shared with the holder of `their_public` (33-byte compressed, or 65-byte
/// uncompressed SEC1).
pub fn shared_key(
    identity: &Identity,
    their_public: &[u8],
) -> Result<Zeroizing<[u8; 32]>, E2eError> {
    let their =
        k256::PublicKey::from_sec1_bytes(their_public).map_err(|_| E2eError::BadPublicKey)?;
    let shared =
        k256::ecdh::diffie_hellman(identity.e2e_secret().to_nonzero_scalar(), their.as_affine());
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&Sha256::digest(shared.raw_secret_bytes()));
    Ok(key)
}

/// Encrypts `plaintext` for `their_public` with a fresh random nonce.
pub fn encrypt(
    identity: &Identity,
    their_public: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, E2eError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    encrypt_with_nonce(identity, their_public, plaintext, nonce)
}

/// Like [`encrypt`] with a caller-chosen nonce. A nonce must never repeat under one key pair;
/// this exists for reproducible test vectors.
pub fn encrypt_with_nonce(
    identity: &Identity,
    their_public: &[u8],
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, E2eError> {
    let key = shared_key(identity, their_public)?;
    let cipher = Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| E2eError::BadPublicKey)?;
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| E2eError::Decrypt)?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend(sealed);
    Ok(out)
}

/// Decrypts a payload `their_public`'s owner encrypted for us.
pub fn decrypt(
    identity: &Identity,
    their_public: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, E2eError> {
    if payload.len() < NONCE_LEN {
        return Err(E2eError::TooShort);
    }
    let (nonce, sealed) = payload.split_at(NONCE_LEN);
    let key = shared_key(identity, their_public)?;
    let cipher = Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| E2eError::BadPublicKey)?;
    cipher
        .decrypt(Nonce::from_slice(nonce), sealed)
        .map_err(|_| E2eError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::KeyType;

    #[test]
    fn both_sides_agree_and_round_trip() {
        let a = Identity::from_seed(&[1u8; 32], KeyType::Sr25519).unwrap();
        let b = Identity::from_seed(&[2u8; 32], KeyType::Ed25519).unwrap();
        assert_eq!(
            *shared_key(&a, &b.e2e_public_key()).unwrap(),
            *shared_key(&b, &a.e2e_public_key()).unwrap()
        );
        let sealed = encrypt(&a, &b.e2e_public_key(), b"hello world").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 11 + 16);
        assert_eq!(
            decrypt(&b, &a.e2e_public_key(), &sealed).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn tampering_and_bad_keys_are_refused() {
        let a = Identity::from_seed(&[1u8; 32], KeyType::Sr25519).unwrap();
        let b = Identity::from_seed(&[2u8; 32], KeyType::Sr25519).unwrap();
        let mut sealed = encrypt(&a, &b.e2e_public_key(), b"x").unwrap();
        sealed[NONCE_LEN] ^= 1;
        assert!(matches!(
            decrypt(&b, &a.e2e_public_key(), &sealed),
            Err(E2eError::Decrypt)
        ));
        assert!(matches!(
            decrypt(&b, &a.e2e_public_key(), &[0; 5]),
            Err(E2eError::TooShort)
        ));
        assert!(matches!(
            encrypt(&a, &[5u8; 33], b"x"),
            Err(E2eError::BadPublicKey)
        ));
    }
}
