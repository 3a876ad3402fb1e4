//! Sections 1 and 2: a commit's way to its final status through the post-commit hook, and where that
//! time goes, itemised from the controller's own log (one JSON object per line, microsecond stamps).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use zeroci_testkit::git;

use crate::report::{Report, Samples, Target, ms};
use crate::setup::{self, Controller, Machines};

/// The milestones of a job in the controller's log (messages containing one of the `|`-separated
/// words), in order, with what the interval up to each is called.
const MILESTONES: &[(&str, &str)] = &[
    ("job queued", ""),
    ("provisioning", "dispatch: queued → a worker provisions"),
    // `local` machines log "local agent started", `vm` machines "vm started".
    (
        "agent started|vm started",
        "machine: provisioning → started",
    ),
    (
        "agent enrolled",
        "agent start (a VM boots first), key, enrolment (TLS)",
    ),
    (
        "agent attached",
        "attach: second TLS handshake, Hello/Welcome",
    ),
    (
        "steps sent to the agent",
        "checkout: clone, zeroCI.yaml read and planned",
    ),
    ("job finished", "steps run and reported, status stored"),
];

/// One commit's run: when `git commit` returned (wall clock, to line up with the log) and how long
/// until the follower saw the final status.
struct Run {
    job_id: u64,
    committed_at: SystemTime,
    seen_done_at: SystemTime,
    elapsed: Duration,
}

pub async fn commit_to_status(report: &mut Report, machines: &Machines, runs: usize) {
    let controller = Controller::start(machines, 4);
    let repo = setup::repo(controller.scratch(), "hooked", "script:\n  - true\n");
    setup::install_hook(&controller, &repo);
    let mut client = controller.client().await;
    let mut done = Vec::new();
    // The first commit warms the page cache and the connections.
    for n in 0..=runs {
        let run = commit_once(&mut client, &repo, n).await;
        if n > 0 {
            done.push(run);
        }
    }
    let label = machines.label();
    let times = Samples::of_durations(&done.iter().map(|r| r.elapsed).collect::<Vec<_>>());
    let target = matches!(machines, Machines::Local(_)).then_some(Target::AtMost(40.0));
    report.add(
        "1 commit",
        commit_metric(&label, "median"),
        times.median(),
        "ms",
        target,
        format!("git commit returned → `logs --follow` saw the status; {runs} commits"),
    );
    report.add(
        "1 commit",
        commit_metric(&label, "p90"),
        times.percentile(90.0),
        "ms",
        None,
        "",
    );
    itemise(report, &controller.log, &done, &label);
}

/// Section 1's figures, which the peers are compared on.
pub fn commit_metric(machines: &str, statistic: &str) -> String {
    format!("commit → final status, `true`, {machines}: {statistic}")
}

async fn commit_once(client: &mut setup::Client, repo: &Path, n: usize) -> Run {
    std::fs::write(repo.join("counter"), n.to_string()).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "bench"]);
    let (committed, committed_at) = (Instant::now(), SystemTime::now());
    // The hook queued the job before `git commit` returned.
    let job_id = setup::newest_job(client).await;
    let followed = setup::follow(client, job_id, committed, |_| {}).await;
    assert_eq!(followed.status, "success");
    Run {
        job_id,
        committed_at,
        seen_done_at: SystemTime::now(),
        elapsed: committed.elapsed(),
    }
}

/// Section 2: the median of each interval between milestones over `runs`, from the log.
fn itemise(report: &mut Report, log: &Path, runs: &[Run], label: &str) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let entries: Vec<(u64, &str, f64)> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|entry| {
            let job_id = entry["fields"]["job_id"].as_u64()?;
            let message = entry["fields"]["message"].as_str()?.to_string();
            let at = unix_ms(entry["timestamp"].as_str()?)?;
            let name = MILESTONES
                .iter()
                .find(|(m, _)| m.split('|').any(|word| message.contains(word)))?
                .0;
            Some((job_id, name, at))
        })
        .collect();
    let mut intervals: Vec<Vec<f64>> = vec![Vec::new(); MILESTONES.len() + 1];
    let mut after_finish = Vec::new();
    for run in runs {
        let at = |name: &str| {
            entries
                .iter()
                .find(|(id, n, _)| *id == run.job_id && *n == name)
                .map(|e| e.2)
        };
        let times: Option<Vec<f64>> = MILESTONES.iter().map(|(name, _)| at(name)).collect();
        let Some(times) = times else { continue };
        for i in 1..times.len() {
            intervals[i].push(times[i] - times[i - 1]);
        }
        after_finish.push(system_ms(run.seen_done_at) - times[times.len() - 1]);
        // What part of the run happened before `git commit` returned (the hook queues the job).
        intervals[0].push(system_ms(run.committed_at) - times[0]);
    }
    if intervals[1].is_empty() {
        report.add(
            "2 overhead",
            format!("({label}) no milestones in the controller's log"),
            0.0,
            "ms",
            None,
            log.display().to_string(),
        );
        return;
    }
    report.add(
        "2 overhead",
        format!("({label}) queued → `git commit` returned"),
        Samples::new(intervals[0].clone()).median(),
        "ms",
        None,
        "the hook queues the job before the commit returns: this much ran already",
    );
    for (i, (_, what)) in MILESTONES.iter().enumerate().skip(1) {
        report.add(
            "2 overhead",
            format!("({label}) {what}"),
            Samples::new(intervals[i].clone()).median(),
            "ms",
            None,
            "",
        );
    }
    report.add(
        "2 overhead",
        format!("({label}) status stored → seen by the follower"),
        Samples::new(after_finish).median(),
        "ms",
        None,
        "",
    );
}

/// Milliseconds since the epoch of an RFC 3339 timestamp.
fn unix_ms(stamp: &str) -> Option<f64> {
    let at =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    Some(at.unix_timestamp_nanos() as f64 / 1e6)
}

fn system_ms(at: SystemTime) -> f64 {
    ms(at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default())
}
