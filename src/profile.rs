//! The CLI profile (`cli.toml`): where the controller is and which certificate to use.
//!
//! ```toml
//! controller = "127.0.0.1:7701"   # host:port or https:// URL of the gRPC listener
//! ca = "pki/ca.crt"               # relative paths are relative to this file
//! cert = "pki/admin.crt"
//! key = "pki/admin.key"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A parsed profile with paths made absolute.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// gRPC address of the controller.
    pub controller: String,
    /// CA certificate that signed the controller's certificate.
    pub ca: PathBuf,
    /// This user's client certificate.
    pub cert: PathBuf,
    /// This user's private key.
    pub key: PathBuf,
}

/// Errors reading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid profile {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Profile {
    /// Reads `path`, resolving relative certificate paths against its directory.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut profile: Profile = toml::from_str(&text).map_err(|e| ProfileError::Invalid {
            path: path.display().to_string(),
            message: e.message().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut profile.ca, &mut profile.cert, &mut profile.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(profile)
    }

    /// The profile to use when none is given: `$ZEROCI_PROFILE`, `./.zeroci/cli.toml`, then
    /// `~/.config/zeroci/cli.toml` — the first that exists (or the last candidate when none does).
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("ZEROCI_PROFILE").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let local = PathBuf::from(".zeroci/cli.toml");
        if local.exists() {
            return local;
        }
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".config/zeroci/cli.toml"),
            None => local,
        }
    }

    /// Serialises the profile (paths as stored).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}
