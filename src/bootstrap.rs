//! The bootstrap file a provisioner puts on a machine next to the agent binary: where the controller is,
//! which CA to trust, and the one-time token the agent exchanges for its job certificate.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Contents of `bootstrap.json`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// gRPC address of the controller (`host:port` or `https://` URL).
    pub controller: String,
    /// PEM of the CA that signed the controller's certificate.
    pub ca_pem: String,
    /// One-time enrolment token.
    pub token: String,
    /// The job the machine was made for (informational; the certificate is what counts).
    pub job_id: u64,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: it never reaches a log line.
        f.debug_struct("Bootstrap")
            .field("controller", &self.controller)
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

/// Errors reading or writing the bootstrap file.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot access bootstrap file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid bootstrap file {path}: {source}")]
    Invalid {
        path: String,
        source: serde_json::Error,
    },
}

impl Bootstrap {
    /// Writes the file readable only by its owner: it holds a credential.
    pub fn write(&self, path: &Path) -> Result<(), BootstrapError> {
        let json =
            serde_json::to_string_pretty(self).map_err(|source| BootstrapError::Invalid {
                path: path.display().to_string(),
                source,
            })?;
        crate::pki::write_private(path, &json).map_err(|e| BootstrapError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// Reads the file.
    pub fn read(path: &Path) -> Result<Bootstrap, BootstrapError> {
        let file = std::fs::File::open(path).map_err(|source| BootstrapError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Bootstrap::read_from(file, &path.display().to_string())
    }

    /// Reads a bootstrap from `reader` (an inherited descriptor); `name` says which in errors.
    pub fn read_from(reader: impl std::io::Read, name: &str) -> Result<Bootstrap, BootstrapError> {
        use std::io::Read;
        let mut text = Vec::new();
        // A bootstrap is a few KiB; a larger one is not a bootstrap.
        reader
            .take(1 << 20)
            .read_to_end(&mut text)
            .map_err(|source| BootstrapError::Io {
                path: name.to_string(),
                source,
            })?;
        // A block device (a VM's bootstrap disk) holds the JSON padded with zero bytes to its size.
        let end = text.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        text.truncate(end);
        serde_json::from_slice(&text).map_err(|source| BootstrapError::Invalid {
            path: name.to_string(),
            source,
        })
    }

    /// The bootstrap as environment variables ([`ENV_CONTROLLER`] and the rest), for machines that
    /// are configured by environment only (a ThreeFold Grid zmachine's `env`, which zos exports to the
    /// machine's init and zinit hands to the agent's service).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (ENV_CONTROLLER, self.controller.clone()),
            (ENV_CA_PEM, self.ca_pem.clone()),
            (ENV_TOKEN, self.token.clone()),
            (ENV_JOB_ID, self.job_id.to_string()),
        ]
    }

    /// Reads what [`to_env`](Bootstrap::to_env) wrote through `lookup`; names what is missing or
    /// malformed.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Bootstrap, String> {
        let get = |name: &str| {
            lookup(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{name} is not set"))
        };
        let job_id = get(ENV_JOB_ID)?;
        Ok(Bootstrap {
            controller: get(ENV_CONTROLLER)?,
            ca_pem: get(ENV_CA_PEM)?,
            token: get(ENV_TOKEN)?,
            job_id: job_id
                .parse()
                .map_err(|_| format!("{ENV_JOB_ID} is not a job id: {job_id:?}"))?,
        })
    }
}

/// The controller's address(es), as `Bootstrap::controller`.
pub const ENV_CONTROLLER: &str = "ZEROCI_CONTROLLER";
/// The controller's CA certificate (PEM).
pub const ENV_CA_PEM: &str = "ZEROCI_CA_PEM";
/// The one-time enrolment token.
pub const ENV_TOKEN: &str = "ZEROCI_BOOTSTRAP_TOKEN";
/// The job the machine was made for.
pub const ENV_JOB_ID: &str = "ZEROCI_JOB_ID";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_padded_to_a_disk_size_reads_back() {
        let bootstrap = Bootstrap {
            controller: "10.0.2.2:7701".into(),
            ca_pem: "PEM".into(),
            token: "t".into(),
            job_id: 4,
        };
        let mut disk = serde_json::to_vec(&bootstrap).unwrap_or_default();
        disk.resize(4096, 0);
        let read = Bootstrap::read_from(disk.as_slice(), "/dev/vdc").map_err(|e| e.to_string());
        assert_eq!(read.map(|b| b.job_id), Ok(4));
        assert!(Bootstrap::read_from(&[0u8; 16][..], "/dev/vdc").is_err());
    }

    #[test]
    fn the_environment_form_round_trips_and_names_what_is_missing() {
        let bootstrap = Bootstrap {
            controller: "ci.example:7701".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nX\n".into(),
            token: "t0k".into(),
            job_id: 12,
        };
        let env: std::collections::HashMap<&str, String> = bootstrap.to_env().into_iter().collect();
        let read = Bootstrap::from_env(|name| env.get(name).cloned());
        assert_eq!(read, Ok(bootstrap));
        let missing = Bootstrap::from_env(|name| {
            (name != ENV_TOKEN)
                .then(|| env.get(name).cloned())
                .flatten()
        });
        assert_eq!(
            missing,
            Err("ZEROCI_BOOTSTRAP_TOKEN is not set".to_string())
        );
        let bad = Bootstrap::from_env(|name| {
            if name == ENV_JOB_ID {
                Some("x".into())
            } else {
                env.get(name).cloned()
            }
        });
        assert!(bad.unwrap_err().contains("not a job id"));
    }
}
