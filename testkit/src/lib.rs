//! Test support shared by the end-to-end tests, the component tests and the benchmark: one way to find
//! the built binaries, one git helper, one patience that CI can raise, one `eventually`.
//!
//! Nothing here knows ZeroCI's types, so any test crate of the workspace can use it without a
//! dependency cycle.

pub mod link;
pub mod services;
pub mod vm;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen "soon": 60 s, times
/// `ZEROCI_TEST_PATIENCE` when set (a slow CI machine sets 2 or 3). Tests wait on signals; this is only
/// the point where waiting turns into a failure.
pub fn patience() -> Duration {
    let factor = std::env::var("ZEROCI_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| *f > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(60.0 * factor)
}

/// The directory holding the workspace's binaries: `CI_BIN_DIR`, or the target directory of the
/// running test executable (`target/<profile>/deps/NAME-HASH` → `target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CI_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable directory");
    // Test binaries live in deps/; benchmarks and examples one level deeper or beside it.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target directory").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A workspace binary (`zeroci-controller`, `zeroci-agent`, `zeroci`); fails with how to build it.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test --workspace` (or `cargo build --release` for benchmarks), which builds it, or set CI_BIN_DIR",
        path.display()
    );
    path
}

/// `cargo SUBCOMMAND` of a Cargo plugin (`fuzz`, `deny`), installed from crates.io at the pinned
/// `version` (`--locked`) into Cargo's own bin directory first when it is missing; fails saying how to
/// install it when that is impossible.
pub fn cargo_tool(subcommand: &str, crate_name: &str, version: &str) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let installed = Command::new(&cargo)
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        let status = Command::new(&cargo)
            .args(["install", crate_name, "--version", version, "--locked"])
            .status()
            .expect("run cargo install");
        assert!(
            status.success(),
            "cannot install {crate_name}: run `cargo install {crate_name} --version {version} --locked` (needs crates.io)"
        );
    }
    let mut command = Command::new(cargo);
    command.arg(subcommand);
    command
}

/// Runs git in `dir` with a fixed identity and no system or user configuration, and returns its trimmed stdout; panics with git's stderr.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        // The machine's own git configuration must not change what tests see.
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A new repository at `dir` (created) on branch `main` with `files` committed; returns the commit.
pub fn init_repo(dir: &Path, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).expect("repository directory");
    git(dir, &["init", "-q", "-b", "main"]);
    commit_files(dir, files, "initial")
}

/// Writes `files` into the work tree at `dir`, commits them, and returns the new commit.
pub fn commit_files(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (name, content) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("file's directory");
        }
        std::fs::write(&path, content).expect("file written");
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Waits until `check` returns `Some`, checking again on every `wake` (a change notification) and at
/// least every 20 ms; panics after [`patience`] with `what`. For conditions with no event to wait on,
/// such as "the store now says so".
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {:?} waiting for {what}",
            patience()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for synchronous tests: waits until `check` returns `Some`, checking every 10 ms;
/// panics after [`patience`] with `what`.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {:?} waiting for {what}",
            patience()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_what_the_check_found() {
        let mut calls = 0;
        let found = eventually("the third call", || {
            calls += 1;
            let n = calls;
            async move { (n >= 3).then_some(n) }
        })
        .await;
        assert_eq!(found, 3);
    }

    #[test]
    fn repositories_commit_what_they_are_given() {
        let dir = std::env::temp_dir().join(format!("zeroci-testkit-{}", std::process::id()));
        let first = init_repo(&dir, &[("a.txt", "a")]);
        let second = commit_files(&dir, &[("b/c.txt", "c")], "more");
        assert_ne!(first, second);
        assert_eq!(git(&dir, &["rev-parse", "HEAD"]), second);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
