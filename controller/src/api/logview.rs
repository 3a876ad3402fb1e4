//! Windows onto a job's output for the pages: its tail, the part before a byte offset (what "earlier
//! output" loads), or the part around a line (what a `#L123` link needs), each numbered with its lines'
//! numbers in the whole output.
//!
//! Why an index: numbering a window's lines needs the count of lines before it, and a log may be
//! gigabytes. [`OutputIndexes`] reads a job's output once and keeps a checkpoint (the log cursor, the
//! bytes and the lines before it) every [`CHECKPOINT_BYTES`]; later requests read from the checkpoint
//! before their window, at most that much more than they show. A running job's index is extended from
//! where it stopped. The indexes live in memory, a bounded number of jobs, least recently used first out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use futures::StreamExt;

use crate::error::ControllerError;
use crate::jobs::{JobId, JobRecord};
use crate::store::{EventKind, LogCursor, LogStore, Payloads};

/// How much output a window shows.
pub const WINDOW_BYTES: u64 = 64 * 1024;
/// Spacing of an index's checkpoints: what a window reads beyond what it shows, at most.
const CHECKPOINT_BYTES: u64 = 1024 * 1024;
/// Jobs whose index is kept (a checkpoint is 32 bytes: a 4 GiB log's index takes 128 KiB).
const MAX_INDEXED_JOBS: usize = 64;

/// Which part of the output to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The last [`WINDOW_BYTES`].
    Tail,
    /// The [`WINDOW_BYTES`] before this byte offset.
    Before(u64),
    /// The part holding this line (counted from 1), a little of what came before it first.
    Line(u64),
}

/// A part of a job's output, from a line's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Byte offset of its first byte in the job's output.
    pub start: u64,
    /// Byte offset just past its last byte.
    pub end: u64,
    /// The job's output so far.
    pub total: u64,
    /// Number of its first line in the whole output.
    pub first_line: u64,
    pub bytes: Vec<u8>,
    /// The last log event the window took into account: where a live page continues from.
    pub through: LogCursor,
}

#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    /// Reading after this cursor gives the output from `bytes` on.
    after: LogCursor,
    bytes: u64,
    lines: u64,
    /// The output before it ends with a newline (or is empty).
    line_start: bool,
}

/// What is known of one job's output.
#[derive(Debug)]
struct OutputIndex {
    /// The last event read.
    through: LogCursor,
    bytes: u64,
    lines: u64,
    /// The output so far ends with a newline (or is empty).
    line_start: bool,
    /// Ascending; the first is the output's start.
    checkpoints: Vec<Checkpoint>,
}

impl Default for OutputIndex {
    fn default() -> Self {
        OutputIndex {
            through: LogCursor::START,
            bytes: 0,
            lines: 0,
            line_start: true,
            checkpoints: vec![Checkpoint {
                after: LogCursor::START,
                bytes: 0,
                lines: 0,
                line_start: true,
            }],
        }
    }
}

struct Entry {
    index: Arc<tokio::sync::Mutex<OutputIndex>>,
    last_used: u64,
}

/// The output indexes of the jobs viewed lately.
#[derive(Default)]
pub struct OutputIndexes {
    /// By job and the first attempt of its run (a retried job's run starts over).
    jobs: StdMutex<(HashMap<Run, Entry>, u64)>,
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

/// A job's current run: its output is that of its attempts from `first_attempt` on (what an abandoned
/// earlier run printed stays in the log but is not shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Run {
    pub job: JobId,
    pub first_attempt: u32,
}

impl Run {
    pub fn of(record: &JobRecord) -> Run {
        Run {
            job: record.id,
            first_attempt: record.first_attempt,
        }
    }

    fn has_output(&self, kind: EventKind, cursor: LogCursor) -> bool {
        kind == EventKind::Output && cursor.attempt >= self.first_attempt
    }
}

impl OutputIndexes {
    fn entry(&self, key: Run) -> Arc<tokio::sync::Mutex<OutputIndex>> {
        let mut guard = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let (jobs, clock) = &mut *guard;
        *clock += 1;
        let now = *clock;
        if !jobs.contains_key(&key)
            && jobs.len() >= MAX_INDEXED_JOBS
            && let Some(oldest) = jobs
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
        {
            jobs.remove(&oldest);
        }
        let entry = jobs.entry(key).or_insert_with(|| Entry {
            index: Arc::default(),
            last_used: now,
        });
        entry.last_used = now;
        entry.index.clone()
    }

    /// The part of the job's output that `want` asks for.
    pub async fn window(
        &self,
        logs: &dyn LogStore,
        run: Run,
        want: Want,
    ) -> Result<Window, ControllerError> {
        let index = self.entry(run);
        let mut index = index.lock().await;
        extend(logs, run, &mut index).await?;
        let total = index.bytes;
        let (start, end) = match want {
            Want::Tail => (total.saturating_sub(WINDOW_BYTES), total),
            Want::Before(offset) => {
                let end = offset.min(total);
                (end.saturating_sub(WINDOW_BYTES), end)
            }
            Want::Line(line) => {
                let at = line_start(logs, run, &index, line).await?;
                let start = at.saturating_sub(WINDOW_BYTES / 4);
                (start, (start + WINDOW_BYTES).min(total))
            }
        };
        // A window before an offset ends exactly there: the offset is where the part the page already
        // shows begins, and nothing may fall between the two.
        let trim_end = matches!(want, Want::Line(_));
        read_window(logs, run, &index, start, end, trim_end).await
    }
}

/// Reads what the job logged since the index last looked, adding checkpoints on the way.
async fn extend(
    logs: &dyn LogStore,
    run: Run,
    index: &mut OutputIndex,
) -> Result<(), ControllerError> {
    let mut events = logs.read(run.job, index.through, Payloads::All);
    while let Some(event) = events.next().await {
        let event = event?;
        if run.has_output(event.kind, event.cursor) {
            let last = index.checkpoints.last().map_or(0, |c| c.bytes);
            if index.bytes >= last + CHECKPOINT_BYTES {
                index.checkpoints.push(Checkpoint {
                    after: index.through,
                    bytes: index.bytes,
                    lines: index.lines,
                    line_start: index.line_start,
                });
            }
            index.bytes += event.payload.len() as u64;
            index.lines += newlines(&event.payload);
            if let Some(last) = event.payload.last() {
                index.line_start = *last == b'\n';
            }
        }
        index.through = event.cursor;
    }
    Ok(())
}

/// The last checkpoint that satisfies `before`.
fn checkpoint_where(index: &OutputIndex, before: impl Fn(&Checkpoint) -> bool) -> Checkpoint {
    let i = index.checkpoints.partition_point(before);
    index.checkpoints[i.saturating_sub(1)]
}

/// Byte offset where `line` starts; the output's end when it has fewer lines.
async fn line_start(
    logs: &dyn LogStore,
    run: Run,
    index: &OutputIndex,
    line: u64,
) -> Result<u64, ControllerError> {
    let line = line.max(1);
    // Line n starts after the (n-1)th newline.
    let wanted = line - 1;
    if wanted == 0 {
        return Ok(0);
    }
    let from = checkpoint_where(index, |c| c.lines < wanted);
    let mut bytes = from.bytes;
    let mut lines = from.lines;
    let mut events = logs.read(run.job, from.after, Payloads::All);
    while let Some(event) = events.next().await {
        let event = event?;
        if event.cursor > index.through {
            break;
        }
        if !run.has_output(event.kind, event.cursor) {
            continue;
        }
        for (i, b) in event.payload.iter().enumerate() {
            if *b == b'\n' {
                lines += 1;
                if lines == wanted {
                    return Ok(bytes + i as u64 + 1);
                }
            }
        }
        bytes += event.payload.len() as u64;
    }
    Ok(bytes)
}

/// The output in `[start, end)`, moved to whole lines: a window that begins mid-line begins after its
/// first newline (unless that leaves nothing: then it shows the part of its line), and with `trim_end`
/// one that does not end the output ends at its last newline.
async fn read_window(
    logs: &dyn LogStore,
    run: Run,
    index: &OutputIndex,
    start: u64,
    end: u64,
    trim_end: bool,
) -> Result<Window, ControllerError> {
    let from = checkpoint_where(index, |c| c.bytes <= start);
    let mut at = from.bytes;
    let mut lines_before = from.lines;
    // Whether the byte before `start` ends a line.
    let mut after_newline = from.line_start;
    let mut bytes = Vec::with_capacity((end - start) as usize);
    let mut events = logs.read(run.job, from.after, Payloads::All);
    while at < end
        && let Some(event) = events.next().await
    {
        let event = event?;
        if event.cursor > index.through {
            break;
        }
        if !run.has_output(event.kind, event.cursor) {
            continue;
        }
        let payload = &event.payload[..];
        let len = payload.len() as u64;
        // The part of this event inside the window.
        let skip = start.saturating_sub(at).min(len) as usize;
        let take = (end.saturating_sub(at).min(len) as usize).max(skip);
        if skip > 0 {
            after_newline = payload[skip - 1] == b'\n';
        }
        lines_before += newlines(&payload[..skip]);
        bytes.extend_from_slice(&payload[skip..take]);
        at += len;
    }
    let mut start = start;
    if start > 0
        && !after_newline
        && let Some(first) = bytes.iter().position(|b| *b == b'\n')
        && first + 1 < bytes.len()
    {
        bytes.drain(..=first);
        start += first as u64 + 1;
        lines_before += 1;
    }
    let mut end = start + bytes.len() as u64;
    if trim_end
        && end < index.bytes
        && let Some(last) = bytes.iter().rposition(|b| *b == b'\n')
    {
        bytes.truncate(last + 1);
        end = start + bytes.len() as u64;
    }
    Ok(Window {
        start,
        end,
        total: index.bytes,
        first_line: lines_before + 1,
        bytes,
        through: index.through,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::LogEvent;
    use crate::store::memory::MemoryStore;

    const RUN: Run = Run {
        job: 1,
        first_attempt: 2,
    };

    fn event(cursor: LogCursor, kind: EventKind, payload: Vec<u8>) -> LogEvent {
        LogEvent {
            cursor,
            agent_seq: cursor.seq,
            step: 1,
            kind,
            stream: 1,
            at_ms: 1,
            payload: Bytes::from(payload),
            withheld: 0,
        }
    }

    /// Lines `line 1` … `line n`, in events of `chunk` bytes cut anywhere, after an abandoned attempt's
    /// output (not shown) and with a step event between chunks. Returns the whole output.
    async fn logged(store: &MemoryStore, n: u64, chunk: usize) -> Vec<u8> {
        let text: Vec<u8> = (1..=n)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let mut events = vec![event(
            LogCursor::new(1, 1),
            EventKind::Output,
            b"old\n".to_vec(),
        )];
        let mut cursor = LogCursor::new(2, 0);
        for (i, piece) in text.chunks(chunk).enumerate() {
            if i % 3 == 0 {
                cursor = cursor.next();
                events.push(event(cursor, EventKind::StepStarted, Vec::new()));
            }
            cursor = cursor.next();
            events.push(event(cursor, EventKind::Output, piece.to_vec()));
        }
        store.append(1, events).await.unwrap();
        text
    }

    fn first_line_of(window: &Window) -> String {
        let text = String::from_utf8(window.bytes.clone()).unwrap();
        text.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn windows_show_whole_lines_numbered_as_in_the_whole_output() {
        let store = MemoryStore::default();
        // ~3.4 MB: several checkpoints, events of an odd size.
        let text = logged(&store, 300_000, 7_777).await;
        let indexes = OutputIndexes::default();
        let tail = indexes.window(&store, RUN, Want::Tail).await.unwrap();
        assert_eq!(tail.total, text.len() as u64);
        assert_eq!(tail.end, tail.total);
        assert!(tail.end - tail.start <= WINDOW_BYTES);
        assert_eq!(&text[tail.start as usize..], &tail.bytes[..]);
        assert_eq!(first_line_of(&tail), format!("line {}", tail.first_line));
        assert!(tail.bytes.ends_with(b"line 300000\n"));

        // Walking back window by window meets every byte once, and every line with its number.
        let mut end = tail.start;
        let mut seen = tail.bytes.len() as u64;
        while end > 0 {
            let part = indexes
                .window(&store, RUN, Want::Before(end))
                .await
                .unwrap();
            assert_eq!(part.end, end);
            assert_eq!(&text[part.start as usize..end as usize], &part.bytes[..]);
            assert_eq!(first_line_of(&part), format!("line {}", part.first_line));
            seen += part.bytes.len() as u64;
            end = part.start;
        }
        assert_eq!(seen, text.len() as u64);

        for line in [1, 2, 1000, 150_001, 300_000] {
            let around = indexes.window(&store, RUN, Want::Line(line)).await.unwrap();
            let text = String::from_utf8(around.bytes.clone()).unwrap();
            let at = (line - around.first_line) as usize;
            assert_eq!(text.lines().nth(at), Some(format!("line {line}").as_str()));
            assert_eq!(
                first_line_of(&around),
                format!("line {}", around.first_line)
            );
        }
    }

    #[tokio::test]
    async fn a_growing_log_is_indexed_from_where_it_stopped() {
        let store = MemoryStore::default();
        let indexes = OutputIndexes::default();
        logged(&store, 10, 4).await;
        let first = indexes.window(&store, RUN, Want::Tail).await.unwrap();
        assert_eq!(first.first_line, 1);
        let more = event(
            LogCursor::new(3, 1),
            EventKind::Output,
            b"line 11\n".to_vec(),
        );
        store.append(1, vec![more]).await.unwrap();
        let tail = indexes.window(&store, RUN, Want::Tail).await.unwrap();
        assert_eq!(tail.through, LogCursor::new(3, 1));
        assert!(tail.bytes.ends_with(b"line 10\nline 11\n"));
        assert!(!String::from_utf8(tail.bytes).unwrap().contains("old"));
    }

    #[tokio::test]
    async fn a_line_longer_than_the_window_is_shown_in_part() {
        let store = MemoryStore::default();
        let mut long = vec![b'x'; 3 * WINDOW_BYTES as usize];
        long.push(b'\n');
        let events = vec![event(LogCursor::new(2, 1), EventKind::Output, long)];
        store.append(1, events).await.unwrap();
        let tail = OutputIndexes::default()
            .window(&store, RUN, Want::Tail)
            .await
            .unwrap();
        assert_eq!(tail.bytes.len() as u64, WINDOW_BYTES);
        assert_eq!(tail.first_line, 1);
        // Walking back meets every byte of it.
        let indexes = OutputIndexes::default();
        let (mut end, mut seen) = (tail.start, tail.bytes.len() as u64);
        while end > 0 {
            let part = indexes
                .window(&store, RUN, Want::Before(end))
                .await
                .unwrap();
            assert_eq!((part.end, part.first_line), (end, 1));
            seen += part.bytes.len() as u64;
            end = part.start;
        }
        assert_eq!(seen, 3 * WINDOW_BYTES + 1);
    }
}
