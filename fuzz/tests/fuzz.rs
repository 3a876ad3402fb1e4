//! Every checked-in input replayed through its target (stable toolchain, a second), then every
//! target fuzzed by libFuzzer for a bounded time from that corpus (`cargo fuzz`, installed when
//! missing). A crash fails the test with the input libFuzzer saved and the command that reproduces it.

use std::path::{Path, PathBuf};
use std::process::Command;

use zeroci_fuzz::TARGETS;

/// Seconds each target is fuzzed for in the test run; `ZEROCI_FUZZ_SECS` overrides it (a longer
/// campaign by hand, or 0 to skip only the fuzzing part on purpose, which the test says).
const DEFAULT_FUZZ_SECS: u64 = 20;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn corpus(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

#[test]
fn every_checked_in_input_replays_through_its_target() {
    for (name, target) in TARGETS {
        let dir = corpus(name);
        let inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(
            inputs.len() >= 3,
            "{name}: the corpus needs seeds ({})",
            dir.display()
        );
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let replay = std::panic::catch_unwind(|| target(&data));
            assert!(
                replay.is_ok(),
                "{name} panics on {}: reproduce with `cargo fuzz run {name} --features libfuzzer {}`",
                input.display(),
                input.display()
            );
        }
    }
}

/// How the targets are built and run: see the build below.
const FLAGS: [&str; 5] = ["--dev", "--sanitizer", "none", "--features", "libfuzzer"];

fn cargo_fuzz() -> Command {
    zeroci_testkit::cargo_tool("fuzz", "cargo-fuzz", "0.13.2")
}

#[test]
fn every_target_survives_a_bounded_libfuzzer_run_from_its_corpus() {
    let secs: u64 = std::env::var("ZEROCI_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_FUZZ_SECS);
    if secs == 0 {
        eprintln!(
            "ZEROCI_FUZZ_SECS=0: libFuzzer runs skipped on purpose; the corpus replay still ran"
        );
        return;
    }
    // Its own target directory: the workspace's is locked by the `cargo test` running this, and the
    // instrumented build shares nothing with it anyway.
    let target_dir = fuzz_dir().join("../target/fuzz");
    // Without a sanitizer: the stable toolchain builds it (AddressSanitizer needs nightly; the code
    // under test is safe Rust, where libFuzzer's coverage finds the panics). Unoptimised: it builds
    // in half the time of a release build, and 20 seconds find as much either way.
    let build = cargo_fuzz()
        .arg("build")
        .args(FLAGS)
        .arg("--fuzz-dir")
        .arg(fuzz_dir())
        .env("CARGO_TARGET_DIR", &target_dir)
        // Built once per run: incremental state would only take disk (gigabytes, on CI's machine).
        .env("CARGO_INCREMENTAL", "0")
        .current_dir(fuzz_dir().join(".."))
        .status()
        .expect("run cargo fuzz build");
    assert!(build.success(), "cargo fuzz build failed");
    for (name, _) in TARGETS {
        // New inputs go to a scratch directory, never into the checked-in corpus.
        let scratch = tempfile::tempdir().unwrap();
        let artifacts = tempfile::Builder::new()
            .prefix(&format!("zeroci-fuzz-{name}-"))
            .tempdir()
            .unwrap()
            .keep();
        let run = cargo_fuzz()
            .arg("run")
            .args(FLAGS)
            .arg("--fuzz-dir")
            .arg(fuzz_dir())
            .arg(name)
            .arg(scratch.path())
            .arg(corpus(name))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=10")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .env("CARGO_TARGET_DIR", &target_dir)
            // Built once per run: incremental state would only take disk (gigabytes, on CI's machine).
            .env("CARGO_INCREMENTAL", "0")
            .current_dir(fuzz_dir().join(".."))
            .output()
            .expect("run cargo fuzz run");
        let stderr = String::from_utf8_lossy(&run.stderr);
        let summary: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("Done ") || l.contains("stat::number_of_executed_units"))
            .collect();
        eprintln!("{name}: {}", summary.join(" "));
        assert!(
            run.status.success(),
            "fuzz target {name} found a crash; the input is in {} (reproduce: cargo fuzz run --dev --sanitizer none --features libfuzzer --fuzz-dir fuzz {name} FILE)\n{}",
            artifacts.display(),
            stderr
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let _ = std::fs::remove_dir_all(&artifacts);
    }
}
