//! Machines' control groups (cgroup v2): each local machine gets `<cgroup2 mount>/zeroci/<owner>.<machine>`
//! (`owner` names the controller's state directory: machine names are unique per controller only),
//! which its processes join from their first instruction (so nothing escapes it), which carries the
//! machine's memory, process and CPU limits where the host gives cgroup v2 those controllers, and which
//! `destroy` empties with `cgroup.kill` whatever the processes did to hide (new sessions, re-parenting).
//!
//! Hosts differ: a pure cgroup v2 host (current distributions) has every controller; a host that still
//! mounts cgroup v1 hierarchies keeps `memory`, `pids` and `cpu` there, and its v2 tree has none. What is
//! missing is said once at start-up and in each job's log; process counts then fall back to
//! `RLIMIT_NPROC` on the machine's own user (see the local provisioner).

use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroci::resources::Resources;

/// The controllers that carry a machine's limits, in the order they are reported.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// cgroup v2's CPU accounting period, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The parent group of every machine of this host, and what it can limit.
#[derive(Debug, Clone)]
pub struct MachineGroups {
    parent: PathBuf,
    /// Prefix of this controller's groups, from its state directory.
    owner: String,
    /// The controllers enabled for the machines' groups.
    enabled: Vec<&'static str>,
}

impl MachineGroups {
    /// Finds the cgroup v2 mount, makes `zeroci/` in it and enables what it can for its children.
    /// `Err` says why machines cannot have groups at all (no cgroup2 mount, no permission).
    pub fn detect(state_dir: &Path) -> Result<MachineGroups, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mount =
            cgroup2_mount(&mountinfo).ok_or("the host has no cgroup v2 file system mounted")?;
        MachineGroups::under(&mount, state_dir)
    }

    /// As [`detect`](MachineGroups::detect), with the cgroup v2 tree at `mount`.
    pub fn under(mount: &Path, state_dir: &Path) -> Result<MachineGroups, String> {
        let parent = mount.join("zeroci");
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        // Each level passes controllers down to the next; the root and `zeroci/` have no processes of
        // their own, so the kernel allows it. Refusals leave those controllers off, nothing more.
        let available = read_words(&mount.join("cgroup.controllers"));
        for dir in [mount, parent.as_path()] {
            for controller in CONTROLLERS {
                if available.iter().any(|c| c == controller) {
                    let _ = std::fs::write(
                        dir.join("cgroup.subtree_control"),
                        format!("+{controller}"),
                    );
                }
            }
        }
        // The kernel lists enabled controllers as `memory pids`; a stand-in file in tests keeps the
        // `+pids` last written.
        let on = read_words(&parent.join("cgroup.subtree_control"));
        let enabled = CONTROLLERS
            .into_iter()
            .filter(|c| on.iter().any(|o| o.trim_start_matches('+') == *c))
            .collect();
        let owner = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
            zeroci::encoding::hex(&digest[..6])
        };
        Ok(MachineGroups {
            parent,
            owner,
            enabled,
        })
    }

    /// The controllers that cannot limit machines here, for the start-up line and the jobs' logs.
    pub fn missing(&self) -> Vec<&'static str> {
        CONTROLLERS
            .into_iter()
            .filter(|c| !self.enabled.contains(c))
            .collect()
    }

    /// Where machine `name`'s group is.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.parent.join(format!("{}.{name}", self.owner))
    }

    /// Makes machine `name`'s group (again, if a crashed attempt left one: emptied first) with
    /// `resources` applied.
    pub fn create(&self, name: &str, resources: &Resources) -> std::io::Result<PathBuf> {
        let dir = self.path_of(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => kill_all(&dir),
            Err(e) => return Err(e),
        }
        self.apply(&dir, resources)?;
        Ok(dir)
    }

    /// Writes `resources` into the group at `dir`; limits whose controller is missing are skipped (see
    /// [`missing`](MachineGroups::missing)). Unset limits are lifted.
    pub fn apply(&self, dir: &Path, resources: &Resources) -> std::io::Result<()> {
        for (controller, file, value) in limit_files(resources) {
            if !self.enabled.contains(&controller) {
                continue;
            }
            match std::fs::write(dir.join(file), value) {
                Ok(()) => {}
                // A kernel without swap accounting has no memory.swap.max: nothing to bound there.
                Err(e) if file == "memory.swap.max" && e.kind() == std::io::ErrorKind::NotFound => {
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The most processes the kernel counts (`PID_MAX_LIMIT`); `pids.max` refuses more.
const PIDS_CEILING: u64 = 4 * 1024 * 1024;

/// Each limit as (controller, file, value) in cgroup v2's words. Values past what the host has are
/// written as no limit, which is what they mean (the kernel refuses some of them).
fn limit_files(resources: &Resources) -> [(&'static str, &'static str, String); 4] {
    let max = |value: Option<u64>| value.map_or_else(|| "max".to_string(), |v| v.to_string());
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu = match resources.cpus.filter(|cpus| *cpus < host_cpus) {
        // At least 1 ms per period: the kernel refuses less.
        Some(cpus) => format!(
            "{} {CPU_PERIOD_US}",
            ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
        ),
        None => format!("max {CPU_PERIOD_US}"),
    };
    let memory = resources.memory_mb.map(|mb| mb.saturating_mul(1 << 20));
    [
        ("memory", "memory.max", max(memory)),
        // Swap is not a way around the memory limit.
        (
            "memory",
            "memory.swap.max",
            if memory.is_some() {
                "0".into()
            } else {
                "max".into()
            },
        ),
        (
            "pids",
            "pids.max",
            max(resources.pids.filter(|p| *p < PIDS_CEILING)),
        ),
        ("cpu", "cpu.max", cpu),
    ]
}

/// Kills every process in the group at `dir` and removes it; succeeds when it is already gone.
pub async fn remove(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut pause = Duration::from_millis(1);
    for _ in 0..40 {
        kill_all(dir);
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // EBUSY: processes are still dying (a process in uninterruptible sleep takes its time).
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    std::fs::remove_dir(dir)
}

/// SIGKILLs everything in the group: `cgroup.kill` (Linux 5.14+) does it atomically, even to processes
/// forking as fast as they can; older kernels get a signal per listed process.
fn kill_all(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in read_words(&dir.join("cgroup.procs")) {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The mount point of the cgroup v2 file system in `/proc/self/mountinfo`'s text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `36 35 0:30 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw`: the type follows " - ".
        let (fields, rest) = line.split_once(" - ")?;
        (rest.split_whitespace().next()? == "cgroup2")
            .then(|| fields.split_whitespace().nth(4).map(unescape_mount_path))?
    })
}

/// Mount paths escape spaces and the like as `\040`.
fn unescape_mount_path(path: &str) -> PathBuf {
    let mut out = Vec::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

fn read_words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_hierarchies() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/unified rw,relatime shared:11 - cgroup2 cgroup2 rw
32 25 0:28 / /mnt/my\\040cgroups rw - cgroup2 none rw";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount(mountinfo.lines().nth(2).unwrap_or_default()),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(
            cgroup2_mount(mountinfo.lines().next().unwrap_or_default()),
            None
        );
    }

    #[test]
    fn limits_are_written_in_cgroup_v2_words() {
        let files = limit_files(&Resources {
            cpus: Some(1.5),
            memory_mb: Some(512),
            pids: Some(100),
            disk_gb: None,
        });
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = if host_cpus > 1 {
            "cpu.max=150000 100000"
        } else {
            "cpu.max=max 100000"
        };
        assert_eq!(
            files.map(|(_, file, value)| format!("{file}={value}")),
            [
                "memory.max=536870912",
                "memory.swap.max=0",
                "pids.max=100",
                cpu
            ]
        );
        let lifted = limit_files(&Resources::default());
        assert_eq!(
            lifted.map(|(_, _, value)| value),
            ["max", "max", "max", "max 100000"]
        );
        let huge = limit_files(&Resources {
            cpus: Some(1e9),
            memory_mb: None,
            pids: Some(u64::MAX),
            disk_gb: None,
        });
        assert_eq!(huge[2].2, "max");
        assert_eq!(huge[3].2, "max 100000");
    }

    /// A directory standing in for a cgroup v2 tree whose root offers `memory` and `pids` (the kernel
    /// would reflect `subtree_control` writes; plain files keep the last one, so the test enables one
    /// controller at a time through what it writes).
    #[test]
    fn only_enabled_controllers_are_written_and_the_rest_reported_missing() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "memory pids hugetlb",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let groups = MachineGroups::under(root.path(), Path::new("/srv/ci/state"))
            .unwrap_or_else(|e| panic!("{e}"));
        let other = MachineGroups::under(root.path(), Path::new("/srv/other/state"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(
            groups.path_of("job-1-1"),
            other.path_of("job-1-1"),
            "two controllers on one host never share a group"
        );
        // A plain file keeps the last write: `+pids` enabled, `memory` not, `cpu` never offered.
        assert_eq!(groups.missing(), ["memory", "cpu"]);
        let dir = groups
            .create(
                "job-1-1",
                &Resources {
                    cpus: Some(1.0),
                    memory_mb: Some(256),
                    pids: Some(64),
                    disk_gb: None,
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            dir.starts_with(root.path().join("zeroci"))
                && dir.to_string_lossy().ends_with(".job-1-1")
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max")).unwrap_or_default(),
            "64"
        );
        assert!(!dir.join("memory.max").exists() && !dir.join("cpu.max").exists());
    }
}
