//! Component test: `zeroci-agent sandbox` built by a host user that is not root, as under a
//! controller that does not run as root (the keeper then cannot clone mount trees and the init does it
//! in its own namespace), against the in-process fake controller of `support`.

// Shared by several test binaries, each of which uses only part of it.
#[allow(dead_code)]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::*;
use zeroci::pb::{RunSteps, StepKind};

/// The host's `nobody`.
const UNPRIVILEGED: u32 = 65534;

/// A tmpfs mounted on the host for the test, unmounted when dropped.
struct HostMount(std::path::PathBuf);

impl HostMount {
    fn tmpfs(at: &Path) -> HostMount {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=1777,size=1m", "tmpfs"])
            .arg(at)
            .status()
            .expect("mount(8) from util-linux is needed by this test (apt-get install mount)");
        assert!(status.success(), "cannot mount a tmpfs on {}", at.display());
        HostMount(at.to_path_buf())
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_sandbox_shows_sources_under_tmp_seals_submounts_and_hides_linked_paths() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test starts the sandbox as another user: run it as root"
    );
    // Under /tmp, which the sandbox's own /tmp covers: so is the job's repository (made by `support`).
    let fixtures = tempfile::tempdir().unwrap();
    std::fs::set_permissions(fixtures.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shown = fixtures.path().join("shown");
    std::fs::create_dir(&shown).unwrap();
    std::fs::write(shown.join("secret"), "TOPSECRET\n").unwrap();
    // The path the controller asks to hide is a link to the file, which lies under a shown directory.
    let link = fixtures.path().join("state-link");
    std::os::unix::fs::symlink(shown.join("secret"), &link).unwrap();
    let _writable = HostMount::tmpfs(&shown.join("writable"));

    let probe = format!(
        "cat {shown}/secret; touch {shown}/writable/x 2>/dev/null && echo WROTE || echo REFUSED",
        shown = shown.display()
    );
    let case = Case {
        steps: Some(RunSteps {
            bin_path: String::new(),
            artifacts: Vec::new(),
            steps: vec![step(1, "probe", StepKind::Script, &probe)],
        }),
        sandbox: Some(SandboxCase {
            keeper_uid: UNPRIVILEGED,
            read_only: vec![shown.clone()],
            hidden: vec![link],
        }),
        ..Case::default()
    };
    let run = run_agent(case).await;
    let log = &run.log;
    assert_eq!(run.exit_code, Some(0), "agent log:\n{log}");
    let seen = run.seen.lock().unwrap();
    let out = outputs(&seen.stored);
    let stdout = String::from_utf8_lossy(out.get(&(1, 1)).map_or(&[][..], |v| v));
    assert!(
        !stdout.contains("TOPSECRET"),
        "a hidden path reached through its link's target: {stdout}"
    );
    assert!(
        stdout.contains("REFUSED") && !stdout.contains("WROTE"),
        "a mount below a read-only directory was writable: {stdout}; agent log:\n{log}"
    );
    assert!(
        seen.steps_decided,
        "the checkout from a repository under /tmp failed; agent log:\n{log}"
    );
}
