//! The drives that carry what a VM needs besides its image: the bootstrap, a local repository's git
//! directory, and the agent disk shared by every VM of this controller (see the module above).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::GUEST_INIT;

/// Size of the bootstrap disk: one sector-aligned block, far more than a bootstrap needs.
const BOOTSTRAP_DISK_BYTES: usize = 16 * 1024;

/// A read-only disk holding the git directory of local repository `repo` (`repo/.git`, or `repo`
/// itself when bare), and where the guest mounts it (the same path, so the clone URL holds).
pub(super) async fn source_disk(repo: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let git_dir = if repo.join(".git").is_dir() {
        repo.join(".git")
    } else {
        repo.to_path_buf()
    };
    let shown = git_dir.display().to_string();
    if shown.chars().any(char::is_whitespace) {
        return Err(format!(
            "the repository path {shown:?} has white space, which a VM's kernel command line cannot carry; clone it by URL"
        ));
    }
    let bytes = tree_size(&git_dir);
    // ext4's own metadata and some slack on top of the files.
    let size_mb = bytes * 13 / 10 / (1 << 20) + 16;
    let disk = dir.join("source.ext4");
    let out = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "zeroci-source", "-d"])
        .arg(&git_dir)
        .arg(&disk)
        .arg(format!("{size_mb}M"))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("mkfs.ext4 (apt-get install e2fsprogs): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "copying {shown} for the VM: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((disk, git_dir))
}

/// Bytes of the regular files under `dir`.
pub(super) fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(kind) if kind.is_file() => {
                    total += entry.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    total
}

/// The bootstrap as the VM's third drive: the JSON, the controller's address as the guest reaches it,
/// padded with zeros to a whole block. Only the controller's user may read it on the host.
pub(super) fn write_bootstrap_disk(
    path: &Path,
    bootstrap: &zeroci::bootstrap::Bootstrap,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bootstrap = bootstrap.clone();
    bootstrap.controller = guest_address(&bootstrap.controller);
    let mut bytes = serde_json::to_vec(&bootstrap).map_err(std::io::Error::other)?;
    if bytes.len() >= BOOTSTRAP_DISK_BYTES {
        return Err(std::io::Error::other("bootstrap larger than its disk"));
    }
    bytes.resize(BOOTSTRAP_DISK_BYTES, 0);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&bytes)
}

/// How a VM reaches the controllers' addresses (one, or several comma-separated): loopback and
/// unspecified addresses are the host's own, which user-mode networking shows the guest as 10.0.2.2.
pub(super) fn guest_address(endpoints: &str) -> String {
    endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(guest_address_of_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn guest_address_of_one(endpoint: &str) -> String {
    let Ok(address) = endpoint.parse::<std::net::SocketAddr>() else {
        return endpoint.to_string(); // a host name: the guest resolves it through qemu's DNS
    };
    if address.ip().is_loopback() || address.ip().is_unspecified() {
        format!("10.0.2.2:{}", address.port())
    } else {
        endpoint.to_string()
    }
}

/// The agent disk for this agent binary and [`GUEST_INIT`], made once and named after their hash.
pub(super) fn agent_disk(agent_binary: &Path, vm_dir: &Path) -> Result<PathBuf, String> {
    use sha2::Digest;
    let agent = std::fs::read(agent_binary).map_err(|e| {
        format!(
            "agent binary {}: {e}; build it (cargo build --bins) or set [provisioner.vm] agent_binary",
            agent_binary.display()
        )
    })?;
    let mut hash = sha2::Sha256::new();
    hash.update(&agent);
    hash.update(GUEST_INIT.as_bytes());
    let digest = zeroci::encoding::hex(&hash.finalize()[..8]);
    let disk = vm_dir.join(format!("agent-{digest}.ext4"));
    if disk.is_file() {
        return Ok(disk);
    }
    std::fs::create_dir_all(vm_dir).map_err(|e| format!("{}: {e}", vm_dir.display()))?;
    let staging = vm_dir.join(format!(".agent-{digest}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let made = (|| -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let files = staging.join("files");
        std::fs::create_dir_all(&files).map_err(|e| e.to_string())?;
        for (name, bytes) in [
            ("zeroci-agent", agent.as_slice()),
            ("init", GUEST_INIT.as_bytes()),
        ] {
            let path = files.join(name);
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        let size_mb = agent.len() / (1 << 20) + 16;
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "zeroci-agent", "-d"])
            .arg(&files)
            .arg(staging.join("disk.ext4"))
            .arg(format!("{size_mb}M"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("mkfs.ext4 (apt-get install e2fsprogs): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mkfs.ext4: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::fs::rename(staging.join("disk.ext4"), &disk).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    made.map(|()| disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_reaches_the_hosts_loopback_at_the_gateway() {
        assert_eq!(guest_address("127.0.0.1:7701"), "10.0.2.2:7701");
        assert_eq!(guest_address("0.0.0.0:7701"), "10.0.2.2:7701");
        assert_eq!(guest_address("[::1]:7701"), "10.0.2.2:7701");
        assert_eq!(guest_address("192.168.1.5:7701"), "192.168.1.5:7701");
        assert_eq!(guest_address("ci.example.com:7701"), "ci.example.com:7701");
        assert_eq!(
            guest_address("127.0.0.1:7701, ci-2.example.com:7701"),
            "10.0.2.2:7701,ci-2.example.com:7701"
        );
    }

    #[test]
    fn the_bootstrap_disk_is_private_padded_and_points_at_the_gateway() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("bootstrap.img");
        let bootstrap = zeroci::bootstrap::Bootstrap {
            controller: "127.0.0.1:4000".into(),
            ca_pem: "PEM".into(),
            token: "one-time".into(),
            job_id: 9,
        };
        write_bootstrap_disk(&path, &bootstrap).unwrap_or_else(|e| panic!("{e}"));
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len() as usize, BOOTSTRAP_DISK_BYTES);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let read =
            zeroci::bootstrap::Bootstrap::read_from(file, "vdc").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.controller, "10.0.2.2:4000");
        assert_eq!(read.token, "one-time");
    }
}
