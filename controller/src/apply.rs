//! How journal frames change a job record. Live event handling and crash recovery both go through
//! [`apply_frame`], so a record rebuilt from the journal is the record the live path would have written.
//! Functions here are pure: no I/O, no clock.

use prost::Message;
use zeroci::pb;

use crate::jobs::{JobRecord, StepKind, StepRecord, StepStatus};
use crate::store::{Frame, FrameKind};

/// Name of the step that reports an invalid pipeline file (as the original ZeroCI named it).
pub const CONFIG_STEP_NAME: &str = "zeroCI.yaml";

/// Defaults that shape the plan; they come from the controller's config.
#[derive(Debug, Clone, Copy)]
pub struct PlanDefaults {
    pub step_timeout_secs: u64,
}

/// What the caller must do after a frame was applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    None,
    /// The record changed and must be stored.
    Changed,
    /// The pipeline is known: store the record and send these steps to the agent.
    RunSteps(Vec<pb::Step>),
    /// The pipeline file is unusable: the config step (index given) must get this message, then the
    /// job ends.
    ConfigError { step: u32, message: String },
    /// The agent has finished: the job ends.
    Finished,
}

/// The first step of every attempt.
pub fn checkout_step() -> StepRecord {
    StepRecord::new(0, "checkout", StepKind::Checkout)
}

/// Status and message of a step from its exit report.
pub fn exit_status(exited: &pb::StepExited) -> (StepStatus, String) {
    if exited.cancelled {
        let message = if exited.message.is_empty() { "cancelled".to_string() } else { exited.message.clone() };
        (StepStatus::Cancelled, message)
    } else if exited.timed_out {
        let message = if exited.message.is_empty() { "timed out".to_string() } else { exited.message.clone() };
        (StepStatus::Error, message)
    } else if exited.exit_code == 0 {
        (StepStatus::Success, exited.message.clone())
    } else if exited.exit_code < 0 {
        (StepStatus::Error, exited.message.clone())
    } else {
        (StepStatus::Failure, exited.message.clone())
    }
}

/// Applies one frame of the job's current attempt to its record.
pub fn apply_frame(record: &mut JobRecord, frame: &Frame, defaults: PlanDefaults) -> Effect {
    let at = frame.header.at_ms;
    match frame.header.kind {
        FrameKind::Output => Effect::None,
        FrameKind::StepStarted => match record.step_mut(frame.header.step) {
            Some(step) => {
                step.status = StepStatus::Running;
                step.started_at = at;
                Effect::Changed
            }
            None => Effect::None,
        },
        FrameKind::StepExited => {
            let Ok(exited) = pb::StepExited::decode(frame.payload.as_ref()) else { return Effect::None };
            let Some(step) = record.step_mut(frame.header.step) else { return Effect::None };
            let (mut status, message) = exit_status(&exited);
            if step.kind == StepKind::Config && status == StepStatus::Failure {
                // An invalid pipeline file is an error of the job, not a failing test.
                status = StepStatus::Error;
            }
            step.status = status;
            step.message = message;
            step.exit_code = Some(exited.exit_code);
            step.finished_at = at;
            if step.started_at == 0 {
                step.started_at = at;
            }
            Effect::Changed
        }
        FrameKind::CheckedOut => {
            let Ok(checked_out) = pb::CheckedOut::decode(frame.payload.as_ref()) else { return Effect::None };
            apply_checkout(record, &checked_out, defaults)
        }
        FrameKind::Finished => Effect::Finished,
    }
}

fn apply_checkout(record: &mut JobRecord, checked_out: &pb::CheckedOut, defaults: PlanDefaults) -> Effect {
    if !checked_out.commit.is_empty() {
        record.commit = checked_out.commit.clone();
    }
    // A replay must not add the plan twice.
    record.steps.retain(|s| s.kind == StepKind::Checkout);
    // Every message is what `zeroci lint` prints for the same file: one `zeroCI.yaml:LINE:COLUMN: KEY:
    // MESSAGE` line per error, then the warnings, which often explain the error (a misspelt key).
    let plan = if checked_out.pipeline_file_too_large {
        Err(zeroci::pipeline::too_large().to_string())
    } else if !checked_out.has_pipeline_file {
        Err(format!(
            "{}: no such file at the root of the repository at commit {}",
            zeroci::pipeline::FILE_NAME,
            record.commit
        ))
    } else {
        zeroci::pipeline::parse(&checked_out.pipeline_file).map_err(|e| e.to_string()).and_then(|p| {
            if p.jobs.len() > 1 {
                Err(format!(
                    "{}: jobs: this controller runs one job per pipeline; found {} (serial multi-job pipelines are not available yet)",
                    zeroci::pipeline::FILE_NAME,
                    p.jobs.len()
                ))
            } else {
                Ok(p)
            }
        })
    };
    match plan {
        Err(message) => {
            let index = record.steps.len() as u32;
            record.steps.push(StepRecord::new(index, CONFIG_STEP_NAME, StepKind::Config));
            Effect::ConfigError { step: index, message }
        }
        Ok(pipeline) => {
            let Some(job) = pipeline.jobs.into_iter().next() else {
                return Effect::Changed;
            };
            let timeout = if record.step_timeout_secs > 0 {
                record.step_timeout_secs
            } else {
                job.timeout_secs.unwrap_or(defaults.step_timeout_secs)
            };
            let shell = job.shell_bin.clone().unwrap_or_default();
            let mut next = record.steps.len() as u32;
            if !job.install.is_empty() {
                let mut step = StepRecord::new(next, "install", StepKind::Install);
                step.script = job.install.join("\n");
                step.shell = shell.clone();
                step.timeout_secs = timeout;
                record.steps.push(step);
                next += 1;
            }
            for script in job.steps {
                let mut step = StepRecord::new(next, script.name, StepKind::Script);
                step.script = script.cmd;
                step.shell = shell.clone();
                step.timeout_secs = timeout;
                record.steps.push(step);
                next += 1;
            }
            Effect::RunSteps(planned_steps(record))
        }
    }
}

/// The install and script steps of the record, as the agent runs them; empty before the checkout.
pub fn planned_steps(record: &JobRecord) -> Vec<pb::Step> {
    record
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Install | StepKind::Script))
        .map(StepRecord::to_run_step)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NewJob;
    use crate::store::FrameHeader;

    fn record() -> JobRecord {
        let mut r = JobRecord::new(
            1,
            NewJob {
                repo: "r".into(),
                repo_url: "/r".into(),
                ref_name: "main".into(),
                commit: "HEAD".into(),
                triggered_by: "t".into(),
                step_timeout_secs: 0,
            },
            0,
        );
        r.attempt = 1;
        r.steps.push(checkout_step());
        r
    }

    fn frame(kind: FrameKind, step: u32, payload: Vec<u8>) -> Frame {
        Frame {
            header: FrameHeader { attempt: 1, step, kind, stream: 0, seq: 1, at_ms: 10 },
            payload: payload.into(),
        }
    }

    const DEFAULTS: PlanDefaults = PlanDefaults { step_timeout_secs: 99 };

    fn checked_out(file: &str) -> Frame {
        let msg = pb::CheckedOut {
            commit: "abc123".into(),
            has_pipeline_file: true,
            pipeline_file: file.as_bytes().to_vec().into(),
            pipeline_file_too_large: false,
        };
        frame(FrameKind::CheckedOut, 0, msg.encode_to_vec())
    }

    #[test]
    fn checkout_produces_the_plan_once_even_when_replayed() {
        let mut r = record();
        let f = checked_out("install:\n  - echo a\nscript:\n  - echo b\n  - echo c\n");
        let Effect::RunSteps(steps) = apply_frame(&mut r, &f, DEFAULTS) else { panic!() };
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].kind, pb::StepKind::Install as i32);
        assert_eq!(steps[1].timeout_secs, 99);
        assert_eq!(r.commit, "abc123");
        apply_frame(&mut r, &f, DEFAULTS);
        assert_eq!(r.steps.len(), 4);
    }

    #[test]
    fn invalid_pipeline_gives_a_config_step_with_the_parser_message() {
        let mut r = record();
        let Effect::ConfigError { step, message } = apply_frame(&mut r, &checked_out("scrpt: [a]\n"), DEFAULTS)
        else {
            panic!()
        };
        assert_eq!(r.steps[step as usize].name, CONFIG_STEP_NAME);
        // Exactly what `zeroci lint` prints for the file.
        assert_eq!(message, zeroci::pipeline::lint(b"scrpt: [a]\n").render_diagnostics(zeroci::pipeline::FILE_NAME));
        assert_eq!(
            message,
            "zeroCI.yaml:1:1: script: is required: a list of commands to run\n\
             zeroCI.yaml:1:1: warning: scrpt: unknown key, ignored; did you mean `script`?"
        );
    }

    #[test]
    fn a_file_too_large_to_send_is_a_config_error() {
        let mut r = record();
        let msg = pb::CheckedOut { commit: "abc".into(), has_pipeline_file: true, pipeline_file: Default::default(), pipeline_file_too_large: true };
        let f = frame(FrameKind::CheckedOut, 0, msg.encode_to_vec());
        let Effect::ConfigError { message, .. } = apply_frame(&mut r, &f, DEFAULTS) else { panic!() };
        assert!(message.starts_with("zeroCI.yaml:1:1: file is larger than 1048576 bytes"), "{message}");
    }

    #[test]
    fn exits_map_to_step_statuses() {
        let mut r = record();
        let exited = |code, timed_out| pb::StepExited { step: 0, exit_code: code, timed_out, cancelled: false, message: String::new() };
        apply_frame(&mut r, &frame(FrameKind::StepExited, 0, exited(3, false).encode_to_vec()), DEFAULTS);
        assert_eq!(r.steps[0].status, StepStatus::Failure);
        assert_eq!(r.steps[0].exit_code, Some(3));
        apply_frame(&mut r, &frame(FrameKind::StepExited, 0, exited(124, true).encode_to_vec()), DEFAULTS);
        assert_eq!(r.steps[0].status, StepStatus::Error);
    }
}
