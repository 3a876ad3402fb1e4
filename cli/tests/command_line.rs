//! The CLI binary without a controller: help, completions, and a clear error when there is no profile.
//! (Also makes `cargo test --workspace` build the binary for the e2e tests.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_zeroci");

#[test]
fn completions_are_printed_for_bash() {
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("zeroci"));
}

#[test]
fn a_missing_profile_is_a_clear_error_with_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env_remove("ZEROCI_PROFILE")
        .args(["jobs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("zeroci-controller init"), "{stderr}");
}
