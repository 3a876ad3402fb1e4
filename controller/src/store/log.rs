//! A job's log as every backend stores it: events addressed by a [`LogCursor`], in the order the
//! controller accepted them. How a backend lays them out (checksummed frames in a file, documents in a
//! collection) is its own business; what it must keep is the order, the cursors and the bytes.
//!
//! Output, step events, checkouts and the end of a machine's work are log events. Test reports and
//! artifacts are too, but only as small notes ([`ReportNote`], [`ArtifactNote`]): their bytes live in
//! the report and artifact stores, so no backend has to be a blob store inside its log.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::jobs::TestTotals;

/// Where an event sits in a job's log: the attempt (machine) that produced it, then its position
/// among that attempt's events, counted from 1. Cursors only grow, so "everything after cursor C" is
/// the same question for a file, a database or a stream, and a client that lost its connection resumes
/// from the last cursor it saw without missing or repeating an event.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogCursor {
    pub attempt: u32,
    pub seq: u64,
}

impl LogCursor {
    /// Before every event: reading after it reads the whole log.
    pub const START: LogCursor = LogCursor { attempt: 0, seq: 0 };

    pub fn new(attempt: u32, seq: u64) -> LogCursor {
        LogCursor { attempt, seq }
    }

    /// The position after this one within the same attempt.
    pub fn next(self) -> LogCursor {
        LogCursor {
            attempt: self.attempt,
            seq: self.seq + 1,
        }
    }
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventKind {
    /// Bytes a step wrote (`stream`: 1 stdout, 2 stderr); the payload is the bytes.
    Output = 1,
    StepStarted = 2,
    /// The payload is the agent's `StepExited` (protobuf).
    StepExited = 3,
    /// The payload is the agent's `CheckedOut` (protobuf): commit and pipeline file.
    CheckedOut = 4,
    /// The machine's work is over.
    Finished = 5,
    /// The payload is a [`ReportNote`] (JSON); the XML is in the report store.
    TestReport = 6,
    /// The payload is an [`ArtifactNote`] (JSON); the bytes are in the artifact store.
    Artifact = 7,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<EventKind> {
        Some(match v {
            1 => EventKind::Output,
            2 => EventKind::StepStarted,
            3 => EventKind::StepExited,
            4 => EventKind::CheckedOut,
            5 => EventKind::Finished,
            6 => EventKind::TestReport,
            7 => EventKind::Artifact,
            _ => return None,
        })
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub cursor: LogCursor,
    /// The agent's sequence number of the message this came from; 0 for events the controller wrote
    /// itself. Recovery takes the highest one of the current attempt as what the agent has been
    /// acknowledged.
    pub agent_seq: u64,
    /// The step it belongs to.
    pub step: u32,
    pub kind: EventKind,
    /// 1 stdout, 2 stderr (as in the proto enum); 0 for everything but output.
    pub stream: u8,
    /// When it happened (the agent's clock), Unix ms.
    pub at_ms: i64,
    pub payload: Bytes,
    /// Payload bytes left out by [`Payloads::WithoutOutput`]; 0 when the payload is here.
    pub withheld: u32,
}

impl LogEvent {
    /// Bytes of output this event stored, also when its payload was left out: recovery restores a
    /// job's output total, which `[limits] max_log_bytes` caps, without reading the output itself.
    pub fn output_len(&self) -> u64 {
        if self.kind == EventKind::Output {
            self.payload.len() as u64 + u64::from(self.withheld)
        } else {
            0
        }
    }
}

/// A test report's entry in the log. The controller parses the report once, when it arrives, so
/// replaying the log rebuilds the step's totals without reading the report again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportNote {
    /// Where the agent read it.
    pub source: String,
    /// The agent did not send it: larger than its cap.
    pub too_large: bool,
    /// Totals of a readable report.
    pub totals: Option<TestTotals>,
    /// Why the report could not be parsed; empty when it was.
    pub error: String,
}

/// A piece of an artifact, as the log records it. The bytes are in the artifact store at `offset`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactNote {
    pub name: String,
    pub offset: u64,
    pub len: u64,
    /// The artifact's last piece.
    pub last: bool,
    /// Why the file could not be kept; set only with `last`.
    pub error: String,
}

impl ReportNote {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(payload: &[u8]) -> Option<ReportNote> {
        serde_json::from_slice(payload).ok()
    }
}

impl ArtifactNote {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(payload: &[u8]) -> Option<ArtifactNote> {
        serde_json::from_slice(payload).ok()
    }
}

/// Whether a read returns output bytes. Recovery and report listings only need the events around
/// the output, so backends may skip reading the bytes (payloads are then empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payloads {
    All,
    /// Output events come with empty payloads; every other event is complete.
    WithoutOutput,
}

/// A piece of an artifact to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactPiece {
    /// The attempt (pipeline job's machine) that kept it.
    pub attempt: u32,
    pub name: String,
    pub offset: u64,
    pub data: Bytes,
}
