//! CLI users: the client certificates `init` and `zeroci-controller user add` issue, listed in
//! `users.json` beside the CA, and revoked there by `zeroci-controller user revoke`.
//!
//! Certificates expire (the TLS layer refuses an expired one); a revoked one is refused by the control
//! API's interceptor from its next call on, without a restart: the controller re-reads the list when
//! the file changes ([`Revocations`]). Only fingerprints are kept, never keys.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;
use zeroci::pki::{CertPair, CertificateAuthority, PkiError, Role};

/// The list's file name, in the directory of the CA certificate.
pub const USERS_FILE: &str = "users.json";

/// How often the controller looks whether the list changed.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a list of issued certificates: {message}")]
    Corrupt { path: String, message: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("no issued certificate matches {0:?} (a user name, or the start of a fingerprint)")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
}

/// One issued user certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    pub name: String,
    /// `admin` or `viewer`.
    pub role: String,
    /// [`zeroci::pki::fingerprint`] of the certificate.
    pub fingerprint: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds: the certificate's own expiry.
    pub not_after: i64,
    /// Unix seconds; set by `user revoke`.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

impl IssuedCert {
    /// `valid`, `expired` or `revoked` at `now` (Unix seconds).
    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.not_after <= now {
            "expired"
        } else {
            "valid"
        }
    }
}

/// The list of issued certificates of one installation.
pub struct UserRegistry {
    path: PathBuf,
}

fn now_secs() -> i64 {
    zeroci::now_unix_ms() / 1000
}

impl UserRegistry {
    /// The list kept beside the CA certificate at `ca_cert`.
    pub fn beside(ca_cert: &Path) -> UserRegistry {
        let dir = ca_cert.parent().unwrap_or(Path::new("."));
        UserRegistry {
            path: dir.join(USERS_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every issued certificate, oldest first; empty when none was recorded yet.
    pub fn load(&self) -> Result<Vec<IssuedCert>, UsersError> {
        read_list(&self.path)
    }

    /// Issues a certificate for `name` with `role`, valid for `validity`, and records it.
    pub fn add(
        &self,
        ca: &CertificateAuthority,
        name: &str,
        role: Role,
        validity: Duration,
    ) -> Result<(CertPair, IssuedCert), UsersError> {
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
            || name.is_empty()
            || name.len() > 64
        {
            return Err(UsersError::Invalid(format!(
                "user name {name:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'"
            )));
        }
        let pair = ca.issue_user(name, role, validity)?;
        let der = zeroci::pki::first_cert_der(&pair.cert_pem)?;
        let issued = IssuedCert {
            name: name.to_string(),
            role: role.as_str().to_string(),
            fingerprint: zeroci::pki::fingerprint(&der),
            issued_at: now_secs(),
            not_after: zeroci::pki::not_after(&der)?,
            revoked_at: None,
        };
        let mut list = self.load()?;
        list.push(issued.clone());
        self.save(&list)?;
        Ok((pair, issued))
    }

    /// Revokes every certificate of the user `who`, or the one whose fingerprint starts with `who`
    /// (at least 12 characters); returns what it revoked (already revoked ones are left as they were).
    pub fn revoke(&self, who: &str) -> Result<Vec<IssuedCert>, UsersError> {
        let mut list = self.load()?;
        let by_fingerprint = who.len() >= 12 && who.bytes().all(|b| b.is_ascii_hexdigit());
        let matches = |c: &IssuedCert| {
            c.name == who || (by_fingerprint && c.fingerprint.starts_with(&who.to_lowercase()))
        };
        if !list.iter().any(matches) {
            return Err(UsersError::Unknown(who.to_string()));
        }
        let now = now_secs();
        let mut revoked = Vec::new();
        for cert in list.iter_mut().filter(|c| matches(c)) {
            if cert.revoked_at.is_none() {
                cert.revoked_at = Some(now);
                revoked.push(cert.clone());
            }
        }
        self.save(&list)?;
        Ok(revoked)
    }

    /// Written whole to a temporary file and renamed: a reader never sees half a list.
    fn save(&self, list: &[IssuedCert]) -> Result<(), UsersError> {
        let text = serde_json::to_string_pretty(list).expect("plain data serializes");
        let tmp = self.path.with_extension("json.tmp");
        zeroci::pki::write_private(&tmp, &text)?;
        std::fs::rename(&tmp, &self.path).map_err(|source| UsersError::Write {
            path: self.path.display().to_string(),
            source,
        })
    }
}

fn read_list(path: &Path) -> Result<Vec<IssuedCert>, UsersError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(UsersError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    serde_json::from_str(&text).map_err(|e| UsersError::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The revoked fingerprints as the controller sees them: re-read when `users.json` changes, looked
/// at no more than once a second.
pub struct Revocations {
    path: PathBuf,
    cache: Mutex<Cache>,
}

struct Cache {
    checked: Option<Instant>,
    /// Modification time and length of the file last read: a change of either means a re-read.
    seen: Option<(SystemTime, u64)>,
    revoked: HashSet<String>,
}

impl Revocations {
    /// Reads the list beside the CA certificate at `ca_cert` now: a list that cannot be read stops the
    /// controller at start-up rather than serving revoked users.
    pub fn load(ca_cert: &Path) -> Result<Revocations, UsersError> {
        let registry = UserRegistry::beside(ca_cert);
        let revocations = Revocations {
            path: registry.path,
            cache: Mutex::new(Cache {
                checked: None,
                seen: None,
                revoked: HashSet::new(),
            }),
        };
        revocations.refresh(Instant::now())?;
        Ok(revocations)
    }

    /// True when the certificate (DER) has been revoked.
    pub fn is_revoked(&self, der: &[u8]) -> bool {
        let now = Instant::now();
        let due = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checked
            .is_none_or(|at| now.duration_since(at) >= RELOAD_EVERY);
        if due && let Err(error) = self.refresh(now) {
            // The last list read stays in force: a half-edited file must not un-revoke anyone.
            warn!(path = %self.path.display(), %error, "cannot re-read the revoked certificates");
        }
        let fingerprint = zeroci::pki::fingerprint(der);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revoked
            .contains(&fingerprint)
    }

    fn refresh(&self, now: Instant) -> Result<(), UsersError> {
        let seen = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.checked = Some(now);
            match (&cache.seen, &seen) {
                (Some(before), Some(now_seen)) if before == now_seen => return Ok(()),
                // The list went away after it was read (moved, deleted by mistake): what it
                // revoked stays revoked; only a list that says otherwise changes that.
                (Some(_), None) => {
                    return Err(UsersError::Invalid(format!(
                        "{} is gone; the revocations read before stay in force",
                        self.path.display()
                    )));
                }
                _ => {}
            }
        }
        let revoked = read_list(&self.path)?
            .into_iter()
            .filter(|c| c.revoked_at.is_some())
            .map(|c| c.fingerprint)
            .collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.seen = seen;
        cache.revoked = revoked;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, CertificateAuthority, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (ca, pair) = CertificateAuthority::generate("test CA").unwrap();
        let ca_cert = dir.path().join("ca.crt");
        std::fs::write(&ca_cert, pair.cert_pem).unwrap();
        (dir, ca, ca_cert)
    }

    fn der(pair: &CertPair) -> Vec<u8> {
        zeroci::pki::first_cert_der(&pair.cert_pem).unwrap()
    }

    #[test]
    fn issued_certificates_are_listed_and_revoked_by_name_or_fingerprint() {
        let (_dir, ca, ca_cert) = setup();
        let registry = UserRegistry::beside(&ca_cert);
        assert!(registry.load().unwrap().is_empty());
        let day = Duration::from_secs(86_400);
        let (alice, issued) = registry.add(&ca, "alice", Role::Viewer, day).unwrap();
        let (bob1, _) = registry.add(&ca, "bob", Role::Admin, day).unwrap();
        let (bob2, _) = registry.add(&ca, "bob", Role::Admin, day).unwrap();
        assert_eq!(issued.fingerprint, zeroci::pki::fingerprint(&der(&alice)));
        assert!((issued.not_after - issued.issued_at - 86_400).abs() < 5);
        assert_eq!(issued.state(now_secs()), "valid");
        assert_eq!(issued.state(issued.not_after), "expired");

        let revocations = Revocations::load(&ca_cert).unwrap();
        assert!(!revocations.is_revoked(&der(&bob1)));
        assert_eq!(registry.revoke("bob").unwrap().len(), 2);
        assert!(
            registry.revoke("bob").unwrap().is_empty(),
            "already revoked"
        );
        let prefix = &issued.fingerprint[..12];
        assert_eq!(registry.revoke(prefix).unwrap()[0].name, "alice");
        assert!(matches!(
            registry.revoke("carol"),
            Err(UsersError::Unknown(_))
        ));

        // A fresh view (a controller starting) sees every revocation at once.
        let fresh = Revocations::load(&ca_cert).unwrap();
        for pair in [&alice, &bob1, &bob2] {
            assert!(fresh.is_revoked(&der(pair)));
        }
        let list = registry.load().unwrap();
        assert!(list.iter().all(|c| c.state(now_secs()) == "revoked"));
    }

    #[test]
    fn bad_names_and_a_corrupt_list_are_refused_and_the_last_good_list_stays_in_force() {
        let (_dir, ca, ca_cert) = setup();
        let registry = UserRegistry::beside(&ca_cert);
        for bad in ["", "a b", "x:y", &"n".repeat(65)] {
            assert!(matches!(
                registry.add(&ca, bad, Role::Viewer, Duration::from_secs(60)),
                Err(UsersError::Invalid(_))
            ));
        }
        let (pair, _) = registry
            .add(&ca, "eve", Role::Viewer, Duration::from_secs(60))
            .unwrap();
        registry.revoke("eve").unwrap();
        let revocations = Revocations::load(&ca_cert).unwrap();
        assert!(revocations.is_revoked(&der(&pair)));
        std::fs::write(registry.path(), "{ not json").unwrap();
        assert!(matches!(registry.load(), Err(UsersError::Corrupt { .. })));
        // Forces a re-read: the broken file does not un-revoke eve, nor does a missing one.
        revocations.cache.lock().unwrap().checked = None;
        assert!(revocations.is_revoked(&der(&pair)));
        assert!(
            Revocations::load(&ca_cert).is_err(),
            "a start-up refuses it"
        );
        std::fs::remove_file(registry.path()).unwrap();
        revocations.cache.lock().unwrap().checked = None;
        assert!(revocations.is_revoked(&der(&pair)));
    }
}
