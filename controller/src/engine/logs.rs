//! Serving a job's log: replay its journal from the start and, when following, keep reading as frames
//! are appended until the job is over. Readers work from the file, never from memory, so any number of
//! followers of any size of log cost the controller a bounded amount of memory each.

use std::sync::Arc;

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
use crate::store::{Frame, FrameKind};

/// Frames read per batch are capped at about this many payload bytes.
const BATCH_BYTES: usize = 1024 * 1024;

pub type LogTx = mpsc::Sender<Result<pb::LogEvent, Status>>;

/// Streams the log of job `id` into `tx` until done (or until the client goes away).
pub async fn stream_logs(
    engine: Arc<Engine>,
    id: JobId,
    follow: bool,
    step: Option<u32>,
    tx: LogTx,
) {
    if let Err(e) = stream(&engine, id, follow, step, &tx).await {
        let _ = tx.send(Err(Status::from(e))).await;
    }
}

async fn stream(
    engine: &Arc<Engine>,
    id: JobId,
    follow: bool,
    step: Option<u32>,
    tx: &LogTx,
) -> Result<(), ControllerError> {
    // Subscribe before the first read so the end of the job cannot slip between the two.
    let mut progress = engine.watch_progress(id);
    let mut offset = 0;
    loop {
        // The end flag is read before draining, so everything appended before it was set is sent.
        let finished = !follow
            || progress
                .as_mut()
                .is_none_or(|rx| rx.borrow_and_update().finished);
        if !drain(engine, id, &mut offset, step, tx).await? {
            return Ok(());
        }
        if finished {
            break;
        }
        let Some(rx) = progress.as_mut() else { break };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    progress = None; // the job ended: one last pass
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
    let record = get(engine, id).await?;
    if record.status.is_final() {
        let _ = tx
            .send(Ok(pb::LogEvent {
                kind: Some(LogKind::JobDone(record.to_pb(engine.domain()))),
            }))
            .await;
    }
    Ok(())
}

async fn get(engine: &Engine, id: JobId) -> Result<JobRecord, ControllerError> {
    engine
        .jobs
        .get(id)
        .await?
        .ok_or_else(|| ControllerError::NotFound(format!("job {id} not found")))
}

/// Sends every complete frame after `offset`; false when the client went away.
async fn drain(
    engine: &Arc<Engine>,
    id: JobId,
    offset: &mut u64,
    step: Option<u32>,
    tx: &LogTx,
) -> Result<bool, ControllerError> {
    loop {
        let logs = engine.logs.clone();
        let start = *offset;
        let batch = tokio::task::spawn_blocking(
            move || -> Result<Option<(Vec<Frame>, u64, bool)>, ControllerError> {
                let Some(mut reader) = logs.reader(id, start, false)? else {
                    return Ok(None);
                };
                let mut frames = Vec::new();
                let mut bytes = 0;
                while bytes < BATCH_BYTES {
                    match reader.next_frame()? {
                        Some(frame) => {
                            bytes += frame.payload.len() + 64;
                            frames.push(frame);
                        }
                        None => return Ok(Some((frames, reader.offset(), false))),
                    }
                }
                Ok(Some((frames, reader.offset(), true)))
            },
        )
        .await
        .map_err(|e| ControllerError::FailedPrecondition(format!("log reader failed: {e}")))??;
        let Some((frames, next, more)) = batch else {
            // No journal: the job never reached a machine.
            return Ok(true);
        };
        // Read after the frames: the record is updated after each frame is appended, so it already
        // knows every step those frames mention.
        let record = get(engine, id).await?;
        *offset = next;
        for frame in frames {
            // Frames of an abandoned earlier run of the job are not part of its log.
            if frame.header.attempt < record.first_attempt
                || step.is_some_and(|s| s != frame.header.step)
            {
                continue;
            }
            let Some(event) = log_event(&record, frame) else {
                continue;
            };
            if tx.send(Ok(event)).await.is_err() {
                debug!(job_id = id, "log client went away");
                return Ok(false);
            }
        }
        if !more {
            return Ok(true);
        }
    }
}

fn log_event(record: &JobRecord, frame: Frame) -> Option<pb::LogEvent> {
    let kind = match frame.header.kind {
        FrameKind::Output => LogKind::Output(pb::LogOutput {
            step: frame.header.step,
            stream: if frame.header.stream == 2 {
                pb::OutputStream::Stderr
            } else {
                pb::OutputStream::Stdout
            } as i32,
            data: frame.payload,
        }),
        FrameKind::StepStarted => {
            let mut info = record
                .steps
                .iter()
                .find(|s| s.index == frame.header.step)?
                .to_pb();
            info.status = StepStatus::Running.as_str().to_string();
            info.exit_code = None;
            info.started_at_unix_ms = frame.header.at_ms;
            info.finished_at_unix_ms = 0;
            info.message.clear();
            LogKind::StepStarted(info)
        }
        FrameKind::StepExited => {
            let mut info = record
                .steps
                .iter()
                .find(|s| s.index == frame.header.step)?
                .to_pb();
            if let Ok(exited) = pb::StepExited::decode(frame.payload.as_ref()) {
                let (status, message) = apply::exit_status(&exited);
                info.exit_code = Some(exited.exit_code);
                if info.kind != "config" {
                    info.status = status.as_str().to_string();
                }
                info.message = message;
            }
            info.finished_at_unix_ms = frame.header.at_ms;
            LogKind::StepFinished(info)
        }
        FrameKind::CheckedOut
        | FrameKind::Finished
        | FrameKind::TestReport
        | FrameKind::Artifact => return None,
    };
    Some(pb::LogEvent { kind: Some(kind) })
}
