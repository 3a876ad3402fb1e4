//! The embedded store: what `zeroci-controller` uses out of the box, with nothing to install.
//!
//! Layout under the state directory: `jobs/<id>/job.json` (the record, replaced atomically by write +
//! rename) and `jobs/<id>/journal` (see [`super::journal`]). All records are also kept in memory (they
//! are small; logs are not), so reads and listings never touch the disk.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::Mutex;

pub mod journal;

use super::{Frame, FrameHeader, JobFilter, JobStore, LogReader, LogStore, LogWriter, StoreError};
use crate::jobs::{JobId, JobRecord, NewJob};
use journal::{FrameReader, JournalWriter};

pub struct EmbeddedStore {
    jobs_dir: PathBuf,
    records: Mutex<BTreeMap<JobId, JobRecord>>,
    /// Webhook delivery ids seen, mirrored in `deliveries` (one id per line, appended).
    deliveries: Mutex<std::collections::HashSet<String>>,
    deliveries_path: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl EmbeddedStore {
    /// Opens (creating) the store under `state_dir` and loads every record.
    pub fn open(state_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let jobs_dir = state_dir.join("jobs");
        std::fs::create_dir_all(&jobs_dir).map_err(io_err(&jobs_dir))?;
        let mut records = BTreeMap::new();
        for entry in std::fs::read_dir(&jobs_dir).map_err(io_err(&jobs_dir))? {
            let entry = entry.map_err(io_err(&jobs_dir))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<JobId>().ok())
            else {
                continue;
            };
            let path = entry.path().join("job.json");
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // A directory made by `create` just before a crash, before its record was written.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let record: JobRecord = match serde_json::from_slice(&bytes) {
                Ok(record) => record,
                Err(e) => {
                    // One damaged record (a torn write after power loss) must not keep the controller
                    // from starting: set it aside for inspection and go on.
                    let aside = path.with_extension("json.corrupt");
                    tracing::error!(path = %path.display(), error = %e, "unreadable job record set aside");
                    let _ = std::fs::rename(&path, &aside);
                    continue;
                }
            };
            records.insert(id, record);
        }
        let deliveries_path = state_dir.join("deliveries");
        let deliveries = match std::fs::read_to_string(&deliveries_path) {
            // `id` claims, `-id` releases (a delivery whose job could not be created).
            Ok(text) => {
                let mut seen = std::collections::HashSet::new();
                for line in text.lines() {
                    match line.strip_prefix('-') {
                        Some(released) => seen.remove(released),
                        None => seen.insert(line.to_string()),
                    };
                }
                seen
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(io_err(&deliveries_path)(e)),
        };
        Ok(EmbeddedStore {
            jobs_dir,
            deliveries: Mutex::new(deliveries),
            deliveries_path,
            records: Mutex::new(records),
        })
    }

    fn job_dir(&self, id: JobId) -> PathBuf {
        self.jobs_dir.join(id.to_string())
    }

    fn write_record(&self, job: &JobRecord) -> Result<(), StoreError> {
        let dir = self.job_dir(job.id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join("job.json");
        let tmp = dir.join("job.json.tmp");
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        // Rename is atomic: a reader (or a restart) sees the old record or the new one, never half.
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

#[async_trait]
impl JobStore for EmbeddedStore {
    async fn create(&self, new: NewJob, now_ms: i64) -> Result<JobRecord, StoreError> {
        let mut records = self.records.lock().await;
        let id = records.keys().next_back().copied().unwrap_or(0) + 1;
        let job = JobRecord::new(id, new, now_ms);
        self.write_record(&job)?;
        records.insert(id, job.clone());
        Ok(job)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.records.lock().await.get(&id).cloned())
    }

    async fn put(&self, job: &JobRecord) -> Result<(), StoreError> {
        let mut records = self.records.lock().await;
        self.write_record(job)?;
        records.insert(job.id, job.clone());
        Ok(())
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let records = self.records.lock().await;
        let limit = if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        };
        Ok(records
            .values()
            .rev()
            .filter(|j| filter.status.is_none_or(|s| j.status == s))
            .filter(|j| {
                filter
                    .repo
                    .as_ref()
                    .is_none_or(|r| &j.repo == r || &j.repo_url == r)
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        let records = self.records.lock().await;
        Ok(records
            .values()
            .filter(|j| !j.status.is_final())
            .cloned()
            .collect())
    }

    async fn claim_delivery(&self, id: &str) -> Result<bool, StoreError> {
        let mut seen = self.deliveries.lock().await;
        if seen.contains(id) {
            return Ok(false);
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.deliveries_path)
            .map_err(io_err(&self.deliveries_path))?;
        // One write per id: a crash leaves at worst a torn last line, which matches no real id.
        file.write_all(format!("{id}\n").as_bytes())
            .map_err(io_err(&self.deliveries_path))?;
        seen.insert(id.to_string());
        Ok(true)
    }

    async fn release_delivery(&self, id: &str) -> Result<(), StoreError> {
        let mut seen = self.deliveries.lock().await;
        if seen.remove(id) {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.deliveries_path)
                .map_err(io_err(&self.deliveries_path))?;
            file.write_all(format!("-{id}\n").as_bytes())
                .map_err(io_err(&self.deliveries_path))?;
        }
        Ok(())
    }

    async fn with_machines(&self) -> Result<Vec<JobRecord>, StoreError> {
        let records = self.records.lock().await;
        Ok(records
            .values()
            .filter(|j| j.machine.is_some())
            .cloned()
            .collect())
    }
}

struct EmbeddedWriter {
    inner: JournalWriter,
    path: PathBuf,
}

impl LogWriter for EmbeddedWriter {
    fn append(&mut self, header: &FrameHeader, payload: &[u8]) -> Result<u64, StoreError> {
        self.inner
            .append(header, payload)
            .map_err(io_err(&self.path))
    }

    fn end_offset(&self) -> u64 {
        self.inner.end_offset()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync().map_err(io_err(&self.path))
    }
}

struct EmbeddedReader {
    inner: FrameReader,
    path: PathBuf,
}

impl LogReader for EmbeddedReader {
    fn next_frame(&mut self) -> Result<Option<Frame>, StoreError> {
        self.inner.next_frame().map_err(io_err(&self.path))
    }

    fn offset(&self) -> u64 {
        self.inner.offset()
    }
}

impl LogStore for EmbeddedStore {
    fn writer(&self, id: JobId) -> Result<Box<dyn LogWriter>, StoreError> {
        let dir = self.job_dir(id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = journal::journal_path(&dir);
        let inner = JournalWriter::open(&path).map_err(io_err(&path))?;
        Ok(Box::new(EmbeddedWriter { inner, path }))
    }

    fn reader(
        &self,
        id: JobId,
        offset: u64,
        skip_output: bool,
    ) -> Result<Option<Box<dyn LogReader>>, StoreError> {
        let path = journal::journal_path(&self.job_dir(id));
        match FrameReader::open(&path, offset, skip_output) {
            Ok(inner) => Ok(Some(Box::new(EmbeddedReader { inner, path }))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobStatus;

    fn new_job(repo: &str) -> NewJob {
        NewJob {
            repo: repo.into(),
            repo_url: format!("/src/{repo}"),
            ref_name: "main".into(),
            commit: "abc".into(),
            triggered_by: "test".into(),
            step_timeout_secs: 0,
            github_repo: None,
            untrusted: false,
            supersede: false,
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_and_ids_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let a = store.create(new_job("a"), 1).await.unwrap();
        let mut b = store.create(new_job("b"), 2).await.unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        b.status = JobStatus::Success;
        store.put(&b).await.unwrap();
        drop(store);

        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get(2).await.unwrap().unwrap().status,
            JobStatus::Success
        );
        assert_eq!(store.create(new_job("c"), 3).await.unwrap().id, 3);
        let listed = store
            .list(&JobFilter {
                repo: Some("a".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![1]);
        assert!(store.claim_delivery("d-1").await.unwrap());
        assert!(!store.claim_delivery("d-1").await.unwrap());
        let unfinished = store.unfinished().await.unwrap();
        assert_eq!(
            unfinished.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![1, 3]
        );
        drop(store);
        // A damaged record is set aside; the store still opens.
        std::fs::write(dir.path().join("jobs/1/job.json"), b"{ torn").unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store.get(1).await.unwrap().is_none());
        assert!(dir.path().join("jobs/1/job.json.corrupt").exists());
        // Delivery ids survive the reopen; a released one can be claimed again, also after a reopen.
        assert!(!store.claim_delivery("d-1").await.unwrap());
        store.release_delivery("d-1").await.unwrap();
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store.claim_delivery("d-1").await.unwrap());
    }
}
