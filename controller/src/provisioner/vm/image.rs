//! VM images: a kernel, its initramfs and a root file system, built offline from Debian's packages
//! (`zeroci-controller image build`) and shared read-only by every job, which writes to an overlay of
//! its own.
//!
//! Layout: `<images_dir>/<name>/{image.json, vmlinuz, initrd.img, rootfs.ext4}`. A build happens in a
//! hidden directory beside and is renamed into place when complete, so a listed image is always whole.
//!
//! The image's `/sbin/zeroci-init` only mounts the agent disk and hands over to the init found there
//! (see the `vm` module): the image never needs rebuilding when the controller or agent changes.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// The image a pipeline job gets when it names none.
pub const DEFAULT_IMAGE: &str = "default";

/// What every image holds besides the packages asked for: git and certificates for the checkout,
/// iproute2 to bring the network up, kmod to load the virtio drivers, and Debian's cloud kernel.
pub const BASE_PACKAGES: [&str; 5] = [
    "git",
    "ca-certificates",
    "iproute2",
    "kmod",
    "linux-image-cloud-amd64",
];

/// The first program the image's kernel runs (written into every image).
const STAGE_ONE_INIT: &str = r#"#!/bin/sh
# ZeroCI: mount the agent disk ZeroCI attaches as the second drive and run the init it carries, so this
# image never needs rebuilding when ZeroCI changes.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# An initramfs hands these over mounted already.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
modprobe -q virtio_blk
n=0
while [ ! -b /dev/vdb ] && [ $n -lt 500 ]; do sleep 0.01; n=$((n+1)); done
mkdir -p /run/zeroci
mount -o ro /dev/vdb /run/zeroci && exec /run/zeroci/init
echo "zeroci-init: no agent disk" > /dev/console
echo o > /proc/sysrq-trigger
"#;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{tool} is needed to build images and was not found: {hint}")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
    },
    #[error("image name {0:?} is not valid: use letters, digits, '.', '_' and '-'")]
    BadName(String),
    #[error("no image {name:?}; known images: {known}")]
    Unknown { name: String, known: String },
    #[error(
        "image {name:?} was built by another version of ZeroCI; rebuild it with `zeroci-controller image build {name}`"
    )]
    Outdated { name: String },
    #[error("{step} failed: {message}")]
    Step { step: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The layout of images this controller boots; raised when what an image must hold changes (its
/// stage-one init, the drives it expects), so older images are refused with "rebuild" rather than
/// failing at boot.
pub const IMAGE_FORMAT: u32 = 1;

/// What `image.json` says of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    /// [`IMAGE_FORMAT`] of the controller that built it.
    #[serde(default)]
    pub format: u32,
    /// Debian suite it was built from (`bookworm`).
    pub suite: String,
    /// Packages asked for beyond [`BASE_PACKAGES`].
    pub packages: Vec<String>,
    /// Unix milliseconds.
    pub built_at: i64,
    /// Size of the root file system image on disk, in bytes (sparse: what it really takes).
    #[serde(default)]
    pub bytes: u64,
}

/// The files of one built image.
#[derive(Debug, Clone)]
pub struct Image {
    pub info: ImageInfo,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

/// What `image build` is asked for.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub name: String,
    pub packages: Vec<String>,
    pub suite: String,
    pub mirror: String,
}

impl Default for BuildRequest {
    fn default() -> Self {
        BuildRequest {
            name: DEFAULT_IMAGE.into(),
            packages: Vec::new(),
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
        }
    }
}

/// The images of one controller.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    pub fn new(dir: PathBuf) -> ImageStore {
        ImageStore { dir }
    }

    /// `[provisioner.vm] images_dir`, else `<state_dir>/images` (also when another kind is set, so
    /// images can be built before switching to `vm`).
    pub fn for_config(config: &crate::config::Config) -> ImageStore {
        let configured = match &config.provisioner {
            crate::config::ProvisionerConfig::Vm { vm } => vm.images_dir.clone(),
            _ => None,
        };
        ImageStore::new(configured.unwrap_or_else(|| config.main.state_dir.join("images")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every complete image, by name.
    pub fn list(&self) -> Vec<Image> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut images: Vec<Image> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| self.open(&e.file_name().to_string_lossy()).ok())
            .collect();
        images.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        images
    }

    /// The image called `name`.
    pub fn open(&self, name: &str) -> Result<Image, ImageError> {
        check_name(name)?;
        let dir = self.dir.join(name);
        let info = std::fs::read(dir.join("image.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ImageInfo>(&bytes).ok());
        match info {
            Some(info) if info.format != IMAGE_FORMAT => Err(ImageError::Outdated {
                name: name.to_string(),
            }),
            Some(info) => Ok(Image {
                info,
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd.img"),
                rootfs: dir.join("rootfs.ext4"),
            }),
            None => Err(ImageError::Unknown {
                name: name.to_string(),
                known: self.known(),
            }),
        }
    }

    /// The names of the built images, for error messages.
    pub fn known(&self) -> String {
        let names: Vec<String> = self.list().into_iter().map(|i| i.info.name).collect();
        if names.is_empty() {
            "none (build one with `zeroci-controller image build`)".into()
        } else {
            names.join(", ")
        }
    }

    /// Deletes image `name`. Jobs running on it keep their overlay's view until they end: qemu holds
    /// the base file open.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        check_name(name)?;
        let dir = self.dir.join(name);
        if !dir.join("image.json").is_file() {
            return Err(ImageError::Unknown {
                name: name.to_string(),
                known: self.known(),
            });
        }
        std::fs::remove_dir_all(&dir).map_err(io(&dir))
    }

    /// Builds an image with debootstrap and mkfs.ext4, saying what it does through `progress`, and
    /// puts it in place of any image of that name.
    pub fn build(
        &self,
        request: &BuildRequest,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Image, ImageError> {
        check_name(&request.name)?;
        let debootstrap = find_tool("debootstrap", "apt-get install debootstrap")?;
        let mkfs = find_tool("mkfs.ext4", "apt-get install e2fsprogs")?;
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let work = self
            .dir
            .join(format!(".building-{}-{}", request.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let cleanup = RemoveOnDrop(work.clone());
        let rootfs = work.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io(&rootfs))?;

        let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|p| p.to_string()).collect();
        packages.extend(request.packages.iter().cloned());
        progress(&format!(
            "debootstrap {} from {} with {}",
            request.suite,
            request.mirror,
            packages.join(",")
        ));
        let mut command = Command::new(debootstrap);
        command
            .arg("--variant=minbase")
            .arg(format!("--include={}", packages.join(",")))
            .arg(&request.suite)
            .arg(&rootfs)
            .arg(&request.mirror);
        run_with_progress(command, "debootstrap", progress)?;

        let init = rootfs.join("sbin/zeroci-init");
        write_executable(&init, STAGE_ONE_INIT)?;
        let boot = rootfs.join("boot");
        let kernel = newest(&boot, "vmlinuz-")?;
        let initrd = newest(&boot, "initrd.img-")?;
        std::fs::copy(&kernel, work.join("vmlinuz")).map_err(io(&kernel))?;
        std::fs::copy(&initrd, work.join("initrd.img")).map_err(io(&initrd))?;

        progress("making the root file system (mkfs.ext4)");
        let image = work.join("rootfs.ext4");
        // Sparse: the file takes what the system needs; jobs grow their overlay, and the file system
        // in it, to their disk size at boot.
        let mut command = Command::new(mkfs);
        command
            .args(["-q", "-F", "-L", "zeroci-root", "-d"])
            .arg(&rootfs)
            .arg(&image)
            .arg("4G");
        run_with_progress(command, "mkfs.ext4", progress)?;
        std::fs::remove_dir_all(&rootfs).map_err(io(&rootfs))?;

        let bytes =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&image).map_err(io(&image))?)
                * 512;
        let info = ImageInfo {
            name: request.name.clone(),
            format: IMAGE_FORMAT,
            suite: request.suite.clone(),
            packages: request.packages.clone(),
            built_at: zeroci::now_unix_ms(),
            bytes,
        };
        let info_path = work.join("image.json");
        std::fs::write(
            &info_path,
            serde_json::to_vec_pretty(&info).unwrap_or_default(),
        )
        .map_err(io(&info_path))?;
        let target = self.dir.join(&request.name);
        let old = self
            .dir
            .join(format!(".old-{}-{}", request.name, std::process::id()));
        if target.exists() {
            std::fs::rename(&target, &old).map_err(io(&target))?;
        }
        std::fs::rename(&work, &target).map_err(io(&target))?;
        let _ = std::fs::remove_dir_all(&old);
        drop(cleanup);
        progress(&format!(
            "image {} built: {} MiB",
            request.name,
            bytes >> 20
        ));
        self.open(&request.name)
    }
}

fn check_name(name: &str) -> Result<(), ImageError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ImageError::BadName(name.to_string()))
    }
}

fn find_tool(tool: &'static str, hint: &'static str) -> Result<PathBuf, ImageError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .ok_or(ImageError::MissingTool { tool, hint })
}

/// Runs `command`, passing each line it prints to `progress`; its last lines explain a failure.
fn run_with_progress(
    mut command: Command,
    step: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::Step {
            step: step.to_string(),
            message: e.to_string(),
        })?;
    // stderr is drained on a thread of its own so neither pipe can fill and stall the tool.
    let stderr = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut text);
            text
        })
    });
    let mut tail = std::collections::VecDeque::new();
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            progress(&line);
            tail.push_back(line);
            if tail.len() > 5 {
                tail.pop_front();
            }
        }
    }
    let status = child.wait().map_err(|e| ImageError::Step {
        step: step.to_string(),
        message: e.to_string(),
    })?;
    let errors = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let mut message = format!("{status}");
    for line in tail
        .iter()
        .map(String::as_str)
        .chain(errors.lines().rev().take(5))
    {
        message.push_str("\n  ");
        message.push_str(line);
    }
    Err(ImageError::Step {
        step: step.to_string(),
        message,
    })
}

fn write_executable(path: &Path, text: &str) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))
}

/// The file in `dir` whose name starts with `prefix` and sorts last (the newest kernel).
fn newest(dir: &Path, prefix: &str) -> Result<PathBuf, ImageError> {
    let entries = std::fs::read_dir(dir).map_err(io(dir))?;
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .max()
        .ok_or_else(|| ImageError::Step {
            step: "finding the kernel".into(),
            message: format!("no {prefix}* in {}", dir.display()),
        })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_unknown_ones_list_the_known() {
        assert!(check_name("default").is_ok() && check_name("ubuntu-22.04_x").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = ImageStore::new(dir.path().to_path_buf());
        let missing = store.open("default").unwrap_err().to_string();
        assert!(
            missing.contains("no image \"default\"") && missing.contains("image build"),
            "{missing}"
        );
        let made = dir.path().join("small");
        std::fs::create_dir_all(&made).unwrap_or_else(|e| panic!("{e}"));
        let mut info = ImageInfo {
            name: "small".into(),
            format: 0,
            suite: "bookworm".into(),
            packages: vec![],
            built_at: 1,
            bytes: 0,
        };
        std::fs::write(
            made.join("image.json"),
            serde_json::to_vec(&info).unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            store
                .open("small")
                .unwrap_err()
                .to_string()
                .contains("rebuild it"),
            "an image of another format is refused"
        );
        info.format = IMAGE_FORMAT;
        std::fs::write(
            made.join("image.json"),
            serde_json::to_vec(&info).unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store.open("other").unwrap_err().to_string(),
            "no image \"other\"; known images: small"
        );
        store.remove("small").unwrap_or_else(|e| panic!("{e}"));
        assert!(store.list().is_empty());
    }
}
