//! Join tokens: what a pool host shows to join (`zeroci-agent join --token`). A token is
//! `zcj_<id>_<secret>`; the store keeps the id, a name and the SHA-256 of the secret, never the secret,
//! so a copy of the store lets nobody join. Revoking a token removes it.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use zeroci::encoding::{constant_time_eq, hex};

/// Every token starts so: a reader of a config file or a log knows what it is.
const PREFIX: &str = "zcj_";
/// Longest token name.
pub const MAX_NAME_LEN: usize = 64;

/// What the store keeps of a join token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Public, random: finds the record.
    pub id: String,
    /// Unique among tokens; what users revoke by.
    pub name: String,
    /// Lowercase hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// Unix milliseconds.
    pub created_at_ms: i64,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why a token name is refused.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a join token's name must have 1 to {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "a join token's name may hold letters, digits, `.`, `_` and `-`, not {bad:?}"
        ));
    }
    Ok(())
}

impl JoinToken {
    /// A new token named `name`: the record to store and the token to hand out once.
    pub fn issue(name: &str, now_ms: i64) -> Result<(JoinToken, String), String> {
        use rand::RngCore;
        validate_name(name)?;
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        let (id, secret) = (hex(&id), hex(&secret));
        let record = JoinToken {
            id: id.clone(),
            name: name.to_string(),
            secret_sha256: hex(&sha2::Sha256::digest(secret.as_bytes())),
            created_at_ms: now_ms,
        };
        Ok((record, format!("{PREFIX}{id}_{secret}")))
    }

    /// The id and secret a presented token holds; `None` when it is not shaped like a token.
    pub fn parse(token: &str) -> Option<(&str, &str)> {
        let (id, secret) = token.trim().strip_prefix(PREFIX)?.split_once('_')?;
        let hexish =
            |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hexish(id) && hexish(secret)).then_some((id, secret))
    }

    /// Whether `secret` is this token's.
    pub fn accepts(&self, secret: &str) -> bool {
        let presented = hex(&sha2::Sha256::digest(secret.as_bytes()));
        constant_time_eq(presented.as_bytes(), self.secret_sha256.as_bytes())
    }

    /// The public part, for lists: `zcj_<id>_…`.
    pub fn public_part(&self) -> String {
        format!("{PREFIX}{}_…", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_is_accepted_and_nothing_else() {
        let (record, token) = JoinToken::issue("rack-1", 5).unwrap();
        let (id, secret) = JoinToken::parse(&token).unwrap();
        assert_eq!(id, record.id);
        assert!(record.accepts(secret));
        // Change one character for sure (a random secret may lack any given digit).
        let first = if secret.starts_with('0') { "1" } else { "0" };
        assert!(!record.accepts(&format!("{first}{}", &secret[1..])));
        assert!(!record.accepts(&secret[1..]));
        assert!(
            !token.contains(&record.secret_sha256),
            "the hash is not the secret"
        );
        assert!(!format!("{record:?}").contains(&record.secret_sha256));
        let (other, _) = JoinToken::issue("rack-1", 5).unwrap();
        assert_ne!(other.id, record.id);
    }

    #[test]
    fn malformed_tokens_and_names_are_refused() {
        for bad in [
            "",
            "zcj_",
            "zcj_abc",
            "zcj__abc",
            "abc_def",
            "zcj_xyz_abc",
            "zcj_ab_c d",
        ] {
            assert!(JoinToken::parse(bad).is_none(), "{bad:?}");
        }
        assert!(validate_name("ok-name_1.2").is_ok());
        for bad in ["", "has space", "slash/", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
