//! Logs, test reports and artifacts in MongoDB.
//!
//! - `logs`: a job's log as documents of consecutive events, one per append (split so that none
//!   passes [`MAX_DOCUMENT_PAYLOAD`], well under MongoDB's 16 MB): `job`, the first and last cursor
//!   (`c0`, `c1`: each packed into one integer, [`packed`], so that "documents after a cursor" is one
//!   indexed range), `events` (each event's fields; the payload inline except for output) and
//!   `out`, the output payloads end to end. Reading without output leaves `out` on the server. A unique
//!   index on the first cursor makes a resent append idempotent: a document that is there already is
//!   skipped and only the events after it are written.
//! - `reports`: one document per report, `_id` = `job/attempt/seq` of its log event.
//! - `artifacts`: one document per piece (`job`, `attempt`, `name`, `offset`, `data`), unique on the
//!   first four: a resent piece (the same bytes, by contract) is already there. Why not GridFS: pieces arrive one by one at offsets
//!   and may be resent after a reconnect, while a GridFS file is written once from start to end;
//!   pieces addressed by offset need neither a staging copy nor an assembly step, and reading them in
//!   offset order is GridFS's own chunk layout.

use std::collections::VecDeque;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, Document, doc};

use super::{MongoStore, RETAIN_FROM, backend, get_int, int, is_duplicate};
use crate::jobs::JobId;
use crate::store::{
    ArtifactPiece, ArtifactStore, ByteStream, EventKind, LogCursor, LogEvent, LogStore, LogStream,
    Payloads, ReportStore, StoreError,
};

/// Payload bytes per log document at most (MongoDB refuses documents over 16 MB).
const MAX_DOCUMENT_PAYLOAD: usize = 8 * 1024 * 1024;

fn binary(bytes: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    })
}

fn corrupt(job: JobId, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: format!("mongodb logs of job {job}"),
        message: message.to_string(),
    }
}

/// Events as one document.
fn log_document(job: JobId, events: &[LogEvent]) -> Document {
    let (first, last) = (events[0].cursor, events[events.len() - 1].cursor);
    let mut out = Vec::new();
    let entries: Vec<Bson> = events
        .iter()
        .map(|e| {
            let mut entry = doc! {
                "a": i64::from(e.cursor.attempt),
                "s": int(e.cursor.seq),
                "g": int(e.agent_seq),
                "t": i64::from(e.step),
                "k": i64::from(e.kind as u8),
                "o": i64::from(e.stream),
                "m": e.at_ms,
            };
            if e.kind == EventKind::Output {
                entry.insert("n", e.payload.len() as i64);
                out.extend_from_slice(&e.payload);
            } else {
                entry.insert("p", binary(&e.payload));
            }
            Bson::Document(entry)
        })
        .collect();
    doc! {
        "job": int(job),
        "c0": packed(first),
        "c1": packed(last),
        "events": entries,
        "out": binary(&out),
        RETAIN_FROM: mongodb::bson::DateTime::now(),
    }
}

/// The events of a stored document; output payloads left empty (with their length) when `out` was
/// not read.
fn events_of(job: JobId, document: &Document) -> Result<Vec<LogEvent>, StoreError> {
    let entries = document.get_array("events").map_err(|e| corrupt(job, e))?;
    let out = match document.get("out") {
        Some(Bson::Binary(b)) => Some(&b.bytes[..]),
        _ => None,
    };
    let mut at = 0usize;
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let Bson::Document(entry) = entry else {
            return Err(corrupt(job, "an event that is not a document"));
        };
        let number =
            |key: &str| get_int(entry, key).ok_or_else(|| corrupt(job, format!("no number {key}")));
        let kind = EventKind::from_u8(number("k")? as u8)
            .ok_or_else(|| corrupt(job, "an unknown event kind"))?;
        let (payload, withheld) = if kind == EventKind::Output {
            let len = number("n")? as usize;
            match out {
                Some(out) => {
                    let bytes = out
                        .get(at..at + len)
                        .ok_or_else(|| corrupt(job, "output shorter than its events"))?;
                    at += len;
                    (Bytes::copy_from_slice(bytes), 0)
                }
                None => (Bytes::new(), len as u32),
            }
        } else {
            match entry.get("p") {
                Some(Bson::Binary(b)) => (Bytes::from(b.bytes.clone()), 0),
                _ => (Bytes::new(), 0),
            }
        };
        events.push(LogEvent {
            cursor: LogCursor::new(number("a")? as u32, number("s")? as u64),
            agent_seq: number("g")? as u64,
            step: number("t")? as u32,
            kind,
            stream: number("o")? as u8,
            at_ms: number("m")?,
            payload,
            withheld,
        });
    }
    Ok(events)
}

/// Documents whose last cursor is after `after`.
fn after_filter(job: JobId, after: LogCursor) -> Document {
    doc! {"job": int(job), "c1": {"$gt": packed(after)}}
}

/// Bits of a packed cursor that hold the sequence number: 2^40 events per attempt.
const SEQ_BITS: u32 = 40;

/// A cursor as one integer that sorts as the cursor does: the attempt above [`SEQ_BITS`] bits of
/// sequence number (2^23 attempts of 2^40 events each fit a positive i64).
fn packed(cursor: LogCursor) -> i64 {
    let seq = cursor.seq.min((1 << SEQ_BITS) - 1);
    ((u64::from(cursor.attempt) << SEQ_BITS) | seq) as i64
}

fn unpacked(value: i64) -> LogCursor {
    let value = value as u64;
    LogCursor::new((value >> SEQ_BITS) as u32, value & ((1 << SEQ_BITS) - 1))
}

/// What a log read goes through: the documents still to read and the events of the current one.
struct Reading {
    job: JobId,
    cursor: mongodb::Cursor<Document>,
    pending: VecDeque<LogEvent>,
    /// The last cursor handed out: events at or before it are skipped (those before `after`, and any
    /// stored twice).
    last: LogCursor,
}

impl MongoStore {
    /// Stores `events` as documents, skipping those already stored (a resend).
    async fn insert_events(&self, job: JobId, mut events: &[LogEvent]) -> Result<(), StoreError> {
        while !events.is_empty() {
            let mut size = 0;
            let take = events
                .iter()
                .position(|e| {
                    size += e.payload.len();
                    size > MAX_DOCUMENT_PAYLOAD
                })
                .unwrap_or(events.len())
                .max(1);
            let (chunk, rest) = events.split_at(take);
            match self.logs.insert_one(log_document(job, chunk)).await {
                Ok(_) => events = rest,
                Err(e) if is_duplicate(&e) => {
                    // Stored before (the reply was lost): go on after what that document holds.
                    let first = chunk[0].cursor;
                    let stored = self
                        .logs
                        .find_one(doc! {"job": int(job), "c0": packed(first)})
                        .projection(doc! {"c1": 1})
                        .await
                        .map_err(backend)?
                        .ok_or_else(|| corrupt(job, "a duplicate document that is not there"))?;
                    let last = unpacked(
                        get_int(&stored, "c1").ok_or_else(|| corrupt(job, "no last cursor"))?,
                    );
                    let skip = events.iter().take_while(|e| e.cursor <= last).count();
                    events = &events[skip..];
                }
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl LogStore for MongoStore {
    async fn append(&self, job: JobId, events: Vec<LogEvent>) -> Result<(), StoreError> {
        if events.windows(2).any(|w| w[0].cursor >= w[1].cursor) {
            return Err(StoreError::OutOfOrder {
                id: job,
                message: "cursors of a batch must increase".into(),
            });
        }
        self.insert_events(job, &events).await
    }

    fn read(&self, job: JobId, after: LogCursor, payloads: Payloads) -> LogStream {
        // The collection is a handle (cloned cheaply): the stream owns what it reads from.
        let logs = self.logs.clone();
        let start = async move {
            let mut find = logs
                .find(after_filter(job, after))
                // The filter's own field: one index ({job, c1}) serves both; a job's documents are
                // appended in order, so c1 sorts them as c0 does.
                .sort(doc! {"c1": 1});
            if payloads == Payloads::WithoutOutput {
                find = find.projection(doc! {"out": 0});
            }
            find.await.map_err(backend)
        };
        let events = futures::stream::once(start)
            .map_ok(move |cursor| {
                let reading = Reading {
                    job,
                    cursor,
                    pending: VecDeque::new(),
                    last: after,
                };
                futures::stream::try_unfold(reading, next_event)
            })
            .try_flatten();
        Box::pin(events)
    }

    async fn close(&self, _job: JobId) {}
}

/// The next event of a read, fetching documents as needed.
async fn next_event(mut reading: Reading) -> Result<Option<(LogEvent, Reading)>, StoreError> {
    loop {
        while let Some(event) = reading.pending.pop_front() {
            if event.cursor > reading.last {
                reading.last = event.cursor;
                return Ok(Some((event, reading)));
            }
        }
        match reading.cursor.try_next().await.map_err(backend)? {
            Some(document) => reading.pending = events_of(reading.job, &document)?.into(),
            None => return Ok(None),
        }
    }
}

/// Stores `document` unless it is there already: the report and artifact contracts say a second
/// write of a key carries the same bytes (a resend), so the first one stands.
async fn insert_once(
    collection: &mongodb::Collection<Document>,
    document: Document,
) -> Result<(), StoreError> {
    match collection.insert_one(document).await {
        Ok(_) => Ok(()),
        Err(e) if is_duplicate(&e) => Ok(()),
        Err(e) => Err(backend(e)),
    }
}

/// `job/attempt/seq`: a plain key (a document as `_id` compares by field order, an easy mistake).
fn report_id(job: JobId, at: LogCursor) -> String {
    format!("{job}/{}/{}", at.attempt, at.seq)
}

#[async_trait]
impl ReportStore for MongoStore {
    async fn put_report(&self, job: JobId, at: LogCursor, xml: Bytes) -> Result<(), StoreError> {
        let id = report_id(job, at);
        let document = doc! {
            "_id": &id,
            "job": int(job),
            "xml": binary(&xml),
            RETAIN_FROM: mongodb::bson::DateTime::now(),
        };
        insert_once(&self.reports, document).await
    }

    async fn report(&self, job: JobId, at: LogCursor) -> Result<Option<Bytes>, StoreError> {
        let found = self
            .reports
            .find_one(doc! {"_id": report_id(job, at)})
            .await
            .map_err(backend)?;
        Ok(found.and_then(|d| match d.get("xml") {
            Some(Bson::Binary(b)) => Some(Bytes::from(b.bytes.clone())),
            _ => None,
        }))
    }
}

#[async_trait]
impl ArtifactStore for MongoStore {
    async fn put_pieces(&self, job: JobId, pieces: Vec<ArtifactPiece>) -> Result<(), StoreError> {
        for piece in pieces {
            let key = doc! {
                "job": int(job),
                "attempt": i64::from(piece.attempt),
                "name": &piece.name,
                "offset": int(piece.offset),
            };
            let mut document = key;
            document.insert("data", binary(&piece.data));
            document.insert(RETAIN_FROM, mongodb::bson::DateTime::now());
            insert_once(&self.artifacts, document).await?;
        }
        Ok(())
    }

    fn read_artifact(&self, job: JobId, attempt: u32, name: &str) -> ByteStream {
        let artifacts = self.artifacts.clone();
        let name = name.to_string();
        let filter = doc! {"job": int(job), "attempt": i64::from(attempt), "name": &name};
        let start = async move {
            artifacts
                .find(filter)
                .sort(doc! {"offset": 1})
                .await
                .map_err(backend)
        };
        let pieces = futures::stream::once(start)
            .map_ok(move |cursor| {
                // (cursor, where the next piece must start, whether any piece was seen)
                futures::stream::try_unfold(
                    (cursor, 0u64, false, name.clone()),
                    move |(mut cursor, expected, seen, name)| async move {
                        let missing = || StoreError::Corrupt {
                            path: format!("mongodb artifact {name} of job {job}"),
                            message: "no such artifact".into(),
                        };
                        let Some(piece) = cursor.try_next().await.map_err(backend)? else {
                            return if seen { Ok(None) } else { Err(missing()) };
                        };
                        let offset = get_int(&piece, "offset").unwrap_or(-1);
                        let data = match piece.get("data") {
                            Some(Bson::Binary(b)) => Bytes::from(b.bytes.clone()),
                            _ => Bytes::new(),
                        };
                        if offset != int(expected) {
                            return Err(StoreError::Corrupt {
                                path: format!("mongodb artifact {name} of job {job}"),
                                message: format!("a gap at byte {expected}"),
                            });
                        }
                        let next = expected + data.len() as u64;
                        Ok(Some((data, (cursor, next, true, name))))
                    },
                )
            })
            .try_flatten();
        Box::pin(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_cursors_sort_as_cursors_do() {
        let cursors = [
            LogCursor::START,
            LogCursor::new(0, 5),
            LogCursor::new(1, 1),
            LogCursor::new(1, (1 << 39) + 7),
            LogCursor::new(2, 0),
            LogCursor::new(70_000, 3),
        ];
        for pair in cursors.windows(2) {
            assert!(packed(pair[0]) < packed(pair[1]), "{pair:?}");
        }
        for cursor in cursors {
            assert_eq!(unpacked(packed(cursor)), cursor);
        }
    }
}
