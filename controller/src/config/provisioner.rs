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
    /// Existing hosts reached over SSH: the agent is copied there and started per job.
    Ssh { ssh: SshConfig },
    /// Hosts that joined with `zeroci-agent join`; each makes a sandbox per job.
    Pool {
        #[serde(default)]
        pool: PoolConfig,
    },
    /// A VM per job on the ThreeFold Grid, from an flist, on a farm's node.
    Tfgrid { tfgrid: TfgridConfig },
}

/// `[provisioner.tfgrid]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TfgridConfig {
    /// `main` (default), `test`, `dev` or `qa`: the endpoints below default to that network's.
    #[serde(default)]
    pub network: GridNetwork,
    /// The grid proxy (`https://gridproxy.grid.tf/` on main).
    pub proxy_url: Option<String>,
    /// The RMB relay (`wss://relay.grid.tf` on main).
    pub relay_url: Option<String>,
    /// TFChain's RPC (`wss://tfchain.grid.tf/ws` on main).
    pub chain_url: Option<String>,
    /// The farm VMs are made on (default 1, Freefarm).
    #[serde(default = "default_farm_id")]
    pub farm_id: u32,
    /// A file holding the twin's BIP-39 phrase or `0x` seed; without it, the environment variable
    /// `ZEROCI_TFGRID_MNEMONIC`. Never logged.
    pub mnemonic_file: Option<PathBuf>,
    /// `sr25519` (default) or `ed25519`.
    #[serde(default = "default_key_type")]
    pub key_type: String,
    /// zeroCI.yaml `image_name` → flist URL; `default` is what jobs without one get.
    pub images: std::collections::BTreeMap<String, String>,
    /// What the VM runs as PID 1 (default `/sbin/zinit init`, which starts the agent's service).
    #[serde(default = "default_entrypoint")]
    pub entrypoint: String,
    /// CPUs per VM (default 2); `[limits]`/`prerequisites.cpus` may lower it.
    #[serde(default = "default_vm_cpus")]
    pub cpus: u32,
    /// Memory per VM in MiB (default 2048).
    #[serde(default = "default_vm_memory_mb")]
    pub memory_mb: u64,
    /// Root filesystem per VM in GiB (default 10).
    #[serde(default = "default_grid_disk_gb")]
    pub disk_gb: u64,
    /// Seconds a VM may take from deployment to running (default 600: flists are downloaded).
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout: u64,
    /// Milliseconds between asking the node how the deployment goes (default 2000).
    #[serde(default = "default_status_poll_ms")]
    pub status_poll_ms: u64,
    /// VMs at once at most; more jobs wait for one.
    pub max_machines: Option<usize>,
}

/// Which ThreeFold Grid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GridNetwork {
    #[default]
    Main,
    Test,
    Dev,
    Qa,
}

impl GridNetwork {
    /// (proxy, relay, chain) of this network.
    pub fn endpoints(self) -> (&'static str, &'static str, &'static str) {
        match self {
            GridNetwork::Main => (
                "https://gridproxy.grid.tf/",
                "wss://relay.grid.tf",
                "wss://tfchain.grid.tf/ws",
            ),
            GridNetwork::Test => (
                "https://gridproxy.test.grid.tf/",
                "wss://relay.test.grid.tf",
                "wss://tfchain.test.grid.tf/ws",
            ),
            GridNetwork::Dev => (
                "https://gridproxy.dev.grid.tf/",
                "wss://relay.dev.grid.tf",
                "wss://tfchain.dev.grid.tf/ws",
            ),
            GridNetwork::Qa => (
                "https://gridproxy.qa.grid.tf/",
                "wss://relay.qa.grid.tf",
                "wss://tfchain.qa.grid.tf/ws",
            ),
        }
    }
}

fn default_farm_id() -> u32 {
    1
}

fn default_key_type() -> String {
    "sr25519".into()
}

fn default_entrypoint() -> String {
    "/sbin/zinit init".into()
}

fn default_grid_disk_gb() -> u64 {
    10
}

fn default_boot_timeout() -> u64 {
    600
}

fn default_status_poll_ms() -> u64 {
    2000
}

impl TfgridConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.images.contains_key("default") {
            return Err("[provisioner.tfgrid] images must map \"default\" to an flist URL".into());
        }
        if let Some((name, _)) = self
            .images
            .iter()
            .find(|(_, flist)| !flist.starts_with("https://"))
        {
            return Err(format!(
                "[provisioner.tfgrid] images.{name:?} must be an https:// flist URL"
            ));
        }
        let scheme = |url: &Option<String>, schemes: [&str; 2], key: &str| match url {
            Some(url) if !schemes.iter().any(|s| url.starts_with(s)) => Err(format!(
                "[provisioner.tfgrid] {key} must start with {} or {}, got {url:?}",
                schemes[0], schemes[1]
            )),
            _ => Ok(()),
        };
        scheme(&self.proxy_url, ["https://", "http://"], "proxy_url")?;
        scheme(&self.relay_url, ["wss://", "ws://"], "relay_url")?;
        scheme(&self.chain_url, ["wss://", "ws://"], "chain_url")?;
        if !matches!(self.key_type.as_str(), "sr25519" | "ed25519") {
            return Err(format!(
                "[provisioner.tfgrid] key_type must be sr25519 or ed25519, got {:?}",
                self.key_type
            ));
        }
        if self.cpus == 0 || self.cpus > 32 {
            return Err("[provisioner.tfgrid] cpus must be between 1 and 32".into());
        }
        if self.memory_mb < 256 {
            return Err(
                "[provisioner.tfgrid] memory_mb must be at least 256 (zos's minimum)".into(),
            );
        }
        if self.disk_gb == 0 {
            return Err("[provisioner.tfgrid] disk_gb must be at least 1".into());
        }
        if self.boot_timeout == 0 || self.status_poll_ms == 0 {
            return Err(
                "[provisioner.tfgrid] boot_timeout and status_poll_ms must be positive".into(),
            );
        }
        Ok(())
    }
}

/// `[provisioner.pool]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Seconds a per-job agent keeps trying to reach a controller that went away.
    pub agent_give_up: Option<u64>,
    /// Machines at once at most, over all hosts (each host also has its own `--capacity`).
    pub max_machines: Option<usize>,
}

/// `[provisioner.ssh]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The hosts jobs are spread over, each with its pinned host key.
    pub hosts: Vec<SshHostConfig>,
    /// The account jobs run as on every host.
    pub user: String,
    /// The private key (OpenSSH format) the controller logs in with.
    pub key_file: PathBuf,
    /// Where machines live on the hosts (default `/tmp/zeroci`); each job gets a directory below.
    #[serde(default = "default_ssh_work_dir")]
    pub work_dir: String,
    /// The agent binary to copy (for the hosts' system); default: `zeroci-agent` next to the
    /// controller's executable.
    pub agent_binary: Option<PathBuf>,
    /// Seconds an agent keeps trying to reach a controller that went away.
    pub agent_give_up: Option<u64>,
    /// Machines at once at most, over all hosts; more jobs wait for one.
    pub max_machines: Option<usize>,
}

/// One SSH host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshHostConfig {
    /// `host:port` (port 22 when left out).
    pub address: String,
    /// Its public host key as in `known_hosts` or `ssh-keyscan` (`ssh-ed25519 AAAA…`): a host that
    /// shows another key is refused.
    pub host_key: String,
}

fn default_ssh_work_dir() -> String {
    "/tmp/zeroci".into()
}

impl SshConfig {
    fn validate(&self) -> Result<(), String> {
        if self.hosts.is_empty() {
            return Err("[provisioner.ssh] hosts must name at least one host".into());
        }
        for host in &self.hosts {
            russh::keys::PublicKey::from_openssh(host.host_key.trim()).map_err(|e| {
                format!(
                    "[provisioner.ssh] host_key of {}: not a public key line such as `ssh-ed25519 AAAA…`: {e}",
                    host.address
                )
            })?;
        }
        if self.user.trim().is_empty() {
            return Err("[provisioner.ssh] user is required".into());
        }
        let plain = !self.work_dir.contains(['\'', '"', '$', '`', ' ']);
        if !self.work_dir.starts_with('/')
            || self.work_dir.trim_end_matches('/').is_empty()
            || !plain
        {
            return Err(format!(
                "[provisioner.ssh] work_dir must be an absolute path (not /) without quotes, `$` or spaces, got {:?}",
                self.work_dir
            ));
        }
        Ok(())
    }
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
            ProvisionerConfig::Ssh { ssh } => {
                ssh.validate()?;
                ("ssh", ssh.max_machines)
            }
            ProvisionerConfig::Pool { pool } => ("pool", pool.max_machines),
            ProvisionerConfig::Tfgrid { tfgrid } => {
                tfgrid.validate()?;
                ("tfgrid", tfgrid.max_machines)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(hosts: &str, work_dir: &str) -> Result<(), String> {
        let text = format!(
            "kind = \"ssh\"\n[ssh]\nuser = \"ci\"\nkey_file = \"/k\"\nwork_dir = \"{work_dir}\"\nhosts = {hosts}\n"
        );
        let config: ProvisionerConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        config.validate()
    }

    #[test]
    fn ssh_hosts_need_a_pinned_key_and_machines_an_absolute_plain_directory() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let host = format!("[{{ address = \"h:22\", host_key = \"{key}\" }}]");
        assert_eq!(ssh(&host, "/srv/ci"), Ok(()));
        assert!(
            ssh("[]", "/srv/ci")
                .unwrap_err()
                .contains("at least one host")
        );
        let bad = "[{ address = \"h\", host_key = \"ssh-ed25519 not-base64\" }]";
        assert!(ssh(bad, "/srv/ci").unwrap_err().contains("host_key of h"));
        assert!(ssh(&host, "srv/ci").unwrap_err().contains("absolute path"));
        assert!(
            ssh(&host, "/srv/$HOME")
                .unwrap_err()
                .contains("absolute path")
        );
        let no_key = "[{ address = \"h\" }]";
        assert!(ssh(no_key, "/srv/ci").unwrap_err().contains("host_key"));
    }
}
