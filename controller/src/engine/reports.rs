//! What a job kept besides its log, read back from its journal: parsed test reports and artifacts.
//! Both are stored as journal frames when the agent sends them, so they get the same exactly-once,
//! survive-a-crash treatment as output, and reading them never needs a second store.

use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use zeroci::pb;

use crate::engine::Engine;
use crate::error::ControllerError;
use crate::jobs::{JobId, JobRecord};
use crate::store::{Frame, FrameKind};

async fn record(engine: &Engine, id: JobId) -> Result<JobRecord, ControllerError> {
    engine
        .jobs
        .get(id)
        .await?
        .ok_or_else(|| ControllerError::NotFound(format!("job {id} not found")))
}

/// Calls `each` for every frame of `kind` in the job's current run, on the blocking pool.
async fn scan<F>(
    engine: &Engine,
    record: &JobRecord,
    kind: FrameKind,
    mut each: F,
) -> Result<(), ControllerError>
where
    F: FnMut(Frame) -> bool + Send + 'static,
{
    let logs = engine.logs.clone();
    let (id, first) = (record.id, record.first_attempt);
    tokio::task::spawn_blocking(move || -> Result<(), ControllerError> {
        let Some(mut reader) = logs.reader(id, 0, true)? else {
            return Ok(());
        };
        while let Some(frame) = reader.next_frame()? {
            if frame.header.kind == kind && frame.header.attempt >= first && !each(frame) {
                break;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| ControllerError::FailedPrecondition(format!("journal reader failed: {e}")))?
}

/// The parsed test reports of a job's steps (or of one step), in step order.
pub async fn test_reports(
    engine: &Engine,
    id: JobId,
    step: Option<u32>,
) -> Result<Vec<pb::StepTestReport>, ControllerError> {
    let record = record(engine, id).await?;
    let reports = Arc::new(std::sync::Mutex::new(Vec::<(u32, pb::TestReport)>::new()));
    let sink = reports.clone();
    scan(engine, &record, FrameKind::TestReport, move |frame| {
        if step.is_none_or(|s| s == frame.header.step)
            && let Ok(report) = pb::TestReport::decode(frame.payload.as_ref())
            && let Ok(mut all) = sink.lock()
        {
            all.push((frame.header.step, report));
        }
        true
    })
    .await?;
    let reports = std::mem::take(
        &mut *reports
            .lock()
            .map_err(|_| ControllerError::FailedPrecondition("report reader failed".into()))?,
    );
    let mut out: Vec<pb::StepTestReport> = Vec::new();
    for (step, report) in reports {
        let entry = match out.iter_mut().position(|r| r.step == step) {
            Some(i) => &mut out[i],
            None => {
                // The record already holds the step's totals, summed over its reports as they came.
                let totals = record
                    .steps
                    .iter()
                    .find(|s| s.index == step)
                    .and_then(|s| s.tests.as_ref());
                out.push(pb::StepTestReport {
                    step,
                    totals: Some(totals.map(crate::jobs::totals_to_pb).unwrap_or_default()),
                    ..Default::default()
                });
                out.last_mut().expect("just pushed")
            }
        };
        if report.too_large {
            entry.error = format!("{} is too large to keep", report.source);
            continue;
        }
        match crate::junit::parse(&report.xml) {
            Ok(parsed) => {
                entry.truncated |= parsed.truncated;
                entry
                    .cases
                    .extend(parsed.cases.into_iter().map(|c| pb::TestCase {
                        suite: c.suite,
                        classname: c.classname,
                        name: c.name,
                        status: c.status.as_str().to_string(),
                        message: c.message,
                        details: c.details,
                        time_secs: c.time_secs,
                    }));
            }
            Err(e) => entry.error = format!("{} is unreadable: {e}", report.source),
        }
    }
    out.sort_by_key(|r| r.step);
    Ok(out)
}

/// Which kept artifact `name` means for a job: the newest one with that name, or the newest of all
/// when `name` is empty. Returns its name and the attempt that sent it.
pub fn find_artifact(record: &JobRecord, name: &str) -> Result<(String, u32), ControllerError> {
    record
        .artifacts
        .iter()
        .rev()
        .find(|a| a.error.is_empty() && (name.is_empty() || a.name == name))
        .map(|a| (a.name.clone(), record.first_attempt + a.stage))
        .ok_or_else(|| {
            ControllerError::NotFound(if name.is_empty() {
                format!("job {} kept no artifact", record.id)
            } else {
                format!("job {} has no artifact {name:?}", record.id)
            })
        })
}

pub type ArtifactTx = mpsc::Sender<Result<pb::ArtifactData, Status>>;
pub type ArtifactStream = ReceiverStream<Result<pb::ArtifactData, Status>>;

/// The bytes of an artifact, in order, read from the journal by a task of their own.
pub fn artifact_stream(
    engine: Arc<Engine>,
    record: JobRecord,
    name: String,
    attempt: u32,
) -> ArtifactStream {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(stream_artifact(engine, record, name, attempt, tx));
    ReceiverStream::new(rx)
}

async fn stream_artifact(
    engine: Arc<Engine>,
    record: JobRecord,
    name: String,
    attempt: u32,
    tx: ArtifactTx,
) {
    let sink = tx.clone();
    let result = scan(&engine, &record, FrameKind::Artifact, move |frame| {
        if frame.header.attempt != attempt {
            return true;
        }
        let Ok(chunk) = pb::ArtifactChunk::decode(frame.payload.as_ref()) else {
            return true;
        };
        if chunk.name != name {
            return true;
        }
        if !chunk.data.is_empty()
            && sink
                .blocking_send(Ok(pb::ArtifactData { data: chunk.data }))
                .is_err()
        {
            return false; // the client went away
        }
        !chunk.last
    })
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(Status::from(e))).await;
    }
}
