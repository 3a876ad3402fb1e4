//! The embedded store's per-job files, all used from the blocking pool:
//! - `log`: the job's log ([`super::journal`]), one writer per job kept open while the job runs;
//! - `reports/<attempt>-<seq>.xml`: test reports as sent, named by the cursor of their log event;
//! - `artifacts/<attempt>/<name as hex>`: kept files, written piece by piece at their offsets.
//!
//! Every write is durable before it returns: file data fsynced, and the directory too when an entry was
//! created.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::journal::{FrameReader, JournalWriter, SparseIndex};
use super::{io_err, sync_dir, write_durably};
use crate::jobs::JobId;
use crate::store::{ArtifactPiece, LogCursor, LogEvent, Payloads, StoreError};

/// Indexes kept for logs that are read but not written; beyond this many they are dropped and rebuilt
/// on the next read.
const MAX_READ_INDEXES: usize = 256;
/// A read returns batches of about this many payload bytes.
const READ_BATCH_BYTES: usize = 1024 * 1024;

pub(super) struct OpenLog {
    writer: JournalWriter,
    index: SparseIndex,
}

pub struct JobFiles {
    jobs_dir: PathBuf,
    open_logs: Mutex<HashMap<JobId, Arc<Mutex<OpenLog>>>>,
    read_indexes: Mutex<HashMap<JobId, Arc<SparseIndex>>>,
}

fn poisoned(what: &'static str) -> StoreError {
    StoreError::Backend {
        backend: "embedded",
        cause: format!("{what} lock poisoned by a panic").into(),
    }
}

impl JobFiles {
    pub fn new(jobs_dir: PathBuf) -> JobFiles {
        JobFiles {
            jobs_dir,
            open_logs: Mutex::default(),
            read_indexes: Mutex::default(),
        }
    }

    fn job_dir(&self, id: JobId) -> PathBuf {
        self.jobs_dir.join(id.to_string())
    }

    fn log_path(&self, id: JobId) -> PathBuf {
        self.job_dir(id).join("log")
    }

    fn open_log(&self, id: JobId) -> Result<Arc<Mutex<OpenLog>>, StoreError> {
        let mut open = self.open_logs.lock().map_err(|_| poisoned("log"))?;
        if let Some(log) = open.get(&id) {
            return Ok(log.clone());
        }
        let dir = self.job_dir(id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = self.log_path(id);
        let created = !path.exists();
        let (writer, index) = JournalWriter::open(&path).map_err(io_err(&path))?;
        if created {
            sync_dir(&dir)?;
        }
        let log = Arc::new(Mutex::new(OpenLog { writer, index }));
        open.insert(id, log.clone());
        if let Ok(mut read) = self.read_indexes.lock() {
            read.remove(&id);
        }
        Ok(log)
    }

    pub fn append(&self, id: JobId, events: &[LogEvent]) -> Result<(), StoreError> {
        let log = self.open_log(id)?;
        let mut log = log.lock().map_err(|_| poisoned("log"))?;
        let OpenLog { writer, index } = &mut *log;
        writer.append(events, index).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidInput {
                StoreError::OutOfOrder {
                    id,
                    message: e.to_string(),
                }
            } else {
                io_err(&self.log_path(id))(e)
            }
        })
    }

    pub fn close(&self, id: JobId) {
        let Some(log) = self.open_logs.lock().ok().and_then(|mut o| o.remove(&id)) else {
            return;
        };
        if let (Ok(log), Ok(mut read)) = (log.lock(), self.read_indexes.lock()) {
            if read.len() >= MAX_READ_INDEXES {
                read.clear();
            }
            read.insert(id, Arc::new(log.index.clone()));
        }
    }

    /// Where to start reading to find the first event after `after`.
    fn start_offset(&self, id: JobId, after: LogCursor) -> Result<u64, StoreError> {
        if after == LogCursor::START {
            return Ok(0);
        }
        let open = self
            .open_logs
            .lock()
            .map_err(|_| poisoned("log"))?
            .get(&id)
            .cloned();
        if let Some(log) = open {
            let log = log.lock().map_err(|_| poisoned("log"))?;
            return Ok(log.index.start_for(after));
        }
        let cached = self
            .read_indexes
            .lock()
            .map_err(|_| poisoned("index"))?
            .get(&id)
            .cloned();
        let index = match cached {
            Some(index) => index,
            None => {
                let path = self.log_path(id);
                let index = Arc::new(SparseIndex::build(&path).map_err(io_err(&path))?);
                let mut read = self.read_indexes.lock().map_err(|_| poisoned("index"))?;
                if read.len() >= MAX_READ_INDEXES {
                    read.clear();
                }
                read.insert(id, index.clone());
                index
            }
        };
        Ok(index.start_for(after))
    }

    /// Opens a reader positioned at or before the first event after `after`; `None` without a log.
    pub fn reader(
        &self,
        id: JobId,
        after: LogCursor,
        payloads: Payloads,
    ) -> Result<Option<FrameReader>, StoreError> {
        let path = self.log_path(id);
        if !path.exists() {
            return Ok(None);
        }
        let start = self.start_offset(id, after)?;
        FrameReader::open(&path, start, payloads)
            .map(Some)
            .map_err(io_err(&path))
    }

    pub fn read_batch(
        &self,
        id: JobId,
        reader: &mut FrameReader,
        after: LogCursor,
    ) -> Result<Vec<LogEvent>, StoreError> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while bytes < READ_BATCH_BYTES {
            match reader.next_event().map_err(io_err(&self.log_path(id)))? {
                Some(event) if event.cursor <= after => {}
                Some(event) => {
                    bytes += event.payload.len() + 64;
                    batch.push(event);
                }
                None => break,
            }
        }
        Ok(batch)
    }

    fn report_path(&self, id: JobId, at: LogCursor) -> PathBuf {
        self.job_dir(id)
            .join("reports")
            .join(format!("{}-{}.xml", at.attempt, at.seq))
    }

    pub fn put_report(&self, id: JobId, at: LogCursor, xml: &[u8]) -> Result<(), StoreError> {
        let path = self.report_path(id, at);
        ensure_dir(path.parent().unwrap_or(Path::new(".")))?;
        write_durably(&path, xml)
    }

    pub fn report(&self, id: JobId, at: LogCursor) -> Result<Option<Bytes>, StoreError> {
        let path = self.report_path(id, at);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub fn artifact_path(&self, id: JobId, attempt: u32, name: &str) -> PathBuf {
        // Hex keeps any name (a path with slashes, dots) a plain file name.
        let file = zeroci::encoding::hex(name.as_bytes());
        self.job_dir(id)
            .join("artifacts")
            .join(attempt.to_string())
            .join(file)
    }

    pub fn write_artifacts(&self, id: JobId, pieces: &[ArtifactPiece]) -> Result<(), StoreError> {
        let mut touched: Vec<(PathBuf, std::fs::File)> = Vec::new();
        for piece in pieces {
            let path = self.artifact_path(id, piece.attempt, &piece.name);
            let index = match touched.iter().position(|(p, _)| *p == path) {
                Some(i) => i,
                None => {
                    let dir = path.parent().unwrap_or(Path::new("."));
                    ensure_dir(dir)?;
                    let created = !path.exists();
                    let file = OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(false)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    if created {
                        sync_dir(dir)?;
                    }
                    touched.push((path.clone(), file));
                    touched.len() - 1
                }
            };
            touched[index]
                .1
                .write_all_at(&piece.data, piece.offset)
                .map_err(io_err(&path))?;
        }
        for (path, file) in &touched {
            file.sync_data().map_err(io_err(path))?;
        }
        Ok(())
    }
}

/// Creates `dir` (and its parents) durably when it is missing.
fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    sync_dir(dir.parent().unwrap_or(Path::new(".")))
}
