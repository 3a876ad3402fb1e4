//! Side by side: the same figures measured on Pontus (the seed's CI) and Buildbot, where the benchmark
//! is given them (`--pontus PATH` to a clone of its repository, `--buildbot DIR` holding `buildbot`
//! and `buildbot-worker` from PyPI). Each is driven by a script of its own in `benches/peers/`, which
//! starts it on loopback and prints its figures as JSON; the table then shows how many times better
//! ZeroCI did in the same run.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::concurrency::burst_metric;
use crate::latency::commit_metric;
use crate::report::{Report, Samples};
use crate::throughput::{PEAK_MEMORY, STORED};

/// What the peers are run with.
pub struct PeerRuns {
    pub runs: usize,
    pub commits: usize,
    /// Buildbot stores logs at a few MB/s: a smaller step than ZeroCI's.
    pub buildbot_mib: u64,
}

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/peers")
        .join(name)
}

/// Runs a peer's script; its JSON, or why not.
fn measure(script_name: &str, args: &[String]) -> Result<Value, String> {
    let out = Command::new("python3")
        .arg(script(script_name))
        .args(args)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{script_name}: {e}"))
}

fn add_common(report: &mut Report, system: &str, figures: &Value, how: &str) {
    let times: Vec<f64> = figures["commit_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if !times.is_empty() {
        let samples = Samples::new(times);
        report.add_for(
            system,
            "1 commit",
            commit_metric("local", "median"),
            samples.median(),
            "ms",
            None,
            how,
        );
        report.add_for(
            system,
            "1 commit",
            commit_metric("local", "p90"),
            samples.percentile(90.0),
            "ms",
            None,
            "",
        );
    }
    let burst = &figures["burst"];
    if let (Some(commits), Some(tested)) = (burst["commits"].as_u64(), burst["tested"].as_u64()) {
        report.add_for(
            system,
            "6 burst",
            burst_metric(commits as usize),
            tested as f64,
            "commits",
            None,
            format!(
                "the commits took {:.2} s",
                burst["seconds"].as_f64().unwrap_or(0.0)
            ),
        );
    }
}

pub fn pontus(report: &mut Report, path: &Path, runs: &PeerRuns) {
    let args = [
        "--pontus".to_string(),
        path.display().to_string(),
        "--runs".into(),
        runs.runs.to_string(),
        "--commits".into(),
        runs.commits.to_string(),
    ];
    match measure("pontus.py", &args) {
        Ok(figures) => add_common(
            report,
            "pontus",
            &figures,
            "its observer polls every 5 s; commits at random points of the cycle",
        ),
        Err(why) => report.add_for(
            "pontus",
            "peers",
            "could not be measured",
            0.0,
            "",
            None,
            why,
        ),
    }
}

pub fn buildbot(report: &mut Report, bin_dir: &Path, runs: &PeerRuns) {
    let args = [
        "--buildbot".to_string(),
        bin_dir.display().to_string(),
        "--runs".into(),
        runs.runs.to_string(),
        "--commits".into(),
        runs.commits.to_string(),
        "--mib".into(),
        runs.buildbot_mib.to_string(),
    ];
    let figures = match measure("buildbot.py", &args) {
        Ok(figures) => figures,
        Err(why) => {
            report.add_for(
                "buildbot",
                "peers",
                "could not be measured",
                0.0,
                "",
                None,
                why,
            );
            return;
        }
    };
    add_common(
        report,
        "buildbot",
        &figures,
        "post-commit hook: `buildbot sendchange`",
    );
    report.add_for(
        "buildbot",
        "4 throughput",
        STORED,
        figures["throughput_mb_s"].as_f64().unwrap_or(0.0),
        "MB/s",
        None,
        format!(
            "{} MiB, build start → end (whole seconds)",
            runs.buildbot_mib
        ),
    );
    report.add_for(
        "buildbot",
        "4 throughput",
        PEAK_MEMORY,
        figures["peak_rss_mib"].as_f64().unwrap_or(0.0),
        "MiB",
        None,
        "the master's VmHWM",
    );
}
