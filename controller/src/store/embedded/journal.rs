//! The embedded backend's log file: an append-only file of checksummed frames, one per log event, in
//! cursor order.
//!
//! Why frames in one file: a step may print gigabytes, so output never lives in memory; readers stream
//! it from the file. A batch of frames is written with one `writev(2)` and made durable with one
//! `fdatasync(2)` before the append returns (the engine then acknowledges the agent). A torn frame at the
//! tail (power loss, full disk) fails its length or checksum and is cut off when the file is next
//! opened for writing; the agent resends it because it was never acknowledged. (A batch goes out as one
//! `writev(2)` of headers and payloads, so payloads are never copied; a very large batch may take more
//! than one call, which changes nothing: only the fsync makes it count.)
//!
//! Frame layout, little-endian: `len:u32 crc:u32 attempt:u32 step:u32 kind:u8 stream:u8 _:u16 seq:u64
//! agent_seq:u64 at_ms:i64` then `len` payload bytes; `crc` is CRC-32 of everything after the crc
//! field. `attempt` and `seq` are the event's cursor.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use bytes::Bytes;

use crate::store::{EventKind, LogCursor, LogEvent, Payloads};

pub const HEADER_LEN: usize = 44;
/// Largest payload accepted; agents send at most 64 KiB per output event, reports go elsewhere.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// The sparse index gets an entry at least every this many bytes (and at each attempt's first frame),
/// so finding a cursor reads at most this much of headers.
const INDEX_EVERY_BYTES: u64 = 1024 * 1024;

/// Appends the frame's header (checksum included) to `out`; the payload is written beside it.
fn encode_header(event: &LogEvent, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(event.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled below
    out.extend_from_slice(&event.cursor.attempt.to_le_bytes());
    out.extend_from_slice(&event.step.to_le_bytes());
    out.push(event.kind as u8);
    out.push(event.stream);
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&event.cursor.seq.to_le_bytes());
    out.extend_from_slice(&event.agent_seq.to_le_bytes());
    out.extend_from_slice(&event.at_ms.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start + 8..]);
    crc.update(&event.payload);
    let crc = crc.finalize();
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The whole frame, for tests.
#[cfg(test)]
fn encode_frame(event: &LogEvent, out: &mut Vec<u8>) {
    encode_header(event, out);
    out.extend_from_slice(&event.payload);
}

/// Most slices one `writev(2)` takes (IOV_MAX on Linux).
const MAX_SLICES_PER_WRITE: usize = 1024;

/// Writes every slice whole, with as few `writev(2)` calls as the kernel allows.
fn write_all_vectored(file: &mut File, mut slices: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        let some = slices.len().min(MAX_SLICES_PER_WRITE);
        match file.write_vectored(&slices[..some]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A header parsed from bytes, with its payload length and checksum still to verify.
struct RawHeader {
    event: LogEvent,
    len: usize,
    crc: u32,
    bytes: [u8; HEADER_LEN],
}

fn decode_header(bytes: [u8; HEADER_LEN]) -> Option<RawHeader> {
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let len = u32_at(0) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    Some(RawHeader {
        event: LogEvent {
            cursor: LogCursor::new(u32_at(8), u64_at(20)),
            agent_seq: u64_at(28),
            step: u32_at(12),
            kind: EventKind::from_u8(bytes[16])?,
            stream: bytes[17],
            at_ms: u64_at(36) as i64,
            payload: Bytes::new(),
            withheld: 0,
        },
        len,
        crc: u32_at(4),
        bytes,
    })
}

fn crc_matches(raw: &RawHeader, payload: &[u8]) -> bool {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&raw.bytes[8..]);
    crc.update(payload);
    crc.finalize() == raw.crc
}

/// Reads frames sequentially from a byte offset. Stops (returns `None`) at the end of the valid frames:
/// end of file, a torn frame, or a checksum mismatch.
pub struct FrameReader {
    reader: BufReader<File>,
    offset: u64,
    payloads: Payloads,
}

impl FrameReader {
    pub fn open(path: &Path, offset: u64, payloads: Payloads) -> io::Result<FrameReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        // Skipping output reads headers only: a small buffer avoids reading the payloads it seeks past.
        let capacity = match payloads {
            Payloads::All => 256 * 1024,
            Payloads::WithoutOutput => 16 * 1024,
        };
        Ok(FrameReader {
            reader: BufReader::with_capacity(capacity, file),
            offset,
            payloads,
        })
    }

    /// Offset just after the last frame returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next valid frame, or `None` at the end of the valid part. Output payloads are empty when
    /// skipping output (their checksum is then not verified).
    pub fn next_event(&mut self) -> io::Result<Option<LogEvent>> {
        let mut head = [0u8; HEADER_LEN];
        if !read_full(&mut self.reader, &mut head)? {
            return Ok(None);
        }
        let Some(raw) = decode_header(head) else {
            return Ok(None);
        };
        let end = self.offset + (HEADER_LEN + raw.len) as u64;
        if self.payloads == Payloads::WithoutOutput && raw.event.kind == EventKind::Output {
            // Make sure the whole payload is there before accepting the frame.
            if end > self.reader.get_ref().metadata()?.len() {
                return Ok(None);
            }
            self.reader.seek_relative(raw.len as i64)?;
            self.offset = end;
            let mut event = raw.event;
            event.withheld = raw.len as u32; // at most MAX_PAYLOAD
            return Ok(Some(event));
        }
        let mut payload = vec![0u8; raw.len];
        if !read_full(&mut self.reader, &mut payload)? || !crc_matches(&raw, &payload) {
            return Ok(None);
        }
        self.offset = end;
        let mut event = raw.event;
        event.payload = Bytes::from(payload);
        Ok(Some(event))
    }
}

/// Fills `buf` completely; `false` when the file ends first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Cursor → byte offset for some frames of a log: where to start reading to find a cursor.
#[derive(Debug, Default, Clone)]
pub struct SparseIndex {
    /// Ascending by cursor and offset.
    entries: Vec<(LogCursor, u64)>,
    /// Offset of the last entry (to space them out).
    last_indexed: u64,
}

impl SparseIndex {
    fn note(&mut self, cursor: LogCursor, offset: u64) {
        let new_attempt = self
            .entries
            .last()
            .is_none_or(|(c, _)| c.attempt != cursor.attempt);
        if new_attempt || offset >= self.last_indexed + INDEX_EVERY_BYTES {
            self.entries.push((cursor, offset));
            self.last_indexed = offset;
        }
    }

    /// An offset at or before the first frame whose cursor is greater than `after`.
    pub fn start_for(&self, after: LogCursor) -> u64 {
        let i = self.entries.partition_point(|(c, _)| *c <= after);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }

    /// Reads the headers of the whole file at `path` to index it (a log no writer has open).
    pub fn build(path: &Path) -> io::Result<SparseIndex> {
        let mut index = SparseIndex::default();
        let mut reader = match FrameReader::open(path, 0, Payloads::WithoutOutput) {
            Ok(reader) => reader,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(index),
            Err(e) => return Err(e),
        };
        let mut at = 0;
        while let Some(event) = reader.next_event()? {
            index.note(event.cursor, at);
            at = reader.offset();
        }
        Ok(index)
    }
}

/// Appends frames to one job's log file.
pub struct JournalWriter {
    file: File,
    len: u64,
    last: LogCursor,
    /// The headers of the batch being written.
    headers: Vec<u8>,
}

impl JournalWriter {
    /// Opens (creating) the log at `path`, first cutting off any torn frame at its tail. Returns the
    /// writer and an index of the file.
    pub fn open(path: &Path) -> io::Result<(JournalWriter, SparseIndex)> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut reader = FrameReader::open(path, 0, Payloads::All)?;
        let mut index = SparseIndex::default();
        let mut last = LogCursor::START;
        let mut at = 0;
        while let Some(event) = reader.next_event()? {
            index.note(event.cursor, at);
            last = event.cursor;
            at = reader.offset();
        }
        let valid = reader.offset();
        if file.metadata()?.len() != valid {
            file.set_len(valid)?;
            file.sync_data()?;
        }
        let writer = JournalWriter {
            file,
            len: valid,
            last,
            headers: Vec::new(),
        };
        Ok((writer, index))
    }

    /// The cursor of the last frame written.
    pub fn last(&self) -> LogCursor {
        self.last
    }

    /// Appends the events whose cursors follow the last one written (others were stored by an earlier
    /// try of the same batch and are skipped), in one write, then makes them durable. Notes index
    /// entries for the new frames in `index`.
    pub fn append(&mut self, events: &[LogEvent], index: &mut SparseIndex) -> io::Result<()> {
        self.headers.clear();
        let stored = self.last;
        let mut last = stored;
        let mut notes = Vec::new();
        let mut fresh = Vec::new();
        let mut bytes = 0;
        for event in events.iter().filter(|e| e.cursor > stored) {
            if event.payload.len() > MAX_PAYLOAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "log event payload too large",
                ));
            }
            if event.cursor <= last {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cursor {:?} does not follow {:?}", event.cursor, last),
                ));
            }
            notes.push((event.cursor, self.len + bytes));
            bytes += (HEADER_LEN + event.payload.len()) as u64;
            encode_header(event, &mut self.headers);
            fresh.push(event);
            last = event.cursor;
        }
        if fresh.is_empty() {
            return Ok(());
        }
        // Headers from one buffer, payloads where they are (no copy), in as few writev(2) calls as the
        // kernel takes: frames land whole or (on a crash) leave a torn tail that is cut off.
        let mut slices = Vec::with_capacity(fresh.len() * 2);
        for (i, event) in fresh.iter().enumerate() {
            slices.push(io::IoSlice::new(
                &self.headers[i * HEADER_LEN..(i + 1) * HEADER_LEN],
            ));
            if !event.payload.is_empty() {
                slices.push(io::IoSlice::new(&event.payload));
            }
        }
        let written =
            write_all_vectored(&mut self.file, &mut slices).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Leave no partial frame behind for readers; the caller reports the error.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += bytes;
        self.last = last;
        for (cursor, offset) in notes {
            index.note(cursor, offset);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(attempt: u32, seq: u64, kind: EventKind, payload: &[u8]) -> LogEvent {
        LogEvent {
            cursor: LogCursor::new(attempt, seq),
            agent_seq: seq,
            step: 2,
            kind,
            stream: 1,
            at_ms: 7,
            payload: Bytes::copy_from_slice(payload),
            withheld: 0,
        }
    }

    fn read_all(path: &Path, payloads: Payloads) -> Vec<LogEvent> {
        let mut r = FrameReader::open(path, 0, payloads).unwrap();
        let mut out = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn frames_round_trip_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut w, mut index) = JournalWriter::open(&path).unwrap();
        let first = event(1, 1, EventKind::Output, b"hello\x00\xff");
        let second = event(1, 2, EventKind::StepExited, b"{}");
        w.append(&[first.clone(), second.clone()], &mut index)
            .unwrap();
        let good_len = std::fs::metadata(&path).unwrap().len();
        drop(w);
        // A torn frame: a header promising more bytes than exist.
        let mut torn = Vec::new();
        encode_frame(&event(1, 3, EventKind::Output, &[1; 100]), &mut torn);
        torn.truncate(HEADER_LEN + 10);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);

        assert_eq!(read_all(&path, Payloads::All), vec![first, second]);
        let (w, _) = JournalWriter::open(&path).unwrap();
        assert_eq!(w.last(), LogCursor::new(1, 2));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    }

    #[test]
    fn a_retried_batch_stores_each_event_once_and_order_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut w, mut index) = JournalWriter::open(&path).unwrap();
        let batch = [
            event(1, 1, EventKind::Output, b"a"),
            event(1, 2, EventKind::Output, b"b"),
        ];
        w.append(&batch, &mut index).unwrap();
        w.append(&batch, &mut index).unwrap();
        assert_eq!(read_all(&path, Payloads::All).len(), 2);
        let gap = w.append(
            &[
                event(1, 4, EventKind::Output, b"d"),
                event(1, 3, EventKind::Output, b"c"),
            ],
            &mut index,
        );
        assert!(gap.is_err());
        assert_eq!(
            read_all(&path, Payloads::All).len(),
            2,
            "nothing of a refused batch"
        );
    }

    #[test]
    fn a_batch_larger_than_one_writev_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut w, mut index) = JournalWriter::open(&path).unwrap();
        let batch: Vec<LogEvent> = (1..=3000)
            .map(|seq| event(1, seq, EventKind::Output, format!("{seq},").as_bytes()))
            .collect();
        w.append(&batch, &mut index).unwrap();
        assert_eq!(read_all(&path, Payloads::All), batch);
    }

    #[test]
    fn corrupted_payload_ends_the_valid_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut w, mut index) = JournalWriter::open(&path).unwrap();
        w.append(
            &[
                event(1, 1, EventKind::Output, b"abc"),
                event(1, 2, EventKind::Output, b"def"),
            ],
            &mut index,
        )
        .unwrap();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_all(&path, Payloads::All).len(), 1);
    }

    #[test]
    fn skipping_output_still_sees_events_and_the_index_finds_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut w, mut index) = JournalWriter::open(&path).unwrap();
        let big = vec![9u8; 64 * 1024];
        let batch: Vec<LogEvent> = (1..=40)
            .map(|seq| event(1, seq, EventKind::Output, &big))
            .chain([event(2, 1, EventKind::Finished, b"")])
            .collect();
        w.append(&batch, &mut index).unwrap();
        let events = read_all(&path, Payloads::WithoutOutput);
        assert_eq!(events.len(), 41);
        assert!(events[0].payload.is_empty());
        assert_eq!(
            events[0].output_len(),
            big.len() as u64,
            "left out, still counted"
        );
        assert_eq!(events[40].kind, EventKind::Finished);
        // The writer's index and one built from the file agree, and lead to the right frame.
        let built = SparseIndex::build(&path).unwrap();
        for after in [
            LogCursor::START,
            LogCursor::new(1, 20),
            LogCursor::new(1, 40),
        ] {
            let start = index.start_for(after);
            assert_eq!(start, built.start_for(after));
            let mut r = FrameReader::open(&path, start, Payloads::WithoutOutput).unwrap();
            let next = std::iter::from_fn(|| r.next_event().unwrap())
                .find(|e| e.cursor > after)
                .unwrap();
            assert_eq!(
                next.cursor,
                if after.seq == 40 {
                    LogCursor::new(2, 1)
                } else {
                    after.next().max(LogCursor::new(1, 1))
                }
            );
        }
    }
}
