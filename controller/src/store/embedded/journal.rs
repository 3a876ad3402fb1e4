//! The per-job event journal: an append-only file of checksummed frames (output bytes and step events)
//! in the order the controller accepted them.
//!
//! Why a journal: a step may print gigabytes, so output never lives in memory; readers (`logs`,
//! followers) stream it from the file; and because every change to a job's steps is a frame, replaying
//! the journal after a crash rebuilds the job exactly (see `crate::engine::apply`). A frame is acknowledged to
//! the agent only after `write(2)` returned, which survives a controller crash (the page cache is the
//! kernel's); a torn frame at the tail (power loss, full disk) fails its length or checksum and is cut off
//! when the journal is next opened for writing, and the agent resends it because it was never acked.
//!
//! Frame layout, little-endian: `len:u32 crc:u32 attempt:u32 step:u32 kind:u8 stream:u8 _:u16 seq:u64
//! at_ms:i64` then `len` payload bytes; `crc` is CRC-32 of everything after the crc field.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

pub const HEADER_LEN: usize = 36;
/// Largest payload accepted; agents send at most 64 KiB per output event.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Output = 1,
    StepStarted = 2,
    StepExited = 3,
    CheckedOut = 4,
    Finished = 5,
    TestReport = 6,
    Artifact = 7,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            1 => FrameKind::Output,
            2 => FrameKind::StepStarted,
            3 => FrameKind::StepExited,
            4 => FrameKind::CheckedOut,
            5 => FrameKind::Finished,
            6 => FrameKind::TestReport,
            7 => FrameKind::Artifact,
            _ => return None,
        })
    }
}

/// Everything about a frame but its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub attempt: u32,
    pub step: u32,
    pub kind: FrameKind,
    /// 1 stdout, 2 stderr (as in the proto enum); 0 for events.
    pub stream: u8,
    /// The agent's event sequence number; 0 for frames the controller wrote itself.
    pub seq: u64,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Bytes,
}

fn encode_header(h: &FrameHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled below
    out.extend_from_slice(&h.attempt.to_le_bytes());
    out.extend_from_slice(&h.step.to_le_bytes());
    out.push(h.kind as u8);
    out.push(h.stream);
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.at_ms.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[8..]);
    crc.update(payload);
    out[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// A header parsed from bytes, with its payload length and checksum still to verify.
struct RawHeader {
    header: FrameHeader,
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
        header: FrameHeader {
            attempt: u32_at(8),
            step: u32_at(12),
            kind: FrameKind::from_u8(bytes[16])?,
            stream: bytes[17],
            seq: u64_at(20),
            at_ms: u64_at(28) as i64,
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

/// Reads frames sequentially from a position. Stops (returns `None`) at the end of the valid frames:
/// end of file, a torn frame, or a checksum mismatch.
pub struct FrameReader {
    reader: BufReader<File>,
    offset: u64,
    /// Payloads of frames of these kinds are skipped (not read) when `skip_output` is set.
    skip_output: bool,
}

impl FrameReader {
    pub fn open(path: &Path, offset: u64, skip_output: bool) -> io::Result<FrameReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(FrameReader {
            reader: BufReader::with_capacity(256 * 1024, file),
            offset,
            skip_output,
        })
    }

    /// Offset just after the last frame returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next valid frame, or `None` at the end of the valid part. Output payloads are empty when
    /// skipping output (their checksum is then not verified).
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        let mut head = [0u8; HEADER_LEN];
        if !read_full(&mut self.reader, &mut head)? {
            return Ok(None);
        }
        let Some(raw) = decode_header(head) else {
            return Ok(None);
        };
        if self.skip_output && raw.header.kind == FrameKind::Output {
            // Make sure the whole payload is there before accepting the frame.
            let end = self.offset + (HEADER_LEN + raw.len) as u64;
            if end > self.reader.get_ref().metadata()?.len() {
                return Ok(None);
            }
            self.reader.seek_relative(raw.len as i64)?;
            self.offset = end;
            return Ok(Some(Frame {
                header: raw.header,
                payload: Bytes::new(),
            }));
        }
        let mut payload = vec![0u8; raw.len];
        if !read_full(&mut self.reader, &mut payload)? || !crc_matches(&raw, &payload) {
            return Ok(None);
        }
        self.offset += (HEADER_LEN + raw.len) as u64;
        Ok(Some(Frame {
            header: raw.header,
            payload: Bytes::from(payload),
        }))
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

/// Appends frames to one job's journal.
pub struct JournalWriter {
    file: File,
    len: u64,
    buf: Vec<u8>,
}

impl JournalWriter {
    /// Opens (creating) the journal at `path`, first cutting off any torn frame at its tail.
    pub fn open(path: &Path) -> io::Result<JournalWriter> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut reader = FrameReader::open(path, 0, false)?;
        while reader.next_frame()?.is_some() {}
        let valid = reader.offset();
        if file.metadata()?.len() != valid {
            file.set_len(valid)?;
        }
        Ok(JournalWriter {
            file,
            len: valid,
            buf: Vec::with_capacity(HEADER_LEN),
        })
    }

    /// Appends one frame; returns the journal's new length.
    pub fn append(&mut self, header: &FrameHeader, payload: &[u8]) -> io::Result<u64> {
        if payload.len() > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame payload too large",
            ));
        }
        encode_header(header, payload, &mut self.buf);
        // One write(2) per frame: header and payload land together or (on a crash) as a torn tail.
        self.buf.extend_from_slice(payload);
        if let Err(e) = self.file.write_all(&self.buf) {
            // Leave no partial frame behind for readers; the caller reports the error.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += self.buf.len() as u64;
        // Keep a big payload's buffer from staying allocated for the life of the job.
        if self.buf.capacity() > 256 * 1024 {
            self.buf = Vec::with_capacity(HEADER_LEN);
        }
        Ok(self.len)
    }

    pub fn end_offset(&self) -> u64 {
        self.len
    }

    /// Forces the journal to disk (used at job end; not per frame).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Where a job's journal lives under the jobs directory.
pub fn journal_path(job_dir: &Path) -> PathBuf {
    job_dir.join("journal")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: FrameKind, seq: u64) -> FrameHeader {
        FrameHeader {
            attempt: 1,
            step: 2,
            kind,
            stream: 1,
            seq,
            at_ms: 7,
        }
    }

    #[test]
    fn frames_round_trip_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut w = JournalWriter::open(&path).unwrap();
        w.append(&header(FrameKind::Output, 1), b"hello\x00\xff")
            .unwrap();
        w.append(&header(FrameKind::StepExited, 2), b"{}").unwrap();
        let good_len = w.end_offset();
        drop(w);
        // A torn frame: a header promising more bytes than exist.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let mut torn = Vec::new();
        encode_header(&header(FrameKind::Output, 3), &[1; 100], &mut torn);
        torn.extend_from_slice(&[1; 10]);
        f.write_all(&torn).unwrap();
        drop(f);

        let mut r = FrameReader::open(&path, 0, false).unwrap();
        let first = r.next_frame().unwrap().unwrap();
        assert_eq!(first.payload.as_ref(), b"hello\x00\xff");
        assert_eq!(first.header, header(FrameKind::Output, 1));
        assert_eq!(
            r.next_frame().unwrap().unwrap().header.kind,
            FrameKind::StepExited
        );
        assert!(r.next_frame().unwrap().is_none());

        let w = JournalWriter::open(&path).unwrap();
        assert_eq!(w.end_offset(), good_len);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    }

    #[test]
    fn corrupted_payload_ends_the_valid_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut w = JournalWriter::open(&path).unwrap();
        w.append(&header(FrameKind::Output, 1), b"abc").unwrap();
        w.append(&header(FrameKind::Output, 2), b"def").unwrap();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let mut r = FrameReader::open(&path, 0, false).unwrap();
        assert!(r.next_frame().unwrap().is_some());
        assert!(r.next_frame().unwrap().is_none());
    }

    #[test]
    fn skipping_output_still_sees_events_and_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut w = JournalWriter::open(&path).unwrap();
        w.append(&header(FrameKind::Output, 1), &[9; 5000]).unwrap();
        w.append(&header(FrameKind::Finished, 2), b"").unwrap();
        let mut r = FrameReader::open(&path, 0, true).unwrap();
        let out = r.next_frame().unwrap().unwrap();
        assert!(out.payload.is_empty());
        assert_eq!(out.header.seq, 1);
        assert_eq!(r.next_frame().unwrap().unwrap().header.seq, 2);
    }
}
