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
    /// A fresh virtual machine per job on this host (qemu), booted from an image.
    Vm {
        #[serde(default)]
        vm: VmConfig,
    },
}

/// `[provisioner.vm]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The agent binary to inject; default: `zeroci-agent` next to the controller's executable.
    pub agent_binary: Option<PathBuf>,
    /// Seconds an agent keeps trying to reach a controller that went away.
    pub agent_give_up: Option<u64>,
    /// Where images are; default `<state_dir>/images`.
    pub images_dir: Option<PathBuf>,
    /// Names a zeroCI.yaml `prerequisites.image_name` may use (`"ubuntu:22.04" = "default"`), each
    /// mapped to a built image; an image's own name works without an entry.
    #[serde(default)]
    pub images: std::collections::BTreeMap<String, String>,
    /// `auto` (default): KVM when `/dev/kvm` works for ordinary guests, else software emulation.
    #[serde(default)]
    pub accel: Accel,
    /// CPUs per VM (default 2); `[limits] cpus` and `prerequisites.cpus` may lower it.
    #[serde(default = "default_vm_cpus")]
    pub cpus: u32,
    /// Memory per VM in MiB (default 2048); `[limits] memory_mb` and `prerequisites.memory_mb` may
    /// lower it.
    #[serde(default = "default_vm_memory_mb")]
    pub memory_mb: u64,
    /// Disk per VM in GiB (default 16): the job's overlay, grown into at boot.
    #[serde(default = "default_vm_disk_gb")]
    pub disk_gb: u64,
    /// The qemu binary; default `qemu-system-x86_64` on the PATH.
    pub qemu: Option<PathBuf>,
    /// VMs at once at most (default: no limit but `[main] workers`); more jobs wait for one.
    pub max_machines: Option<usize>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            agent_binary: None,
            agent_give_up: None,
            images_dir: None,
            images: Default::default(),
            accel: Accel::default(),
            cpus: default_vm_cpus(),
            memory_mb: default_vm_memory_mb(),
            disk_gb: default_vm_disk_gb(),
            qemu: None,
            max_machines: None,
        }
    }
}

impl ProvisionerConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        let (kind, max_machines) = match self {
            ProvisionerConfig::Local { local } => ("local", local.max_machines),
            ProvisionerConfig::Vm { vm } => {
                vm.validate()?;
                ("vm", vm.max_machines)
            }
        };
        if max_machines == Some(0) {
            return Err(format!(
                "[provisioner.{kind}] max_machines must be at least 1 (leave it out for no limit)"
            ));
        }
        Ok(())
    }
}

impl VmConfig {
    fn validate(&self) -> Result<(), String> {
        if self.cpus == 0 || self.cpus > 64 {
            return Err(format!(
                "[provisioner.vm] cpus must be between 1 and 64, got {}",
                self.cpus
            ));
        }
        if self.memory_mb < 256 {
            return Err("[provisioner.vm] memory_mb must be at least 256".into());
        }
        if self.disk_gb < 4 {
            return Err(
                "[provisioner.vm] disk_gb must be at least 4 (the image's own size)".into(),
            );
        }
        Ok(())
    }
}

/// How VMs run: hardware virtualisation or software emulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

fn default_vm_cpus() -> u32 {
    2
}

fn default_vm_memory_mb() -> u64 {
    2048
}

fn default_vm_disk_gb() -> u64 {
    16
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
    /// Machines at once at most (default: no limit but `[main] workers`); more jobs wait for one.
    pub max_machines: Option<usize>,
}

/// How `local` machines are separated from the controller and from each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Namespaces,
    None,
}
