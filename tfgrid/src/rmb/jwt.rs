//! The token a twin presents when it opens its relay WebSocket (`wss://relay/?<token>`).
//!
//! It looks like a JWT with `alg: RS512`, but no RSA is involved: the signature part is
//! base64url (no padding) of the RMB type prefix byte ‖ the twin key's signature over the ASCII
//! text `<b64 header>.<b64 claims>`. The relay checks it against the twin's on-chain account id
//! and refuses a header whose `alg` is not `RS512` (rmb-rs uses the `jwt` crate's check).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, SignatureError, verify_prefixed_signature};

/// The header the TS and Go SDKs send.
const HEADER_JSON: &str = r#"{"alg":"RS512","typ":"JWT"}"#;

/// Token lifetime the Go SDK uses; tokens are only checked when the socket opens.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 60;

/// The claims of a relay token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayClaims {
    /// Twin id.
    pub sub: u32,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Session id: one connection per (twin, sid); `None` is reserved by `rmb-peer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is not three dot-separated parts")]
    Malformed,
    #[error("token part is not base64url: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("token part is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("token algorithm is '{0}', expected RS512")]
    Algorithm(String),
    #[error("token signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
}

/// Builds a relay token for `twin_id` valid from `now` for `ttl_secs`.
pub fn build_relay_token(
    identity: &Identity,
    twin_id: u32,
    session: Option<&str>,
    now: u64,
    ttl_secs: u64,
) -> String {
    let claims = RelayClaims {
        sub: twin_id,
        iat: now,
        exp: now.saturating_add(ttl_secs),
        sid: session.map(str::to_string),
    };
    // A struct of integers and an optional string always serializes.
    let claims_json = serde_json::to_string(&claims).unwrap_or_default();
    let signed_part = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER_JSON),
        URL_SAFE_NO_PAD.encode(claims_json)
    );
    let signature = identity.sign_prefixed(signed_part.as_bytes());
    format!("{signed_part}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Reads the claims without checking anything, so a relay can look up the twin's key first.
pub fn unverified_claims(token: &str) -> Result<RelayClaims, TokenError> {
    let mut parts = token.split('.');
    let (Some(_), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims)?)?)
}

/// Checks a relay token as the relay does: `RS512` header, signature by `account` (the twin's
/// account id), and not expired at `now`. Returns the claims.
pub fn verify_relay_token(
    token: &str,
    account: &[u8; 32],
    now: u64,
) -> Result<RelayClaims, TokenError> {
    let (signed_part, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, _) = signed_part.split_once('.').ok_or(TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
    if header.alg != "RS512" {
        return Err(TokenError::Algorithm(header.alg));
    }
    let claims = unverified_claims(token)?;
    verify_prefixed_signature(
        account,
        signed_part.as_bytes(),
        &URL_SAFE_NO_PAD.decode(signature)?,
    )?;
    if now > claims.exp {
        return Err(TokenError::Expired {
            exp: claims.exp,
            now,
        });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::KeyType;

    #[test]
    fn token_round_trip() {
        for key_type in [KeyType::Sr25519, KeyType::Ed25519] {
            let id = Identity::from_seed(&[3u8; 32], key_type).unwrap();
            let token = build_relay_token(&id, 42, Some("tf-7"), 1000, 60);
            assert!(token.starts_with("eyJhbGciOiJSUzUxMiIsInR5cCI6IkpXVCJ9."));
            let claims = verify_relay_token(&token, &id.public_key(), 1060).unwrap();
            assert_eq!(
                claims,
                RelayClaims {
                    sub: 42,
                    iat: 1000,
                    exp: 1060,
                    sid: Some("tf-7".into())
                }
            );
            assert!(matches!(
                verify_relay_token(&token, &id.public_key(), 1061),
                Err(TokenError::Expired { .. })
            ));
            let other = Identity::from_seed(&[4u8; 32], key_type).unwrap();
            assert!(matches!(
                verify_relay_token(&token, &other.public_key(), 1000),
                Err(TokenError::Signature(_))
            ));
        }
    }

    #[test]
    fn session_is_omitted_when_absent_and_garbage_is_refused() {
        let id = Identity::from_seed(&[3u8; 32], KeyType::Ed25519).unwrap();
        let token = build_relay_token(&id, 1, None, 5, 1);
        assert_eq!(unverified_claims(&token).unwrap().sid, None);
        assert!(matches!(
            unverified_claims("a.b"),
            Err(TokenError::Malformed)
        ));
        assert!(verify_relay_token("x.y.z", &id.public_key(), 0).is_err());
    }
}
