//! The controller binary's command line: `init`, and refusing an invalid configuration with exit 64
//! before binding any port. (Also makes `cargo test --workspace` build the binary for the e2e tests.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_zeroci-controller");

#[test]
fn init_then_invalid_config_exits_64_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("z");
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "config.toml",
        "cli.toml",
        "pki/ca.crt",
        "pki/ca.key",
        "pki/controller.crt",
        "pki/admin.crt",
    ] {
        assert!(home.join(file).is_file(), "{file} missing");
    }
    // A second init refuses to replace the CA.
    let again = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let config = home.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("workers = 5", "workers = \"many\"")).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("invalid configuration") && stderr.contains("workers"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "it must not report ready");

    std::fs::write(&config, text.replace("[main]", "[main]\nmystery = 1")).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mystery"));
}
