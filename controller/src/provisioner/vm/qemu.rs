//! qemu itself: the command line of one VM, and what the provisioner asks of the host (is KVM usable,
//! where are the programs, which qemu uses a machine's drives).

use std::path::{Path, PathBuf};

/// One VM's qemu command line.
pub(super) struct QemuMachine<'a> {
    pub(super) name: &'a str,
    pub(super) kvm: bool,
    pub(super) cpus: u32,
    pub(super) memory_mb: u64,
    pub(super) kernel: &'a Path,
    pub(super) initrd: &'a Path,
    pub(super) overlay: &'a Path,
    pub(super) agent_disk: &'a Path,
    pub(super) bootstrap: &'a Path,
    /// A local repository's disk and where the guest mounts it.
    pub(super) source: Option<(&'a Path, &'a Path)>,
    pub(super) give_up_secs: u64,
}

pub(super) fn qemu_args(m: &QemuMachine<'_>) -> Vec<String> {
    let path = |p: &Path| p.display().to_string().replace(',', ",,");
    let (machine, cpu) = if m.kvm {
        ("q35,accel=kvm", "host")
    } else {
        ("q35,accel=tcg", "max")
    };
    let mut append = format!(
        "root=/dev/vda rw console=ttyS0 quiet panic=-1 init=/sbin/zeroci-init zeroci.hostname={} zeroci.give_up={}",
        m.name, m.give_up_secs
    );
    if let Some((_, at)) = m.source {
        append.push_str(&format!(" zeroci.source={}", at.display()));
    }
    let mut args: Vec<String> = [
        "-name",
        m.name,
        "-machine",
        machine,
        "-cpu",
        cpu,
        "-smp",
        &m.cpus.to_string(),
        "-m",
        &m.memory_mb.to_string(),
        // No default devices, no firmware menus, no display: a serial console to the log file.
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        &m.kernel.display().to_string(),
        "-initrd",
        &m.initrd.display().to_string(),
        "-append",
        &append,
        "-drive",
        &format!(
            "file={},if=virtio,format=qcow2,cache=unsafe",
            path(m.overlay)
        ),
        "-drive",
        &format!(
            "file={},if=virtio,format=raw,readonly=on",
            path(m.agent_disk)
        ),
        "-drive",
        &format!(
            "file={},if=virtio,format=raw,readonly=on",
            path(m.bootstrap)
        ),
        "-netdev",
        "user,id=net0",
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    if let Some((disk, _)) = m.source {
        args.push("-drive".into());
        args.push(format!(
            "file={},if=virtio,format=raw,readonly=on",
            path(disk)
        ));
    }
    args
}

/// qemu processes with a drive in `dir`.
pub(super) fn qemu_using(dir: &Path) -> Vec<u32> {
    let needle = format!("file={}/", dir.display().to_string().replace(',', ",,"));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            (cmdline.contains("qemu-system") && cmdline.contains(&needle)).then_some(pid)
        })
        .collect()
}

/// This host's memory in MiB (`MemTotal`); 0 when unknown.
pub(super) fn host_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib / 1024)
}

/// Whether KVM can run an ordinary Linux guest here.
pub(super) fn kvm_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    // PVM (a KVM for running inside another VM without nested hardware support) runs only guests
    // whose kernel was built for it; Debian's kernels hang at their first instruction there.
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err("this host's KVM is PVM, which needs a PVM guest kernel".into());
    }
    Ok(())
}

pub(super) fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// `qemu-img` beside the qemu binary, else on the PATH.
pub(super) fn qemu_img(qemu: &Path) -> PathBuf {
    qemu.parent()
        .map(|dir| dir.join("qemu-img"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("qemu-img"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_gets_three_drives_a_direct_kernel_and_user_networking() {
        let args = qemu_args(&QemuMachine {
            name: "job-3-a1",
            kvm: false,
            cpus: 2,
            memory_mb: 1024,
            kernel: Path::new("/i/vmlinuz"),
            initrd: Path::new("/i/initrd.img"),
            overlay: Path::new("/m/a,b/root.qcow2"),
            agent_disk: Path::new("/v/agent.ext4"),
            bootstrap: Path::new("/m/bootstrap.img"),
            source: Some((Path::new("/m/source.ext4"), Path::new("/srv/repo/.git"))),
            give_up_secs: 30,
        })
        .join(" ");
        for expected in [
            "-machine q35,accel=tcg -cpu max -smp 2 -m 1024",
            "-nodefaults",
            "-kernel /i/vmlinuz -initrd /i/initrd.img",
            "init=/sbin/zeroci-init zeroci.hostname=job-3-a1 zeroci.give_up=30",
            "file=/m/a,,b/root.qcow2,if=virtio,format=qcow2",
            "file=/v/agent.ext4,if=virtio,format=raw,readonly=on",
            "file=/m/bootstrap.img,if=virtio,format=raw,readonly=on",
            "-netdev user,id=net0",
            "zeroci.source=/srv/repo/.git",
            "file=/m/source.ext4,if=virtio,format=raw,readonly=on",
        ] {
            assert!(args.contains(expected), "{expected:?} not in {args}");
        }
    }
}
