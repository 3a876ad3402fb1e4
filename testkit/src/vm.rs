//! The VM image tests boot (`vm` machines, and the simulated grid's zmachines): built once per
//! target directory from Debian's packages, as `zeroci-controller image build` does for users, and
//! reused while the controller still boots it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::{bin, bin_dir};

/// The images directory holding the `default` image, built on first use.
pub fn test_images() -> PathBuf {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES.get_or_init(build_test_image).clone()
}

fn build_test_image() -> PathBuf {
    let images = bin_dir().join("zeroci-test-images");
    let tools = ["qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4"];
    if !tools.iter().all(|tool| on_path(tool)) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-vm-tools");
        let installed = Command::new(&script).status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "VM tests need {tools:?}: run {} as root (apt-get install qemu-system-x86 qemu-utils debootstrap e2fsprogs)",
            script.display()
        );
    }
    // `image build` reads where images go from a config: a throw-away installation's.
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let init = Command::new(bin("zeroci-controller"))
        .args(["init", "--dir"])
        .arg(&home)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(init.success());
    let config = home.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "[provisioner]\nkind = \"local\"",
        &format!(
            "[provisioner]\nkind = \"vm\"\n\n[provisioner.vm]\nimages_dir = {:?}",
            images.display().to_string()
        ),
        1,
    );
    let text = text.replacen(
        "[provisioner.local]\nisolation = \"namespaces\"\nnetwork = \"host\"\n",
        "",
        1,
    );
    std::fs::write(&config, text).unwrap();
    // Reused while this controller still boots it (an image of an older format is not listed).
    let listed = Command::new(bin("zeroci-controller"))
        .arg("--config")
        .arg(&config)
        .args(["image", "list"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&listed.stdout).starts_with("default\t") {
        return images;
    }
    let out = Command::new(bin("zeroci-controller"))
        .arg("--config")
        .arg(&config)
        .args(["image", "build"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "image build failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    images
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(tool).is_file())
}
