//! ZeroCI's private PKI.
//!
//! One CA per installation signs three kinds of certificates, each carrying its identity as a URI
//! subject-alternative name so the controller can read who is calling from the TLS peer certificate alone:
//! - the controller's server certificate (`urn:zeroci:controller`, DNS name [`CONTROLLER_SERVER_NAME`]);
//! - user client certificates (`urn:zeroci:user:<role>:<name>`, role `admin` or `viewer`);
//! - agent client certificates (`urn:zeroci:agent:<job>:<attempt>`), short-lived, one job each.
//!
//! The identity is never taken from a message body: see [`Identity::from_der`].

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, string::Ia5String,
};
use time::OffsetDateTime;

use crate::CONTROLLER_SERVER_NAME;

/// Errors from creating, loading or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
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
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("certificate carries no ZeroCI identity")]
    NoIdentity,
    #[error("invalid identity: {0}")]
    InvalidIdentity(String),
}

/// What a user may do over the control API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read-only calls.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// Who a certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Controller,
    User { role: Role, name: String },
    Agent { job_id: u64, attempt: u32 },
}

const URI_PREFIX: &str = "urn:zeroci:";

impl Identity {
    /// The URI written into the certificate's subject-alternative names.
    pub fn to_uri(&self) -> String {
        match self {
            Identity::Controller => format!("{URI_PREFIX}controller"),
            Identity::User { role, name } => format!("{URI_PREFIX}user:{}:{name}", role.as_str()),
            Identity::Agent { job_id, attempt } => format!("{URI_PREFIX}agent:{job_id}:{attempt}"),
        }
    }

    /// Parses a URI made by [`Identity::to_uri`].
    pub fn from_uri(uri: &str) -> Result<Identity, PkiError> {
        let bad = || PkiError::InvalidIdentity(uri.to_string());
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(bad)?;
        let mut parts = rest.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("controller"), None, None) => Ok(Identity::Controller),
            (Some("user"), Some(role), Some(name)) if !name.is_empty() => Ok(Identity::User {
                role: Role::parse(role).ok_or_else(bad)?,
                name: name.to_string(),
            }),
            (Some("agent"), Some(job), Some(attempt)) => Ok(Identity::Agent {
                job_id: job.parse().map_err(|_| bad())?,
                attempt: attempt.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }

    /// Reads the identity from a DER certificate. The TLS layer has already checked that the certificate
    /// chains to our CA and is within its validity period.
    pub fn from_der(der: &[u8]) -> Result<Identity, PkiError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| PkiError::Parse(e.to_string()))?
            .ok_or(PkiError::NoIdentity)?;
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && uri.starts_with(URI_PREFIX)
            {
                return Identity::from_uri(uri);
            }
        }
        Err(PkiError::NoIdentity)
    }
}

/// The DER bytes of the first certificate in `pem`.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(block.contents)
}

/// SHA-256 of a certificate's DER bytes, in hex: how a certificate is named in the list of issued
/// user certificates and in its revocations.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    crate::encoding::hex(&sha2::Sha256::digest(der))
}

/// When the certificate stops being valid, in Unix seconds.
pub fn not_after(der: &[u8]) -> Result<i64, PkiError> {
    Ok(validity(der)?.1)
}

/// The certificate's `not_before` and `not_after`, in Unix seconds.
pub fn validity(der: &[u8]) -> Result<(i64, i64), PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let validity = cert.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The CA: its certificate (PEM) and a signer.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn ia5(s: &str) -> Result<Ia5String, PkiError> {
    Ia5String::try_from(s.to_string()).map_err(|e| PkiError::InvalidIdentity(e.to_string()))
}

/// How far back every leaf certificate's `not_before` is set, for clocks slightly behind.
pub const BACKDATING: Duration = Duration::from_secs(5 * 60);

fn leaf_params(common_name: &str, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ZeroCI");
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATING;
    params.not_after = now + validity;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

/// Ten years: the lifetime of the CA and of certificates made by `init`.
pub const LONG_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl CertificateAuthority {
    /// A new self-signed CA.
    pub fn generate(name: &str) -> Result<(CertificateAuthority, CertPair), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ZeroCI");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + LONG_VALIDITY;
        let cert = params.self_signed(&key)?;
        let pair = CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let ca = CertificateAuthority {
            cert_pem: pair.cert_pem.clone(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, pair))
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// Loads a CA from files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertificateAuthority, PkiError> {
        CertificateAuthority::from_pem(&read_to_string(cert_path)?, &read_to_string(key_path)?)
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The controller's server certificate, valid for [`CONTROLLER_SERVER_NAME`] plus `extra_names`
    /// (host names or IP addresses).
    pub fn issue_controller(&self, extra_names: &[String]) -> Result<CertPair, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params("zeroci-controller", LONG_VALIDITY);
        let mut names = vec![CONTROLLER_SERVER_NAME.to_string(), "localhost".to_string()];
        names.extend(extra_names.iter().cloned());
        names.dedup();
        for name in names {
            params
                .subject_alt_names
                .push(match name.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(ia5(&name)?),
                });
        }
        params
            .subject_alt_names
            .push(SanType::URI(ia5(&Identity::Controller.to_uri())?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A user client certificate (for the CLI).
    pub fn issue_user(
        &self,
        name: &str,
        role: Role,
        validity: Duration,
    ) -> Result<CertPair, PkiError> {
        if name.is_empty() || name.contains(':') {
            return Err(PkiError::InvalidIdentity(format!("user name {name:?}")));
        }
        let key = KeyPair::generate()?;
        let mut params = leaf_params(name, validity);
        let identity = Identity::User {
            role,
            name: name.to_string(),
        };
        params
            .subject_alt_names
            .push(SanType::URI(ia5(&identity.to_uri())?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's certificate request, binding it to one job attempt. Everything in the request but
    /// its public key is ignored. Returns the PEM certificate and its expiry in Unix milliseconds.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        job_id: u64,
        attempt: u32,
        validity: Duration,
    ) -> Result<(String, i64), PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = leaf_params(&format!("zeroci-agent-job-{job_id}"), validity);
        let identity = Identity::Agent { job_id, attempt };
        params
            .subject_alt_names
            .push(SanType::URI(ia5(&identity.to_uri())?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let not_after_ms = params.not_after.unix_timestamp() * 1000;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request.signed_by(&self.issuer)?;
        Ok((cert.pem(), not_after_ms))
    }

    /// An agent certificate made directly (key generated here). Used by tests and by provisioners that
    /// cannot run the enrolment exchange.
    pub fn issue_agent(
        &self,
        job_id: u64,
        attempt: u32,
        validity: Duration,
    ) -> Result<CertPair, PkiError> {
        let (key_pem, csr_pem) = generate_csr()?;
        let (cert_pem, _) = self.sign_agent_csr(&csr_pem, job_id, attempt, validity)?;
        Ok(CertPair { cert_pem, key_pem })
    }
}

/// A fresh key pair and a certificate request for it: `(key_pem, csr_pem)`.
pub fn generate_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::default();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Reads a whole file, naming it in the error.
pub fn read_to_string(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Writes a file readable only by its owner (keys and certificates).
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        parsed.contents
    }

    #[test]
    fn identities_round_trip_through_certificates() {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let user = ca.issue_user("alice", Role::Viewer, LONG_VALIDITY).unwrap();
        assert_eq!(
            Identity::from_der(&der_of(&user.cert_pem)).unwrap(),
            Identity::User {
                role: Role::Viewer,
                name: "alice".into()
            }
        );
        let agent = ca.issue_agent(42, 3, Duration::from_secs(60)).unwrap();
        assert_eq!(
            Identity::from_der(&der_of(&agent.cert_pem)).unwrap(),
            Identity::Agent {
                job_id: 42,
                attempt: 3
            }
        );
        let server = ca.issue_controller(&["127.0.0.1".into()]).unwrap();
        assert_eq!(
            Identity::from_der(&der_of(&server.cert_pem)).unwrap(),
            Identity::Controller
        );
    }

    #[test]
    fn ca_reloads_from_pem_and_still_signs() {
        let (_, pair) = CertificateAuthority::generate("test CA").unwrap();
        let ca = CertificateAuthority::from_pem(&pair.cert_pem, &pair.key_pem).unwrap();
        ca.issue_user("bob", Role::Admin, LONG_VALIDITY).unwrap();
    }

    #[test]
    fn malformed_identities_are_rejected() {
        for uri in [
            "urn:zeroci:agent:x:1",
            "urn:zeroci:user:root:bob",
            "urn:other:controller",
            "urn:zeroci:user:admin:",
        ] {
            assert!(Identity::from_uri(uri).is_err(), "{uri}");
        }
        assert!(ca_rejects_bad_csr());
    }

    fn ca_rejects_bad_csr() -> bool {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        ca.sign_agent_csr("not a csr", 1, 1, Duration::from_secs(1))
            .is_err()
    }
}
