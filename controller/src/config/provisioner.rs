//! `[provisioner]` and each kind's table.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[provisioner]`: which kind of machine jobs get, and that kind's table (`[provisioner.local]`, ...).
/// A new kind is one more variant here and one line in `provisioner::build`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProvisionerConfig {
    /// The agent as a child process of the controller in a private directory.
    Local {
        #[serde(default)]
        local: LocalConfig,
    },
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig::Local {
            local: LocalConfig::default(),
        }
    }
}

/// `[provisioner]` with `kind` optional (`local`), as configs written before the kinds existed have it.
pub(super) fn provisioner_with_default_kind<'de, D>(
    deserializer: D,
) -> Result<ProvisionerConfig, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let mut table = toml::Table::deserialize(deserializer)?;
    table
        .entry("kind")
        .or_insert_with(|| toml::Value::String("local".into()));
    ProvisionerConfig::deserialize(toml::Value::Table(table)).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The agent binary to inject; default: `zeroci-agent` next to the controller's executable.
    pub agent_binary: Option<PathBuf>,
    /// Seconds an agent keeps trying to reach a controller that went away.
    pub agent_give_up: Option<u64>,
    /// `namespaces` (default): each job in a sandbox of its own. `none`: jobs run as the controller's
    /// own user beside its files, for hosts that refuse namespaces; fork pull requests are refused then.
    #[serde(default)]
    pub isolation: Isolation,
    /// `host` (default) or `none`: steps without any network (the checkout still has it).
    #[serde(default)]
    pub network: zeroci::sandbox::StepNetwork,
    /// Host directories a sandboxed job sees read-only; default: the system's (`/usr`, `/etc`, ...).
    pub read_only_paths: Option<Vec<PathBuf>>,
    /// When the controller runs as root, job N runs as host user `first_uid + N % 65536`
    /// (default 1000000): no job shares a user with the controller, and rarely with another job.
    pub first_uid: Option<u32>,
}

/// How `local` machines are separated from the controller and from each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Namespaces,
    None,
}
