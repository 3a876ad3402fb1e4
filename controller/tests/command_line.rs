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

#[test]
fn a_relative_config_path_works_and_unknown_kinds_are_refused() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("z");
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(out.status.success());
    let config = home.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // The generated file points users to what they have, not to the project's design notes.
    let first = text.lines().next().unwrap();
    assert!(
        !first.contains("design.md") && first.contains("examples/config.toml"),
        "{first}"
    );

    // `--config config.toml` from the config's own directory: its parent is the empty path.
    let mut controller = Command::new(BIN)
        .args(["--config", "config.toml", "--grpc-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .current_dir(&home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(controller.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = controller.kill();
    let status = controller.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut controller.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        line.starts_with("zeroci-controller ready"),
        "not ready ({status}): {line}{stderr}"
    );

    for (from, to, word) in [
        ("kind = \"local\"", "kind = \"teleport\"", "teleport"),
        (
            "backend = \"embedded\"",
            "backend = \"punchcards\"",
            "punchcards",
        ),
    ] {
        assert!(text.contains(from), "{text}");
        std::fs::write(&config, text.replace(from, to)).unwrap();
        let out = Command::new(BIN)
            .args(["--config", "config.toml"])
            .current_dir(&home)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(word), "{stderr}");
    }
}
