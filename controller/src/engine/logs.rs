//! Serving a job's log: read it from the store after a cursor and, when following, keep reading as
//! events are appended until the job is over. Readers stream from the store, never from memory, so any
//! number of followers of any size of log cost the controller a bounded amount of memory each; a
//! client that lost its stream resumes after the last cursor it received.

use std::sync::Arc;

use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::debug;
use zeroci::pb;
use zeroci::pb::log_event::Kind as LogKind;

use crate::engine::Engine;
use crate::engine::apply;
use crate::error::ControllerError;
use crate::jobs::{JobId, JobRecord, StepStatus};
use crate::store::{EventKind, LogCursor, LogEvent, Payloads};

pub type LogTx = mpsc::Sender<Result<pb::LogEvent, Status>>;

/// How often a follower reads again a log that another controller appends to.
const REMOTE_FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// How often a follower of a job run here checks that it still is.
const LOCAL_FOLLOW_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// What to stream.
#[derive(Debug, Clone, Copy)]
pub struct LogRequest {
    pub id: JobId,
    pub follow: bool,
    /// Only this step's events.
    pub step: Option<u32>,
    /// Only events after this one.
    pub after: LogCursor,
}

/// Streams the log into `tx` until done (or until the client goes away).
pub async fn stream_logs(engine: Arc<Engine>, request: LogRequest, tx: LogTx) {
    if let Err(e) = stream(&engine, request, &tx).await {
        let _ = tx.send(Err(Status::from(e))).await;
    }
}

async fn stream(
    engine: &Arc<Engine>,
    request: LogRequest,
    tx: &LogTx,
) -> Result<(), ControllerError> {
    // Subscribe before the first read so the end of the job cannot slip between the two.
    let mut progress = engine.watch_progress(request.id);
    let mut after = request.after;
    loop {
        // A job run by another controller sharing the store (or not yet claimed anywhere) moves on
        // without this controller hearing of it: its end is read from the store, its log re-read.
        let remote = engine.active_job(request.id).is_none();
        // The end is read before draining, so everything appended before it is sent.
        let ended_here = progress.as_mut().map(|rx| rx.borrow_and_update().finished);
        let (finished, queued) = if !request.follow {
            (true, false)
        } else {
            match ended_here {
                Some(true) => (true, false),
                Some(false) if !remote => (false, false),
                _ => {
                    let status = engine.job(request.id).await?.status;
                    (status.is_final(), status == crate::jobs::JobStatus::Queued)
                }
            }
        };
        // A job still queued has logged nothing new: only its status is worth reading again.
        if !queued && !drain(engine, &request, &mut after, tx).await? {
            return Ok(());
        }
        if finished {
            break;
        }
        // Also when the job runs here: it may leave (a lost lease) without a last word on the channel.
        let poll = tokio::time::sleep(if remote {
            REMOTE_FOLLOW_INTERVAL
        } else {
            LOCAL_FOLLOW_CHECK
        });
        match progress.as_mut() {
            Some(rx) => tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        progress = None; // the job ended here: one last pass
                    }
                }
                () = poll => {}
                _ = tx.closed() => return Ok(()),
            },
            // The store has every line, so nothing is lost whichever controller the job is on.
            None => tokio::select! {
                _ = tokio::time::sleep(REMOTE_FOLLOW_INTERVAL) => {}
                _ = tx.closed() => return Ok(()),
            },
        }
    }
    let record = engine.job(request.id).await?;
    if record.status.is_final() {
        let _ = tx
            .send(Ok(pb::LogEvent {
                cursor: None,
                kind: Some(LogKind::JobDone(record.to_pb(engine.domain()))),
            }))
            .await;
    }
    Ok(())
}

/// Sends every stored event after `after`; false when the client went away.
async fn drain(
    engine: &Arc<Engine>,
    request: &LogRequest,
    after: &mut LogCursor,
    tx: &LogTx,
) -> Result<bool, ControllerError> {
    let mut events = engine
        .logs
        .read(request.id, *after, Payloads::All)
        .ready_chunks(64);
    // Read once the first events are in, and again when a step event names a step it does not know
    // yet: the record is updated after each append, so a fresh one knows every step in the log.
    let mut record: Option<JobRecord> = None;
    while let Some(chunk) = events.next().await {
        for event in chunk {
            let event = event?;
            *after = event.cursor;
            if record.is_none() {
                record = Some(engine.job(request.id).await?);
            }
            let current = record.as_ref().expect("read above");
            // Events of an abandoned earlier run of the job are not part of its log.
            if event.cursor.attempt < current.first_attempt
                || request.step.is_some_and(|s| s != event.step)
            {
                continue;
            }
            let is_step_event =
                matches!(event.kind, EventKind::StepStarted | EventKind::StepExited);
            let converted = match log_event(current, event.clone()) {
                None if is_step_event => {
                    let fresh = engine.job(request.id).await?;
                    let converted = log_event(&fresh, event);
                    record = Some(fresh);
                    converted
                }
                converted => converted,
            };
            let Some(converted) = converted else { continue };
            if tx.send(Ok(converted)).await.is_err() {
                debug!(job_id = request.id, "log client went away");
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn log_event(record: &JobRecord, event: LogEvent) -> Option<pb::LogEvent> {
    let cursor = pb::LogCursor {
        attempt: event.cursor.attempt,
        seq: event.cursor.seq,
    };
    let kind = match event.kind {
        EventKind::Output => LogKind::Output(pb::LogOutput {
            step: event.step,
            stream: if event.stream == 2 {
                pb::OutputStream::Stderr
            } else {
                pb::OutputStream::Stdout
            } as i32,
            data: event.payload,
        }),
        EventKind::StepStarted => {
            let mut info = record.steps.iter().find(|s| s.index == event.step)?.to_pb();
            info.status = StepStatus::Running.to_pb() as i32;
            info.exit_code = None;
            info.started_at_unix_ms = event.at_ms;
            info.finished_at_unix_ms = 0;
            info.message.clear();
            LogKind::StepStarted(info)
        }
        EventKind::StepExited => {
            let mut info = record.steps.iter().find(|s| s.index == event.step)?.to_pb();
            if let Ok(exited) = pb::StepExited::decode(event.payload.as_ref()) {
                let (status, message) = apply::exit_status(&exited);
                info.exit_code = Some(exited.exit_code);
                if info.kind() != pb::StepKind::Config {
                    info.status = status.to_pb() as i32;
                }
                info.message = message;
            }
            info.finished_at_unix_ms = event.at_ms;
            LogKind::StepFinished(info)
        }
        EventKind::CheckedOut
        | EventKind::Finished
        | EventKind::TestReport
        | EventKind::Artifact => return None,
    };
    Some(pb::LogEvent {
        cursor: Some(cursor),
        kind: Some(kind),
    })
}
