//! How log events change a job record. Live event handling and crash recovery both go through
//! [`apply_event`], so a record rebuilt from the log is the record the live path would have written.
//! Functions here are pure: no I/O, no clock.

use prost::Message;
use zeroci::pb;

use crate::jobs::{ArtifactRecord, JobRecord, StageRecord, StepKind, StepRecord, StepStatus};
use crate::store::{ArtifactNote, EventKind, LogEvent, ReportNote};

/// Name of the step that reports an invalid pipeline file (as the original ZeroCI named it).
pub const CONFIG_STEP_NAME: &str = "zeroCI.yaml";

/// Defaults that shape the plan; they come from the controller's config.
#[derive(Debug, Clone, Copy)]
pub struct PlanDefaults {
    pub step_timeout_secs: u64,
    /// The ceiling no pipeline file or submitted timeout can raise a step's timeout past; 0: none.
    pub max_step_timeout_secs: u64,
}

/// What the caller must do after a frame was applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    None,
    /// The record changed and must be stored.
    Changed,
    /// The pipeline is known: store the record and send these steps to the agent. On a run's first
    /// plan from a repository's file, `run_on_schedule` is what the file says under
    /// `run_on.schedule` (`Some(None)`: nothing); `None` when there is nothing to learn.
    RunSteps {
        run: pb::RunSteps,
        run_on_schedule: Option<Option<zeroci::pipeline::ScheduleTrigger>>,
    },
    /// The pipeline file is unusable: the config step (index given) must get this message, then the
    /// job ends.
    ConfigError {
        step: u32,
        message: String,
    },
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
        let message = if exited.message.is_empty() {
            "cancelled".to_string()
        } else {
            exited.message.clone()
        };
        (StepStatus::Cancelled, message)
    } else if exited.timed_out {
        let message = if exited.message.is_empty() {
            "timed out".to_string()
        } else {
            exited.message.clone()
        };
        (StepStatus::Error, message)
    } else if exited.exit_code == 0 {
        (StepStatus::Success, exited.message.clone())
    } else if exited.exit_code < 0 {
        (StepStatus::Error, exited.message.clone())
    } else {
        (StepStatus::Failure, exited.message.clone())
    }
}

/// Applies one log event of the job's current run to its record.
pub fn apply_event(record: &mut JobRecord, event: &LogEvent, defaults: PlanDefaults) -> Effect {
    let at = event.at_ms;
    match event.kind {
        EventKind::Output => Effect::None,
        EventKind::StepStarted => match record.step_mut(event.step) {
            Some(step) => {
                step.status = StepStatus::Running;
                step.started_at = at;
                Effect::Changed
            }
            None => Effect::None,
        },
        EventKind::StepExited => {
            let Ok(exited) = pb::StepExited::decode(event.payload.as_ref()) else {
                return Effect::None;
            };
            let Some(step) = record.step_mut(event.step) else {
                return Effect::None;
            };
            let (mut status, message) = exit_status(&exited);
            if step.kind == StepKind::Config && status == StepStatus::Failure {
                // An invalid pipeline file is an error of the job, not a failing test.
                status = StepStatus::Error;
            }
            step.status = status;
            // A test-report problem noted before the exit stays unless the exit has its own explanation.
            if !message.is_empty() || step.message.is_empty() {
                step.message = message;
            }
            step.exit_code = Some(exited.exit_code);
            step.finished_at = at;
            if step.started_at == 0 {
                step.started_at = at;
            }
            Effect::Changed
        }
        EventKind::CheckedOut => {
            let Ok(checked_out) = pb::CheckedOut::decode(event.payload.as_ref()) else {
                return Effect::None;
            };
            apply_checkout(record, &checked_out, defaults)
        }
        EventKind::Finished => Effect::Finished,
        EventKind::TestReport => match ReportNote::decode(&event.payload) {
            Some(note) => apply_test_report(record, event.step, &note),
            None => Effect::None,
        },
        EventKind::Artifact => match ArtifactNote::decode(&event.payload) {
            Some(note) => apply_artifact(record, event, &note),
            None => Effect::None,
        },
    }
}

fn apply_checkout(
    record: &mut JobRecord,
    checked_out: &pb::CheckedOut,
    defaults: PlanDefaults,
) -> Effect {
    if !checked_out.commit.is_empty() {
        record.commit = checked_out.commit.clone();
    }
    if !record.stages.is_empty() {
        // A later pipeline job's machine: the plan was made from the first checkout's file.
        return Effect::RunSteps {
            run: run_steps(record),
            run_on_schedule: None,
        };
    }
    // A replay must not add the plan twice.
    record
        .steps
        .retain(|s| s.kind == StepKind::Checkout && s.stage == 0);
    if record.run_on_check.is_some()
        && record.inline_pipeline.is_none()
        && !checked_out.has_pipeline_file
        && !checked_out.pipeline_file_too_large
    {
        // What the trigger would have said had it read the file: a commit without one is not built.
        record.skipped = Some(format!(
            "no {} at commit {}",
            zeroci::pipeline::FILE_NAME,
            record.commit
        ));
        return Effect::RunSteps {
            run: pb::RunSteps::default(),
            // No pipeline file any more: no schedule either (as the trigger does).
            run_on_schedule: Some(None),
        };
    }
    // Every message is what `zeroci lint` prints for the same file: one `zeroCI.yaml:LINE:COLUMN: KEY:
    // MESSAGE` line per error, then the warnings, which often explain the error (a misspelt key).
    let plan = if let Some(inline) = &record.inline_pipeline {
        // A job without a repository: its pipeline came with it.
        zeroci::pipeline::parse(inline.as_bytes()).map_err(|e| e.to_string())
    } else if checked_out.pipeline_file_too_large {
        Err(zeroci::pipeline::too_large().to_string())
    } else if !checked_out.has_pipeline_file {
        Err(format!(
            "{}: no such file at the root of the repository at commit {}",
            zeroci::pipeline::FILE_NAME,
            record.commit
        ))
    } else {
        zeroci::pipeline::parse(&checked_out.pipeline_file).map_err(|e| e.to_string())
    };
    match plan {
        Err(message) => {
            let index = record.steps.len() as u32;
            record
                .steps
                .push(StepRecord::new(index, CONFIG_STEP_NAME, StepKind::Config));
            Effect::ConfigError {
                step: index,
                message,
            }
        }
        Ok(pipeline) => {
            let run_on_schedule = record
                .inline_pipeline
                .is_none()
                .then(|| pipeline.schedule());
            let excluded = record
                .run_on_check
                .as_ref()
                .and_then(|check| pipeline.run_on_excludes(&check.event, &check.branch));
            if let Some(reason) = excluded {
                // Nothing is planned: the agent runs no step and the job ends skipped.
                record.skipped = Some(reason);
                return Effect::RunSteps {
                    run: pb::RunSteps::default(),
                    run_on_schedule,
                };
            }
            plan_stages(record, pipeline, defaults);
            Effect::RunSteps {
                run: run_steps(record),
                run_on_schedule,
            }
        }
    }
}

/// Adds every pipeline job's steps to the record: the whole plan is visible from the first checkout on.
/// With several pipeline jobs, step names carry the job's name so they stay distinguishable.
fn plan_stages(
    record: &mut JobRecord,
    pipeline: zeroci::pipeline::Pipeline,
    defaults: PlanDefaults,
) {
    let prefixed = pipeline.jobs.len() > 1;
    let label = |job: &str, step: &str| {
        if prefixed {
            format!("{job}: {step}")
        } else {
            step.to_string()
        }
    };
    let mut next = record.steps.len() as u32;
    for (stage, job) in pipeline.jobs.into_iter().enumerate() {
        let stage = stage as u32;
        let checkout_step = if stage == 0 {
            0
        } else {
            let mut checkout =
                StepRecord::new(next, label(&job.name, "checkout"), StepKind::Checkout);
            checkout.stage = stage;
            record.steps.push(checkout);
            next += 1;
            next - 1
        };
        record.stages.push(StageRecord {
            name: job.name.clone(),
            image_name: job.image_name.clone(),
            bin_path: job.bin_path.clone(),
            resources: job.resources,
            labels: job.labels.clone(),
            checkout_step,
        });
        let mut timeout = if record.step_timeout_secs > 0 {
            record.step_timeout_secs
        } else {
            job.timeout_secs.unwrap_or(defaults.step_timeout_secs)
        };
        let ceiling = defaults.max_step_timeout_secs;
        if ceiling > 0 && (timeout == 0 || timeout > ceiling) {
            timeout = ceiling;
        }
        let shell = job.shell_bin.clone().unwrap_or_default();
        let mut add = |name: String, kind: StepKind, script: String| {
            let mut step = StepRecord::new(next, name, kind);
            step.script = script;
            step.shell = shell.clone();
            step.timeout_secs = timeout;
            step.stage = stage;
            record.steps.push(step);
            next += 1;
        };
        if !job.install.is_empty() {
            add(
                label(&job.name, "install"),
                StepKind::Install,
                job.install.join("\n"),
            );
        }
        for script in job.steps {
            add(label(&job.name, &script.name), StepKind::Script, script.cmd);
        }
    }
}

/// The install and script steps of the current pipeline job, as the agent runs them; empty before the
/// plan is known.
pub fn planned_steps(record: &JobRecord) -> Vec<pb::Step> {
    let stage = record.stage();
    record
        .steps
        .iter()
        .filter(|s| s.stage == stage && matches!(s.kind, StepKind::Install | StepKind::Script))
        .map(StepRecord::to_run_step)
        .collect()
}

/// What the current machine must run: its steps, the file to keep, and earlier stages' artifacts.
pub fn run_steps(record: &JobRecord) -> pb::RunSteps {
    let stage = record.stage();
    pb::RunSteps {
        steps: planned_steps(record),
        bin_path: record
            .stages
            .get(stage as usize)
            .and_then(|s| s.bin_path.clone())
            .unwrap_or_default(),
        artifacts: record
            .artifacts
            .iter()
            .filter(|a| a.stage < stage && a.error.is_empty())
            .map(|a| a.name.clone())
            .collect(),
    }
}

fn apply_test_report(record: &mut JobRecord, step: u32, note: &ReportNote) -> Effect {
    let Some(step) = record.step_mut(step) else {
        return Effect::None;
    };
    if note.too_large {
        step.message = format!("test report {} is too large to keep", note.source);
        return Effect::Changed;
    }
    match &note.totals {
        // A step may send more than one report: they add up.
        Some(totals) => step.tests.get_or_insert_with(Default::default).add(totals),
        // Kept as sent; a broken report never fails the job by itself.
        None => step.message = format!("test report {} is unreadable: {}", note.source, note.error),
    }
    Effect::Changed
}

fn apply_artifact(record: &mut JobRecord, event: &LogEvent, note: &ArtifactNote) -> Effect {
    if !note.last {
        return Effect::None;
    }
    // From the event, not the record: a replay applies earlier stages' events too.
    let stage = event.cursor.attempt.saturating_sub(record.first_attempt);
    record
        .artifacts
        .retain(|a| !(a.name == note.name && a.stage == stage));
    record.artifacts.push(ArtifactRecord {
        name: note.name.clone(),
        size: note.offset + note.len,
        stage,
        after_step: event.step,
        error: note.error.clone(),
    });
    Effect::Changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobStatus, NewJob};
    use crate::store::LogCursor;

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
                github_repo: None,
                untrusted: false,
                supersede: false,
                ..Default::default()
            },
            0,
        );
        r.attempt = 1;
        r.first_attempt = 1;
        r.steps.push(checkout_step());
        r
    }

    fn frame(kind: EventKind, step: u32, payload: Vec<u8>) -> LogEvent {
        LogEvent {
            cursor: LogCursor::new(1, 1),
            agent_seq: 1,
            step,
            kind,
            stream: 0,
            at_ms: 10,
            payload: payload.into(),
            withheld: 0,
        }
    }

    const DEFAULTS: PlanDefaults = PlanDefaults {
        step_timeout_secs: 99,
        max_step_timeout_secs: 0,
    };

    fn checked_out(file: &str) -> LogEvent {
        let msg = pb::CheckedOut {
            commit: "abc123".into(),
            has_pipeline_file: true,
            pipeline_file: file.as_bytes().to_vec().into(),
            pipeline_file_too_large: false,
        };
        frame(EventKind::CheckedOut, 0, msg.encode_to_vec())
    }

    #[test]
    fn a_run_on_check_left_to_the_checkout_skips_an_excluded_event_and_plans_nothing() {
        let check = |event: &str, branch: &str| crate::jobs::RunOnCheck {
            event: event.into(),
            branch: branch.into(),
        };
        let file = "script:\n  - echo b\nrun_on:\n  push: {branches: [main]}\n";
        let mut allowed = record();
        allowed.run_on_check = Some(check("push", "main"));
        let Effect::RunSteps { run, .. } = apply_event(&mut allowed, &checked_out(file), DEFAULTS)
        else {
            panic!()
        };
        assert_eq!(run.steps.len(), 1);
        assert_eq!(allowed.final_status(), JobStatus::Success);

        for (event, branch, reason) in [
            ("push", "dev", "run_on.push.branches does not include dev"),
            (
                "pull_request",
                "main",
                "run_on has no `pull_request` trigger",
            ),
        ] {
            let mut skipped = record();
            skipped.run_on_check = Some(check(event, branch));
            // Replayed (crash recovery): the same decision, still nothing planned.
            for _ in 0..2 {
                let Effect::RunSteps { run, .. } =
                    apply_event(&mut skipped, &checked_out(file), DEFAULTS)
                else {
                    panic!()
                };
                assert!(run.steps.is_empty());
            }
            assert_eq!(skipped.steps.len(), 1, "only the checkout");
            assert_eq!(skipped.skipped.as_deref(), Some(reason));
            assert_eq!(skipped.final_status(), JobStatus::Skipped);
        }

        let mut no_file = record();
        no_file.run_on_check = Some(check("push", "main"));
        let missing = pb::CheckedOut {
            commit: "abc123".into(),
            ..Default::default()
        };
        let event = frame(EventKind::CheckedOut, 0, missing.encode_to_vec());
        assert!(matches!(
            apply_event(&mut no_file, &event, DEFAULTS),
            Effect::RunSteps { .. }
        ));
        assert_eq!(
            no_file.skipped.as_deref(),
            Some("no zeroCI.yaml at commit abc123")
        );
        // Without the check (the trigger read the file itself), a missing file is the job's error.
        let mut checked = record();
        assert!(matches!(
            apply_event(&mut checked, &event, DEFAULTS),
            Effect::ConfigError { .. }
        ));
    }

    #[test]
    fn checkout_produces_the_plan_once_even_when_replayed() {
        let mut r = record();
        let f = checked_out("install:\n  - echo a\nscript:\n  - echo b\n  - echo c\n");
        let Effect::RunSteps { run, .. } = apply_event(&mut r, &f, DEFAULTS) else {
            panic!()
        };
        let steps = run.steps;
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].kind, pb::StepKind::Install as i32);
        assert_eq!(steps[1].timeout_secs, 99);
        assert_eq!(r.commit, "abc123");
        apply_event(&mut r, &f, DEFAULTS);
        assert_eq!(r.steps.len(), 4);
    }

    #[test]
    fn several_pipeline_jobs_are_planned_at_once_and_run_stage_by_stage() {
        let mut r = record();
        let yaml = "jobs:\n  - name: a\n    script:\n      - {name: s, cmd: make}\n    bin_path: out/x\n  - name: b\n    install: pip install\n    script:\n      - {name: t, cmd: test}\n";
        let Effect::RunSteps { run, .. } = apply_event(&mut r, &checked_out(yaml), DEFAULTS) else {
            panic!()
        };
        assert_eq!(
            run.steps
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["a: s"]
        );
        assert_eq!(run.bin_path, "out/x");
        let names: Vec<_> = r.steps.iter().map(|s| (s.name.as_str(), s.stage)).collect();
        assert_eq!(
            names,
            [
                ("checkout", 0),
                ("a: s", 0),
                ("b: checkout", 1),
                ("b: install", 1),
                ("b: t", 1)
            ]
        );
        assert_eq!(r.stages[1].checkout_step, 2);
        // The artifact kept by stage 0 goes to stage 1.
        let note = ArtifactNote {
            name: "out/x".into(),
            offset: 0,
            len: 3,
            last: true,
            error: String::new(),
        };
        apply_event(
            &mut r,
            &frame(EventKind::Artifact, 1, note.encode().to_vec()),
            DEFAULTS,
        );
        assert_eq!(r.artifacts[0].size, 3);
        assert!(r.has_next_stage());
        r.attempt = 2;
        assert_eq!(r.checkout_step(), 2);
        let next = run_steps(&r);
        assert_eq!(next.steps.len(), 2);
        assert_eq!(next.artifacts, vec!["out/x".to_string()]);
        assert!(!r.has_next_stage());
    }

    #[test]
    fn invalid_pipeline_gives_a_config_step_with_the_parser_message() {
        let mut r = record();
        let Effect::ConfigError { step, message } =
            apply_event(&mut r, &checked_out("scrpt: [a]\n"), DEFAULTS)
        else {
            panic!()
        };
        assert_eq!(r.steps[step as usize].name, CONFIG_STEP_NAME);
        // Exactly what `zeroci lint` prints for the file.
        assert_eq!(
            message,
            zeroci::pipeline::lint(b"scrpt: [a]\n").render_diagnostics(zeroci::pipeline::FILE_NAME)
        );
        assert_eq!(
            message,
            "zeroCI.yaml:1:1: script: is required: a list of commands to run\n\
             zeroCI.yaml:1:1: warning: scrpt: unknown key, ignored; did you mean `script`?"
        );
    }

    #[test]
    fn a_file_too_large_to_send_is_a_config_error() {
        let mut r = record();
        let msg = pb::CheckedOut {
            commit: "abc".into(),
            has_pipeline_file: true,
            pipeline_file: Default::default(),
            pipeline_file_too_large: true,
        };
        let f = frame(EventKind::CheckedOut, 0, msg.encode_to_vec());
        let Effect::ConfigError { message, .. } = apply_event(&mut r, &f, DEFAULTS) else {
            panic!()
        };
        assert!(
            message.starts_with("zeroCI.yaml:1:1: file is larger than 1048576 bytes"),
            "{message}"
        );
    }

    #[test]
    fn exits_map_to_step_statuses() {
        let mut r = record();
        let exited = |code, timed_out| pb::StepExited {
            step: 0,
            exit_code: code,
            timed_out,
            cancelled: false,
            message: String::new(),
        };
        apply_event(
            &mut r,
            &frame(EventKind::StepExited, 0, exited(3, false).encode_to_vec()),
            DEFAULTS,
        );
        assert_eq!(r.steps[0].status, StepStatus::Failure);
        assert_eq!(r.steps[0].exit_code, Some(3));
        apply_event(
            &mut r,
            &frame(EventKind::StepExited, 0, exited(124, true).encode_to_vec()),
            DEFAULTS,
        );
        assert_eq!(r.steps[0].status, StepStatus::Error);
    }
}
