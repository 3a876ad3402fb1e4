//! Sections 5 and 6: many jobs at once (200 submitted together to 50 workers), and a burst of commits
//! through the post-commit hook (how many get tested).

use std::time::Instant;

use zeroci_testkit::git;

use crate::report::{Report, Target};
use crate::setup::{self, Controller, Machines};

pub async fn burst(report: &mut Report, machines: &Machines, jobs: usize) {
    let controller = Controller::start(machines, 50);
    let repo = setup::repo(controller.scratch(), "trivial", "script:\n  - true\n");
    let client = controller.client().await;
    let start = Instant::now();
    let submits = (0..jobs).map(|_| {
        let mut client = client.clone();
        let repo = repo.clone();
        async move { setup::submit(&mut client, &repo).await }
    });
    let ids = futures::future::join_all(submits).await;
    let accepted = start.elapsed();
    let waits = ids.iter().map(|id| {
        let mut client = client.clone();
        let id = *id;
        async move { setup::follow(&mut client, id, start, |_| {}).await.status }
    });
    let statuses = futures::future::join_all(waits).await;
    let finished = start.elapsed();
    let ok = statuses.iter().filter(|s| *s == "success").count();
    let section = "5 many jobs";
    report.add(
        section,
        format!("{jobs} jobs submitted at once: accepted"),
        jobs as f64 / accepted.as_secs_f64(),
        "jobs/s",
        None,
        format!("all accepted in {:.0} ms", accepted.as_secs_f64() * 1000.0),
    );
    report.add(
        section,
        format!("{jobs} jobs, workers = 50: all final"),
        finished.as_secs_f64(),
        "s",
        None,
        format!(
            "{:.1} jobs/s dispatched and finished; {ok} succeeded",
            jobs as f64 / finished.as_secs_f64()
        ),
    );
}

/// `commits` commits as fast as git makes them, each queueing its job from the hook.
pub async fn commit_burst(report: &mut Report, machines: &Machines, commits: usize) {
    let controller = Controller::start(machines, 8);
    let repo = setup::repo(controller.scratch(), "busy", "script:\n  - true\n");
    setup::install_hook(&controller, &repo);
    let mut client = controller.client().await;
    let first = setup::newest_job_or_none(&mut client).await;
    let start = Instant::now();
    let mut made = Vec::new();
    for n in 0..commits {
        std::fs::write(repo.join("counter"), n.to_string()).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", &format!("burst {n}")]);
        made.push(git(&repo, &["rev-parse", "HEAD"]).trim().to_string());
    }
    let burst = start.elapsed();
    let mut tested = 0;
    let last = setup::newest_job(&mut client).await;
    let mut commits_tested = Vec::new();
    for id in first.map_or(1, |f| f + 1)..=last {
        let followed = setup::follow(&mut client, id, start, |_| {}).await;
        let job = client
            .get_job(zeroci::pb::GetJobRequest { id })
            .await
            .unwrap()
            .into_inner();
        if followed.status == "success" && made.contains(&job.commit) {
            tested += 1;
            commits_tested.push(job.commit);
        }
    }
    commits_tested.sort();
    commits_tested.dedup();
    report.add(
        "6 burst",
        burst_metric(commits),
        commits_tested.len() as f64,
        "commits",
        Some(Target::AtLeast(commits as f64)),
        format!(
            "the commits took {:.2} s (the hook queues each before git returns); {tested} jobs succeeded; all final {:.2} s after the first",
            burst.as_secs_f64(),
            start.elapsed().as_secs_f64()
        ),
    );
}

/// The burst's figure, which the peers are compared on.
pub fn burst_metric(commits: usize) -> String {
    format!("{commits} commits in a row: commits tested")
}
