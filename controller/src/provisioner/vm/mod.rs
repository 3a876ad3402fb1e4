//! The `vm` provisioner: every job attempt in a fresh qemu virtual machine on this host, booted from an
//! image (see [`image`]) with a copy-on-write overlay of its own, so the image never changes and all
//! jobs share it.
//!
//! How the agent gets in, without SSH and without rebuilding images: three drives.
//! - `vda`: the job's overlay (qcow2 over the image's `rootfs.ext4`), grown to the job's disk size.
//! - `vdb`: the *agent disk*, read-only and shared by every VM of this controller: a small ext4 with the
//!   agent binary and ZeroCI's init script ([`GUEST_INIT`]). It is rebuilt only when either changes
//!   (named after their hash), so upgrading the controller upgrades every VM's agent at once.
//! - `vdc`: the *bootstrap disk*, one per VM: the bootstrap JSON (controller address, CA, one-time
//!   token), which the agent reads once from the device. A file rather than the kernel command line
//!   (2 KiB on x86, too short for a CA certificate, and readable in `/proc/cmdline` by every step); a
//!   drive rather than a host share (no virtiofsd to run, no host directory exposed).
//! - `vdd`, for a job that clones a repository of this host: a read-only copy of its git directory,
//!   mounted in the guest at the same path, so the agent clones it exactly as on a local machine.
//!   Debian's cloud kernel has no 9p, and a share would show the guest the host's live directory.
//!
//! The kernel starts the image's `/sbin/zeroci-init`, which mounts `vdb` and runs its init: network up
//! (qemu's user-mode networking: the host is `10.0.2.2`, so a controller on loopback is reachable and
//! nothing else must be set up), host name from the kernel command line, then the agent; when the agent
//! exits the VM powers off and qemu exits. `destroy` kills qemu and deletes the overlay either way.

mod drives;
pub mod image;
mod qemu;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroci::resources::Resources;

use super::local::{
    DEFAULT_AGENT_GIVE_UP_SECS, default_agent_binary, local_source, process_start_time,
};
use super::{MachineLedger, MachineRequest, ProvisionError, Provisioner};
use crate::config::{Accel, Config, VmConfig};
use crate::jobs::MachineRecord;
use drives::{agent_disk, source_disk, write_bootstrap_disk};
use image::{DEFAULT_IMAGE, ImageStore};
use qemu::{
    QemuMachine, find_program, host_memory_mb, kvm_usable, qemu_args, qemu_img, qemu_using,
};

/// ZeroCI's init inside every VM, carried on the agent disk.
pub const GUEST_INIT: &str = include_str!("init.sh");

pub struct VmProvisioner {
    machines_dir: PathBuf,
    images: ImageStore,
    image_keys: std::collections::BTreeMap<String, String>,
    qemu: PathBuf,
    kvm: bool,
    agent_disk: PathBuf,
    agent_give_up_secs: u64,
    size: VmSize,
}

/// What each VM gets unless its limits lower it.
#[derive(Debug, Clone, Copy)]
struct VmSize {
    cpus: u32,
    memory_mb: u64,
    disk_gb: u64,
}

/// What is recorded of a VM: its directory before anything is made, then qemu's process.
#[derive(Debug, Serialize, Deserialize)]
struct VmDetails {
    dir: PathBuf,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    start_time: Option<u64>,
    #[serde(default)]
    image: String,
    /// CPUs and memory it was booted with (fixed for its life).
    #[serde(default)]
    cpus: u32,
    #[serde(default)]
    memory_mb: u64,
}

impl VmProvisioner {
    /// From `[provisioner.vm]`: finds qemu, decides on KVM, and makes the agent disk.
    pub fn from_config(whole: &Config, config: &VmConfig) -> Result<VmProvisioner, ProvisionError> {
        let unavailable = |message: String| ProvisionError::Unavailable {
            kind: "vm",
            message,
        };
        let state_dir = &whole.main.state_dir;
        let qemu = config
            .qemu
            .clone()
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let qemu = find_program(&qemu).ok_or_else(|| {
            unavailable(format!(
                "{} not found; install it (apt-get install qemu-system-x86) or set [provisioner.vm] qemu",
                qemu.display()
            ))
        })?;
        let kvm = match config.accel {
            Accel::Tcg => false,
            Accel::Kvm => {
                kvm_usable().map_err(|why| unavailable(format!("accel = \"kvm\": {why}")))?;
                true
            }
            Accel::Auto => match kvm_usable() {
                Ok(()) => true,
                Err(why) => {
                    warn!(%why, "VMs run under software emulation (slower); set [provisioner.vm] accel to choose");
                    false
                }
            },
        };
        let agent_binary = config
            .agent_binary
            .clone()
            .unwrap_or_else(default_agent_binary);
        let vm_dir = state_dir.join("vm");
        let agent_disk = agent_disk(&agent_binary, &vm_dir).map_err(unavailable)?;
        let images = ImageStore::for_config(whole);
        if images.list().is_empty() {
            warn!(dir = %images.dir().display(), "no VM image yet: build one with `zeroci-controller image build`");
        }
        info!(qemu = %qemu.display(), kvm, agent_disk = %agent_disk.display(), "vm machines ready");
        Ok(VmProvisioner {
            machines_dir: state_dir.join("machines"),
            images,
            image_keys: config.images.clone(),
            qemu,
            kvm,
            agent_disk,
            agent_give_up_secs: config.agent_give_up.unwrap_or(DEFAULT_AGENT_GIVE_UP_SECS),
            size: VmSize {
                cpus: config.cpus,
                memory_mb: config.memory_mb,
                disk_gb: config.disk_gb,
            },
        })
    }

    /// The image a pipeline job's `image_name` means: a key of `[provisioner.vm.images]`, or an
    /// image's own name; none named: `default`.
    fn image_for(&self, asked: Option<&str>) -> Result<image::Image, image::ImageError> {
        let name = asked.unwrap_or(DEFAULT_IMAGE);
        let name = self.image_keys.get(name).map_or(name, String::as_str);
        self.images.open(name)
    }

    /// CPUs, memory (MiB) and disk (GiB) of a VM under `resources`: what they set (the controller's
    /// `[limits]`, a repository's `machine`, lowered by the job), else `[provisioner.vm]`'s size;
    /// never more than this host has, whatever a job asks where no limit is set.
    fn fit(&self, resources: &Resources) -> (u32, u64, u64) {
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let cpus = resources
            .cpus
            .map_or(self.size.cpus, |c| c.ceil() as u32)
            .clamp(1, host_cpus.max(1));
        let memory = resources
            .memory_mb
            .unwrap_or(self.size.memory_mb)
            .clamp(256, host_memory_mb().max(256));
        let disk = resources.disk_gb.unwrap_or(self.size.disk_gb).max(4);
        (cpus, memory, disk)
    }
}

#[async_trait]
impl Provisioner for VmProvisioner {
    fn kind(&self) -> &'static str {
        "vm"
    }

    fn needs_prerequisites(&self) -> bool {
        true
    }

    async fn create(
        &self,
        request: &MachineRequest,
        ledger: &dyn MachineLedger,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, ProvisionError> {
        let name = request.name.clone();
        let prepare = |message: String| ProvisionError::Prepare {
            name: name.clone(),
            message,
            retryable: false,
        };
        let image = self
            .image_for(request.image_name.as_deref())
            .map_err(|e| prepare(e.to_string()))?;
        let (cpus, memory_mb, disk_gb) = self.fit(&request.resources);
        let dir = self.machines_dir.join(&name);
        let mut details = VmDetails {
            dir: dir.clone(),
            pid: None,
            start_time: None,
            image: image.info.name.clone(),
            cpus,
            memory_mb,
        };
        ledger.record(details.to_value()).await?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| prepare(format!("{}: {e}", dir.display())))?;

        let overlay = dir.join("root.qcow2");
        let status = tokio::process::Command::new(qemu_img(&self.qemu))
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image.rootfs)
            .arg(&overlay)
            .arg(format!("{disk_gb}G"))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| prepare(format!("qemu-img: {e}")))?;
        if !status.status.success() {
            return Err(prepare(format!(
                "qemu-img create: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            )));
        }
        let bootstrap = dir.join("bootstrap.img");
        write_bootstrap_disk(&bootstrap, &request.bootstrap)
            .map_err(|e| prepare(format!("{}: {e}", bootstrap.display())))?;
        let source = match local_source(&request.repo_url) {
            Some(repo) => Some(source_disk(&repo, &dir).await.map_err(prepare)?),
            None => None,
        };
        if cancel.is_cancelled() {
            return Err(ProvisionError::Cancelled { name });
        }

        let console = std::fs::File::create(dir.join("console.log"))
            .map_err(|e| prepare(format!("console log: {e}")))?;
        let console_err = console.try_clone().map_err(|e| prepare(e.to_string()))?;
        let args = qemu_args(&QemuMachine {
            name: &name,
            kvm: self.kvm,
            cpus,
            memory_mb,
            kernel: &image.kernel,
            initrd: &image.initrd,
            overlay: &overlay,
            agent_disk: &self.agent_disk,
            bootstrap: &bootstrap,
            source: source
                .as_ref()
                .map(|(disk, at)| (disk.as_path(), at.as_path())),
            give_up_secs: self.agent_give_up_secs,
        });
        let mut command = tokio::process::Command::new(&self.qemu);
        command
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err);
        // SAFETY: setsid is async-signal-safe. A session of its own keeps Ctrl-C on the controller's
        // terminal away from the VMs.
        unsafe {
            command.pre_exec(zeroci::process::become_session_leader);
        }
        let mut child = command.spawn().map_err(|e| ProvisionError::Start {
            name: name.clone(),
            message: format!("{}: {e}", self.qemu.display()),
            retryable: false,
        })?;
        let pid = child.id().ok_or_else(|| ProvisionError::Start {
            name: name.clone(),
            message: "qemu exited immediately".into(),
            retryable: true,
        })?;
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        info!(job_id = request.job_id, attempt = request.attempt, pid, machine = %name, image = %image.info.name, cpus, memory_mb, kvm = self.kvm, "vm started");
        details.pid = Some(pid);
        details.start_time = process_start_time(pid);
        Ok(details.to_value())
    }

    async fn limit(
        &self,
        machine: &MachineRecord,
        resources: &Resources,
    ) -> Result<Vec<String>, ProvisionError> {
        let details: Option<VmDetails> = serde_json::from_value(machine.details.clone()).ok();
        let Some(details) = details else {
            return Ok(Vec::new());
        };
        let (cpus, memory_mb, _) = self.fit(resources);
        if (cpus, memory_mb) == (details.cpus, details.memory_mb) {
            return Ok(Vec::new());
        }
        Ok(vec![format!(
            "a VM's size is fixed at boot: this one has {} CPUs and {} MiB, not the {cpus} CPUs and {memory_mb} MiB asked",
            details.cpus, details.memory_mb
        )])
    }

    async fn destroy(&self, machine: &MachineRecord) -> Result<(), ProvisionError> {
        let details: Option<VmDetails> = serde_json::from_value(machine.details.clone()).ok();
        let dir = details
            .as_ref()
            .map(|d| d.dir.clone())
            .unwrap_or_else(|| self.machines_dir.join(&machine.name));
        // The recorded qemu, or (a crash between its start and the record) any qemu whose drives lie
        // in this machine's directory.
        let recorded = details
            .as_ref()
            .and_then(|d| Some((d.pid?, d.start_time?)))
            .filter(|(pid, start)| process_start_time(*pid) == Some(*start));
        let victims: Vec<(u32, Option<u64>)> = match recorded {
            Some((pid, start)) => vec![(pid, Some(start))],
            None => qemu_using(&dir)
                .into_iter()
                .map(|pid| (pid, process_start_time(pid)))
                .collect(),
        };
        for (pid, start) in victims {
            // Nothing inside a VM needs a graceful end: its disk is thrown away.
            // SAFETY: kill has no memory-safety preconditions; the start time proves the pid is ours.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while process_start_time(pid) == start && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // The console log is the VM's own account of its boot: kept for diagnosis like an agent log.
        let logs = self.machines_dir.with_file_name("agent-logs");
        if std::fs::create_dir_all(&logs).is_ok() {
            let _ = std::fs::rename(
                dir.join("console.log"),
                logs.join(format!("{}.log", machine.name)),
            );
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProvisionError::Destroy {
                name: machine.name.clone(),
                message: e.to_string(),
            }),
        }
    }
}

impl VmDetails {
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provisioner() -> VmProvisioner {
        VmProvisioner {
            machines_dir: PathBuf::from("/m"),
            images: ImageStore::new(PathBuf::from("/i")),
            image_keys: Default::default(),
            qemu: PathBuf::from("qemu-system-x86_64"),
            kvm: false,
            agent_disk: PathBuf::from("/v/agent.ext4"),
            agent_give_up_secs: 60,
            size: VmSize {
                cpus: 1,
                memory_mb: 512,
                disk_gb: 16,
            },
        }
    }

    #[test]
    fn a_vm_is_sized_by_its_limits_else_by_the_config_and_never_past_the_host() {
        let vm = provisioner();
        assert_eq!(vm.fit(&Resources::default()), (1, 512, 16));
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let (cpus, memory, disk) = vm.fit(&Resources {
            cpus: Some(1.5),
            memory_mb: Some(300),
            pids: None,
            disk_gb: Some(40),
        });
        assert_eq!((cpus, memory, disk), (2.min(host_cpus), 300, 40));
        let (cpus, memory, _) = vm.fit(&Resources {
            cpus: Some(10_000.0),
            memory_mb: Some(u64::MAX / 2),
            pids: None,
            disk_gb: None,
        });
        assert_eq!(cpus, host_cpus);
        assert!(memory <= host_memory_mb().max(256));
    }

    /// A crash between qemu's start and its record leaves a VM the ledger knows only by directory.
    #[tokio::test]
    async fn destroy_finds_an_unrecorded_vm_by_its_drives() {
        let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut vm = provisioner();
        vm.machines_dir = state.path().join("machines");
        let dir = vm.machines_dir.join("job-5-a1");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        // Stands in for qemu: a process whose command line names qemu and a drive in the directory.
        let mut fake = std::process::Command::new("sh")
            .args(["-c", "sleep 600; true", "qemu-system-x86_64"])
            .arg(format!("file={}/root.qcow2,if=virtio", dir.display()))
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        // Until it has exec'd, the child's command line is the test's.
        let pid = fake.id();
        zeroci_testkit::eventually("the stand-in to start", || async {
            qemu_using(&dir).contains(&pid).then_some(())
        })
        .await;
        let record = MachineRecord {
            provisioner: "vm".into(),
            name: "job-5-a1".into(),
            attempt: 1,
            token_sha256: None,
            details: serde_json::json!({ "dir": dir }),
        };
        vm.destroy(&record).await.unwrap_or_else(|e| panic!("{e}"));
        let status = fake.wait().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(!dir.exists());
    }
}
