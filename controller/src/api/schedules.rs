//! Schedules as the control API shows them.

use zeroci::cron::CronSchedule;
use zeroci::pb;

use crate::jobs::JobStatus;
use crate::schedules::timing::NEVER;
use crate::schedules::{Origin, Schedule, Target};

/// The API's view of a schedule; `last_status` is its latest run's, when there was one.
pub fn schedule_info(schedule: &Schedule, last_status: Option<JobStatus>) -> pb::ScheduleInfo {
    let mut info = pb::ScheduleInfo {
        name: schedule.name.clone(),
        cron: schedule.cron.clone(),
        time_zone: schedule.time_zone.clone(),
        description: CronSchedule::parse(&schedule.cron, &schedule.time_zone)
            .map(|c| c.describe())
            .unwrap_or_default(),
        step_timeout_secs: schedule.step_timeout_secs,
        allow_overlap: schedule.allow_overlap,
        paused: schedule.paused,
        next_at_unix_ms: if schedule.next_at == NEVER {
            0
        } else {
            schedule.next_at
        },
        last_job_id: schedule.last_job.unwrap_or(0),
        last_status: last_status.map_or(pb::JobStatus::Unspecified, JobStatus::to_pb) as i32,
        skipped: schedule.skipped,
        created_at_unix_ms: schedule.created_at,
        ..Default::default()
    };
    match &schedule.origin {
        Origin::Api { created_by } => {
            info.origin = "api".into();
            info.created_by = created_by.clone();
        }
        Origin::RunOn => info.origin = "run_on".into(),
    }
    match &schedule.target {
        Target::Repository {
            repo,
            repo_url,
            ref_name,
            ..
        } => {
            info.repo = repo.clone();
            info.repo_url = repo_url.clone();
            info.ref_name = ref_name.clone();
        }
        Target::Commands {
            image_name,
            install,
            test,
        } => {
            info.repo = schedule.name.clone();
            info.image_name = image_name.clone().unwrap_or_default();
            info.install = install.clone();
            info.test = test.clone();
        }
    }
    info
}
