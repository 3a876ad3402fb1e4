//! Section 4: a step printing 1 GiB, stored: MB/s beside this disk's own write+fsync bandwidth
//! measured in the same run, and the controller's peak memory.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use zeroci::pb;

use crate::report::{Report, Target};
use crate::setup::{self, Client, Controller, Machines};

/// The figures the peers are compared on.
pub const STORED: &str = "a step's output stored, nobody watching";
pub const PEAK_MEMORY: &str = "controller peak RSS during the throughput runs";

/// The journal's batches are at most this large; the disk is measured writing the same way.
const BATCH: usize = 8 * 1024 * 1024;

pub async fn log_throughput(report: &mut Report, machines: &Machines, mib: u64) {
    let controller = Controller::start(machines, 4);
    let disk = disk_bandwidth(&controller.home, mib);
    report.add(
        "4 throughput",
        "this disk: write + fdatasync per 8 MiB",
        disk,
        "MB/s",
        None,
        format!("{mib} MiB written beside the controller's state"),
    );
    let target = 400f64.min(disk / 2.0);
    let bytes = mib * 1024 * 1024;
    let yaml = format!(
        "script:\n  - yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz | head -c {bytes}\n"
    );
    let repo = setup::repo(controller.scratch(), "loud", &yaml);
    let mut client = controller.client().await;
    // Nobody watching: submit → final status.
    let start = Instant::now();
    let id = setup::submit(&mut client, &repo).await;
    wait_final(&mut client, id).await;
    let elapsed = start.elapsed();
    let stored = std::fs::metadata(controller.home.join(format!("state/jobs/{id}/log")))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(stored >= bytes, "the log holds {stored} bytes");
    report.add(
        "4 throughput",
        STORED,
        bytes as f64 / elapsed.as_secs_f64() / 1e6,
        "MB/s",
        Some(Target::AtLeast(target)),
        format!(
            "{mib} MiB, submit → final status; ≥ 400 MB/s or half the disk's, whichever is lower; log file {stored} bytes"
        ),
    );
    // The same with a follower reading it live, as a watching user does.
    let start = Instant::now();
    let id = setup::submit(&mut client, &repo).await;
    let followed = setup::follow(&mut client, id, start, |_| {}).await;
    assert_eq!(followed.status, "success");
    report.add(
        "4 throughput",
        format!("{mib} MiB printed → stored, with `logs --follow` reading it live"),
        bytes as f64 / followed.done.as_secs_f64() / 1e6,
        "MB/s",
        None,
        format!("{} bytes reached the follower", followed.bytes),
    );
    report.add(
        "4 throughput",
        PEAK_MEMORY,
        controller.peak_rss_mib(),
        "MiB",
        Some(Target::AtMost(50.0)),
        "VmHWM over both runs",
    );
}

/// Waits for job `id`'s final status by asking every 10 ms.
pub async fn wait_final(client: &mut Client, id: u64) {
    loop {
        let job = client
            .get_job(pb::GetJobRequest { id })
            .await
            .unwrap()
            .into_inner();
        let status = job.status();
        if status.is_final() {
            assert_eq!(status.word(), "success");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// MB/s of writing `mib` MiB in 8 MiB batches, each followed by fdatasync, in `dir`'s file system.
fn disk_bandwidth(dir: &Path, mib: u64) -> f64 {
    let path = dir.join("bench-disk");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; BATCH];
    let total = mib as usize * 1024 * 1024;
    let start = Instant::now();
    let mut written = 0;
    while written < total {
        file.write_all(&chunk).unwrap();
        file.sync_data().unwrap();
        written += BATCH;
    }
    let rate = written as f64 / start.elapsed().as_secs_f64() / 1e6;
    drop(file);
    let _ = std::fs::remove_file(&path);
    rate
}
