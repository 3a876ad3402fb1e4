//! Storing what agents send: each batch of events that arrived together becomes log events (with
//! report XML and artifact bytes going to their own stores first), appended in one durable call, then
//! applied to the job's record through [`apply`] in order. The agent is acknowledged only for what
//! the append stored, and an event is stored exactly once: resends of stored sequence numbers are
//! skipped, and a gap ends the job instead of corrupting its log.

use bytes::Bytes;
use prost::Message;
use tracing::{info, warn};
use zeroci::pb;
use zeroci::pb::agent_event::Kind as AgentEventKind;
use zeroci::pb::controller_message::Kind as Reply;

use crate::config::LimitsConfig;
use crate::engine::apply::{self, Effect};
use crate::engine::{ActiveJob, Engine, RunState};
use crate::error::ControllerError;
use crate::jobs::{JobRecord, JobStatus, StepKind, StepStatus};
use crate::store::{ArtifactNote, ArtifactPiece, EventKind, LogEvent, ReportNote};

/// Why a job that ran to its end has the status it has, for `reason`.
fn failure_reason(record: &JobRecord) -> String {
    for step in &record.steps {
        let failed = matches!(
            (step.kind, step.status),
            (_, StepStatus::Error | StepStatus::Cancelled)
                | (StepKind::Checkout | StepKind::Install, StepStatus::Failure)
        );
        if failed {
            let detail = if step.message.is_empty() {
                step.exit_code
                    .map(|c| format!("exit code {c}"))
                    .unwrap_or_default()
            } else {
                step.message.clone()
            };
            return format!("step {:?} failed: {detail}", step.name);
        }
    }
    String::new()
}

/// A batch turned into what goes to each store.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<LogEvent>,
    pub reports: Vec<(crate::store::LogCursor, Bytes)>,
    pub pieces: Vec<ArtifactPiece>,
    /// The batch broke off here: an event was missing or empty. The job cannot be complete any more.
    pub problem: Option<String>,
    /// The last agent event handled, stored or dropped past the output limit: what to acknowledge.
    pub handled_through: Option<u64>,
    /// The job's output bytes once this batch is stored.
    pub output_bytes: u64,
    /// This batch brought the output to `[limits] max_log_bytes`.
    pub limit_reached: bool,
    /// Output bytes the batch brought, stored or not.
    pub output_received: u64,
    /// The part of `output_received` dropped past the limit.
    pub output_dropped_bytes: u64,
}

/// Turns agent events into log events, skipping the ones already stored: pure, so what the engine
/// does with whatever an agent sends can be fuzzed without a store.
pub fn prepare(
    limits: &LimitsConfig,
    attempt: u32,
    state: &RunState,
    events: Vec<pb::AgentEvent>,
) -> Batch {
    let mut batch = Batch {
        output_bytes: state.output_bytes,
        ..Batch::default()
    };
    let limit = limits.max_log_bytes;
    let mut cursor = state.logged;
    let mut expected = state.agent_seq + 1;
    for event in events {
        if event.seq < expected {
            continue; // a resend of something stored
        }
        let Some(kind) = event.kind.filter(|_| event.seq == expected) else {
            batch.problem = Some(if event.seq != expected {
                format!("expected event {expected}, got {}", event.seq)
            } else {
                format!("event {} has no content", event.seq)
            });
            break;
        };
        expected += 1;
        batch.handled_through = Some(event.seq);
        if let AgentEventKind::Output(o) = &kind {
            batch.output_received += o.data.len() as u64;
        }
        if let AgentEventKind::Output(o) = &kind
            && batch.output_bytes >= limit
        {
            batch.output_dropped_bytes += o.data.len() as u64;
            continue; // past the limit: acknowledged, not stored
        }
        cursor = cursor.next();
        let at_ms = if event.at_unix_ms > 0 {
            event.at_unix_ms
        } else {
            zeroci::now_unix_ms()
        };
        let (kind, step, stream, payload) = match kind {
            AgentEventKind::Output(o) => {
                let stream = if o.stream == pb::OutputStream::Stderr as i32 {
                    2
                } else {
                    1
                };
                let room = limit - batch.output_bytes;
                let mut data = o.data;
                // Reaching the limit exactly counts: what comes next is dropped, so say it here.
                if data.len() as u64 >= room {
                    data.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                    let note = format!(
                        "\nzeroci: this job's output reached the limit of {limit} bytes ([limits] max_log_bytes); the rest is not stored{}\n",
                        if limits.on_log_limit == crate::config::LogLimitAction::Cancel {
                            " and the job is cancelled"
                        } else {
                            ""
                        }
                    );
                    let mut with_note = data.to_vec();
                    with_note.extend_from_slice(note.as_bytes());
                    data = Bytes::from(with_note);
                    batch.output_bytes = limit;
                    batch.limit_reached = true;
                } else {
                    batch.output_bytes += data.len() as u64;
                }
                (EventKind::Output, o.step, stream, data)
            }
            AgentEventKind::StepStarted(s) => (EventKind::StepStarted, s.step, 0, Bytes::new()),
            AgentEventKind::StepExited(e) => (
                EventKind::StepExited,
                e.step,
                0,
                Bytes::from(e.encode_to_vec()),
            ),
            AgentEventKind::CheckedOut(c) => {
                (EventKind::CheckedOut, 0, 0, Bytes::from(c.encode_to_vec()))
            }
            AgentEventKind::Finished(_) => (EventKind::Finished, 0, 0, Bytes::new()),
            AgentEventKind::TestReport(r) => {
                let note = report_note(&r);
                if !r.xml.is_empty() {
                    batch.reports.push((cursor, r.xml));
                }
                (EventKind::TestReport, r.step, 0, note.encode())
            }
            AgentEventKind::Artifact(a) => {
                // Filed under the stage's last step, which is what ran before it was kept.
                let after = stage_last_step(&state.record);
                let note = ArtifactNote {
                    name: a.name.clone(),
                    offset: a.offset,
                    len: a.data.len() as u64,
                    last: a.last,
                    error: a.error,
                };
                if !a.data.is_empty() {
                    batch.pieces.push(ArtifactPiece {
                        attempt,
                        name: a.name,
                        offset: a.offset,
                        data: a.data,
                    });
                }
                (EventKind::Artifact, after, 0, note.encode())
            }
        };
        batch.events.push(LogEvent {
            cursor,
            agent_seq: event.seq,
            step,
            kind,
            stream,
            at_ms,
            payload,
            withheld: 0,
        });
    }
    batch
}

impl Engine {
    /// Stores a batch of agent events (everything that arrived together) and applies them. Returns the
    /// highest stored sequence number: what to acknowledge. A store error leaves the batch
    /// unacknowledged (the agent resends it) and is noted on the job, whose supervisor ends it when the
    /// store keeps failing.
    pub async fn handle_events(
        &self,
        active: &ActiveJob,
        events: Vec<pb::AgentEvent>,
    ) -> Result<u64, ControllerError> {
        let mut state = active.state.lock().await;
        if state.record.status.is_final() || state.retired {
            // A resend of something stored, or a late event after the end: acknowledge, store nothing.
            return Ok(state.agent_seq);
        }
        let batch = prepare(&self.config.limits, active.attempt, &state, events);
        if let Err(e) = self.store_batch(active, &batch).await {
            active.store_failed(e.to_string());
            return Err(e);
        }
        active.store_recovered();
        if let Some(last) = batch.events.last() {
            state.logged = last.cursor;
        }
        if let Some(seq) = batch.handled_through {
            state.agent_seq = state.agent_seq.max(seq);
        }
        state.output_bytes = batch.output_bytes;
        if batch.limit_reached {
            active
                .output_limit_reached
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.metrics
            .agent_output(batch.output_received, batch.output_dropped_bytes);
        if batch.limit_reached || batch.output_dropped_bytes > 0 {
            // Spares the network the rest: the agent keeps further output on its machine. Said once
            // per stream (a new controller or link hears it with the next output that comes).
            active.tell_output_full(self.config.limits.max_log_bytes);
        }
        if let Err(e) = self.apply_batch(active, &mut state, &batch.events).await {
            if e.is_lease_lost() {
                // The events are stored (another controller reads them from the log); the job is
                // that controller's now.
                warn!(job_id = active.id, "job taken over by another controller");
                self.release(active, &mut state);
                return Ok(state.agent_seq);
            }
            return Err(e);
        }
        if let Some(problem) = batch.problem {
            // Refusing the stream would only make the agent resend the same thing forever: the job's
            // record can no longer be complete, so it ends here, loudly.
            let reason = format!("agent events lost or invalid ({problem})");
            warn!(job_id = active.id, %reason, "ending job");
            self.finalize(active, &mut state, JobStatus::Error, reason)
                .await?;
        }
        Ok(state.agent_seq)
    }

    /// Reports and artifact bytes first, then the log events that refer to them: once the log holds an
    /// event, what it points to is stored.
    async fn store_batch(&self, active: &ActiveJob, batch: &Batch) -> Result<(), ControllerError> {
        if !batch.pieces.is_empty() {
            self.artifacts
                .put_pieces(active.id, batch.pieces.clone())
                .await?;
        }
        for (at, xml) in &batch.reports {
            self.reports.put_report(active.id, *at, xml.clone()).await?;
        }
        if !batch.events.is_empty() {
            self.logs.append(active.id, batch.events.clone()).await?;
        }
        Ok(())
    }

    /// Applies stored events to the record in order and acts on their effects. The record is written
    /// once for the batch unless an effect needs it written first.
    async fn apply_batch(
        &self,
        active: &ActiveJob,
        state: &mut RunState,
        events: &[LogEvent],
    ) -> Result<(), ControllerError> {
        let mut changed = false;
        for event in events {
            match apply::apply_event(&mut state.record, event, self.plan_defaults()) {
                Effect::None => {}
                Effect::Changed => changed = true,
                Effect::RunSteps {
                    mut run,
                    run_on_schedule,
                } => {
                    self.jobs.put(&mut state.record).await?;
                    changed = false;
                    if let Some(declared) = run_on_schedule {
                        if let Some(branch) =
                            crate::schedules::service::PushedBranch::of(&state.record)
                        {
                            self.follow_run_on_schedule(&branch, declared).await;
                        }
                    }
                    self.limit_machine(active, state, &mut run).await;
                    info!(
                        job_id = active.id,
                        attempt = active.attempt,
                        steps = run.steps.len(),
                        "planned; steps sent to the agent"
                    );
                    active.send_to_agent(Reply::RunSteps(run));
                }
                Effect::ConfigError { step, message } => {
                    self.jobs.put(&mut state.record).await?;
                    self.publish_progress(active.id, state.logged);
                    self.report_config_error(active, state, step, &message)
                        .await?;
                    self.finalize(active, state, JobStatus::Error, message)
                        .await?;
                    return Ok(());
                }
                Effect::Finished if state.record.has_next_stage() => {
                    self.jobs.put(&mut state.record).await?;
                    self.publish_progress(active.id, state.logged);
                    self.end_stage(active);
                    return Ok(());
                }
                Effect::Finished => {
                    let status = state.record.final_status();
                    let reason = failure_reason(&state.record);
                    self.publish_progress(active.id, state.logged);
                    self.finalize(active, state, status, reason).await?;
                    return Ok(());
                }
            }
        }
        if changed {
            self.jobs.put(&mut state.record).await?;
        }
        self.publish_progress(active.id, state.logged);
        Ok(())
    }

    /// Fits the machine to its pipeline job's plan before the job's own commands run, and has the first
    /// of them say in its log what the machine may use and what the host could not enforce. A failure
    /// is logged and said there too: the limits are a safeguard, not a reason to fail the job.
    async fn limit_machine(&self, active: &ActiveJob, state: &RunState, run: &mut pb::RunSteps) {
        let Some(machine) = state.record.machine.as_ref() else {
            return;
        };
        let (resources, mut notes) = self.machine_resources(&state.record);
        if resources.is_unlimited() {
            return;
        }
        let asked = state
            .record
            .stages
            .get(state.record.stage() as usize)
            .is_some_and(|stage| !stage.resources.is_unlimited());
        // Every job has the default limits; the line is for jobs that chose their own.
        if asked {
            notes.insert(0, format!("this machine's limits: {resources}"));
        }
        match self.provisioner.limit(machine, &resources).await {
            Ok(unenforced) => notes.extend(unenforced),
            Err(error) => {
                warn!(job_id = active.id, %error, "cannot limit the machine");
                notes.push(format!("cannot apply them: {error}"));
            }
        }
        let first = run
            .steps
            .iter_mut()
            .find(|s| s.kind() != pb::StepKind::Checkout);
        if let Some(first) = first {
            first.notes = notes;
        }
    }

    /// Writes the config step's start, message and end as the controller's own log events.
    async fn report_config_error(
        &self,
        active: &ActiveJob,
        state: &mut RunState,
        step: u32,
        message: &str,
    ) -> Result<(), ControllerError> {
        let message = super::masking::mask_text(message, &self.job_secrets(&state.record));
        let message = message.as_str();
        warn!(job_id = active.id, %message, "invalid pipeline file");
        let now = zeroci::now_unix_ms();
        let exited = pb::StepExited {
            step,
            exit_code: 1,
            timed_out: false,
            cancelled: false,
            message: message.to_string(),
        };
        let mut cursor = state.logged;
        let mut event = |kind, stream, payload| {
            cursor = cursor.next();
            LogEvent {
                cursor,
                agent_seq: 0,
                step,
                kind,
                stream,
                at_ms: now,
                payload,
                withheld: 0,
            }
        };
        let events = vec![
            event(EventKind::StepStarted, 0, Bytes::new()),
            event(EventKind::Output, 2, Bytes::from(format!("{message}\n"))),
            event(
                EventKind::StepExited,
                0,
                Bytes::from(exited.encode_to_vec()),
            ),
        ];
        self.logs.append(active.id, events.clone()).await?;
        state.logged = cursor;
        for event in &events {
            apply::apply_event(&mut state.record, event, self.plan_defaults());
        }
        self.publish_progress(active.id, state.logged);
        self.jobs.put(&mut state.record).await?;
        Ok(())
    }
}

/// The log's note of a test report: parsed once, here, so replays need not read it again.
fn report_note(report: &pb::TestReport) -> ReportNote {
    let mut note = ReportNote {
        source: report.source.clone(),
        too_large: report.too_large,
        ..Default::default()
    };
    if !report.too_large {
        match crate::junit::parse(&report.xml) {
            Ok(parsed) => note.totals = Some(parsed.totals),
            Err(e) => note.error = e.to_string(),
        }
    }
    note
}

/// The last step of the current pipeline job.
fn stage_last_step(record: &JobRecord) -> u32 {
    record
        .steps
        .iter()
        .filter(|s| s.stage == record.stage())
        .map(|s| s.index)
        .max()
        .unwrap_or(0)
}
