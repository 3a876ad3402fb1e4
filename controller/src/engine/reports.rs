//! What a job kept besides its log: parsed test reports and artifacts. Their bytes are in the report
//! and artifact stores; the log holds a note of each, in order, so they get the same exactly-once,
//! survive-a-crash treatment as output.

use std::sync::Arc;

use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use zeroci::pb;

use crate::engine::Engine;
use crate::error::ControllerError;
use crate::jobs::{JobId, JobRecord};
use crate::store::{EventKind, LogCursor, LogStore, Payloads, ReportNote, ReportStore};

/// The parsed test reports of a job's steps (or of one step), in step order.
pub async fn test_reports(
    engine: &Engine,
    id: JobId,
    step: Option<u32>,
) -> Result<Vec<pb::StepTestReport>, ControllerError> {
    let record = engine.job(id).await?;
    reports_of(engine.logs.as_ref(), engine.reports.as_ref(), &record, step).await
}

/// [`test_reports`] of a record already read, from the stores themselves (for notifiers).
pub async fn reports_of(
    logs: &dyn LogStore,
    reports: &dyn ReportStore,
    record: &JobRecord,
    step: Option<u32>,
) -> Result<Vec<pb::StepTestReport>, ControllerError> {
    let id = record.id;
    let mut notes: Vec<(u32, LogCursor, ReportNote)> = Vec::new();
    let mut events = logs.read(id, LogCursor::START, Payloads::WithoutOutput);
    while let Some(event) = events.next().await {
        let event = event?;
        if event.kind == EventKind::TestReport
            && event.cursor.attempt >= record.first_attempt
            && step.is_none_or(|s| s == event.step)
            && let Some(note) = ReportNote::decode(&event.payload)
        {
            notes.push((event.step, event.cursor, note));
        }
    }
    let mut out: Vec<pb::StepTestReport> = Vec::new();
    for (step, at, note) in notes {
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
        if note.too_large {
            entry.error = format!("{} is too large to keep", note.source);
            continue;
        }
        let Some(xml) = reports.report(id, at).await? else {
            entry.error = format!("{} was not kept", note.source);
            continue;
        };
        match crate::junit::parse(&xml) {
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
            Err(e) => entry.error = format!("{} is unreadable: {e}", note.source),
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

pub type ArtifactStream = ReceiverStream<Result<pb::ArtifactData, Status>>;

/// The bytes of an artifact, in order, read from the artifact store by a task of their own.
pub fn artifact_stream(
    engine: Arc<Engine>,
    record: JobRecord,
    name: String,
    attempt: u32,
) -> ArtifactStream {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut bytes = engine.artifacts.read_artifact(record.id, attempt, &name);
        while let Some(piece) = bytes.next().await {
            let item = piece
                .map(|data| pb::ArtifactData { data })
                .map_err(|e| Status::from(ControllerError::from(e)));
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return; // the client went away, or the error was its last message
            }
        }
    });
    ReceiverStream::new(rx)
}
