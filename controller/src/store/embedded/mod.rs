//! The embedded store: what `zeroci-controller` uses out of the box, with nothing to install.
//!
//! Layout under the state directory:
//! - `jobs/<id>/job.json`: the record, replaced atomically (write a temporary file, fsync it, rename,
//!   fsync the directory), so a crash leaves the old record or the new one, durably;
//! - `jobs/<id>/log`: the job's log ([`journal`]);
//! - `jobs/<id>/reports/`, `jobs/<id>/artifacts/`: see [`files`];
//! - `jobs/<id>/notifications.json`: what notifiers could not deliver, replaced like the record;
//! - `schedules/<hex of the name>.json`: one per schedule ([`schedules`]);
//! - `join-tokens.json`: pool hosts' join tokens (hashes), replaced like a record;
//! - `deliveries`: webhook delivery ids, one per line (`-id` releases one), fsynced per line.
//!
//! All records are also kept in memory (they are small; logs are not), so reads and listings never
//! touch the disk. A job id is never reused: the next id follows the highest job directory, and a
//! directory stays when its record is set aside as corrupt.

mod files;
mod join_tokens;
pub mod journal;
mod logs;
mod schedules;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{JobFilter, JobStore, StoreError};
use crate::jobs::{JobId, JobRecord, NewJob, NotificationFailure};

pub struct EmbeddedStore {
    jobs_dir: PathBuf,
    records: Mutex<Records>,
    /// Webhook delivery ids seen, mirrored in `deliveries`.
    deliveries: Mutex<HashSet<String>>,
    deliveries_path: PathBuf,
    /// Held across each read-modify-write of a `notifications.json`.
    notifications: Mutex<()>,
    schedules: schedules::ScheduleFiles,
    join_tokens: join_tokens::JoinTokenFile,
    /// Logs, reports and artifacts: what is read and written on the blocking pool.
    files: Arc<files::JobFiles>,
}

struct Records {
    by_id: BTreeMap<JobId, JobRecord>,
    /// Highest id ever given out, including jobs whose record was set aside.
    highest_id: JobId,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Makes a directory entry (a new or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `bytes` to `path` so that a crash leaves the old content or the new one, durably.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_data().map_err(io_err(&tmp))?;
    // Rename is atomic: a reader (or a restart) sees the old file or the new one, never half.
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir)
}

impl EmbeddedStore {
    /// Opens (creating) the store under `state_dir` and loads every record.
    pub fn open(state_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let jobs_dir = state_dir.join("jobs");
        std::fs::create_dir_all(&jobs_dir).map_err(io_err(&jobs_dir))?;
        let mut records = Records {
            by_id: BTreeMap::new(),
            highest_id: 0,
        };
        for entry in std::fs::read_dir(&jobs_dir).map_err(io_err(&jobs_dir))? {
            let entry = entry.map_err(io_err(&jobs_dir))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<JobId>().ok())
            else {
                continue;
            };
            records.highest_id = records.highest_id.max(id);
            if let Some(record) = load_record(&entry.path().join("job.json"))? {
                records.by_id.insert(id, record);
            }
        }
        let deliveries_path = state_dir.join("deliveries");
        let deliveries = load_deliveries(&deliveries_path)?;
        Ok(EmbeddedStore {
            files: Arc::new(files::JobFiles::new(jobs_dir.clone())),
            jobs_dir,
            records: Mutex::new(records),
            deliveries: Mutex::new(deliveries),
            deliveries_path,
            notifications: Mutex::new(()),
            schedules: schedules::ScheduleFiles::open(state_dir.join("schedules"))?,
            join_tokens: join_tokens::JoinTokenFile::open(state_dir.join("join-tokens.json"))?,
        })
    }

    fn job_dir(&self, id: JobId) -> PathBuf {
        self.jobs_dir.join(id.to_string())
    }

    fn write_record(&self, job: &JobRecord) -> Result<(), StoreError> {
        let path = self.job_dir(job.id).join("job.json");
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        write_durably(&path, &bytes)
    }

    fn read_notification_failures(
        &self,
        id: JobId,
    ) -> Result<Vec<NotificationFailure>, StoreError> {
        let path = self.job_dir(id).join("notifications.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Applies `change` to a job's notification failures and writes them back, ordered by notifier.
    async fn change_notification_failures(
        &self,
        id: JobId,
        change: impl FnOnce(&mut Vec<NotificationFailure>),
    ) -> Result<(), StoreError> {
        if !self.records.lock().await.by_id.contains_key(&id) {
            return Ok(());
        }
        let _held = self.notifications.lock().await;
        let mut failures = self.read_notification_failures(id)?;
        let before = failures.clone();
        change(&mut failures);
        if failures == before {
            return Ok(());
        }
        failures.sort_by(|a, b| a.notifier.cmp(&b.notifier));
        let path = self.job_dir(id).join("notifications.json");
        let bytes = serde_json::to_vec_pretty(&failures).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        write_durably(&path, &bytes)
    }

    fn append_delivery_line(&self, line: &str) -> Result<(), StoreError> {
        let path = &self.deliveries_path;
        let created = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        // One write per line: a crash leaves at worst a torn last line, which matches no real id.
        file.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(io_err(path))?;
        if created {
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        }
        Ok(())
    }
}

/// A record from disk; `None` when there is none (a directory made just before a crash) or when it is
/// unreadable, in which case it is set aside for inspection so that one damaged record (a torn write
/// after power loss) does not keep the controller from starting.
fn load_record(path: &Path) -> Result<Option<JobRecord>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    match serde_json::from_slice(&bytes) {
        Ok(record) => Ok(Some(record)),
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            tracing::error!(path = %path.display(), error = %e, "unreadable job record set aside");
            let _ = std::fs::rename(path, &aside);
            Ok(None)
        }
    }
}

/// Delivery ids from the file: `id` claims, `-id` releases (a delivery whose job could not be created).
fn load_deliveries(path: &Path) -> Result<HashSet<String>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut seen = HashSet::new();
            for line in text.lines() {
                match line.strip_prefix('-') {
                    Some(released) => seen.remove(released),
                    None => seen.insert(line.to_string()),
                };
            }
            Ok(seen)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[async_trait]
impl JobStore for EmbeddedStore {
    async fn create(&self, new: NewJob, now_ms: i64) -> Result<JobRecord, StoreError> {
        let mut records = self.records.lock().await;
        let id = records.highest_id + 1;
        let dir = self.job_dir(id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // The directory reserves the id, also across a crash before the record is written.
        records.highest_id = id;
        sync_dir(&self.jobs_dir)?;
        let job = JobRecord::new(id, new, now_ms);
        self.write_record(&job)?;
        records.by_id.insert(id, job.clone());
        Ok(job)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.records.lock().await.by_id.get(&id).cloned())
    }

    async fn put(&self, job: &mut JobRecord) -> Result<(), StoreError> {
        let mut records = self.records.lock().await;
        let found = records.by_id.get(&job.id).map(|r| r.revision).unwrap_or(0);
        if found != job.revision {
            return Err(StoreError::Conflict {
                id: job.id,
                expected: job.revision,
                found,
            });
        }
        let mut next = job.clone();
        next.revision += 1;
        self.write_record(&next)?;
        job.revision = next.revision;
        records.by_id.insert(job.id, next);
        Ok(())
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let records = self.records.lock().await;
        Ok(super::memory::filter_newest_first(
            records.by_id.values(),
            filter,
        ))
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        let records = self.records.lock().await;
        Ok(records
            .by_id
            .values()
            .filter(|j| !j.status.is_final())
            .cloned()
            .collect())
    }

    async fn with_machines(&self) -> Result<Vec<JobRecord>, StoreError> {
        let records = self.records.lock().await;
        Ok(records
            .by_id
            .values()
            .filter(|j| j.machine.is_some())
            .cloned()
            .collect())
    }

    async fn claim_delivery(&self, id: &str) -> Result<bool, StoreError> {
        let mut seen = self.deliveries.lock().await;
        if seen.contains(id) {
            return Ok(false);
        }
        self.append_delivery_line(id)?;
        seen.insert(id.to_string());
        Ok(true)
    }

    async fn release_delivery(&self, id: &str) -> Result<(), StoreError> {
        let mut seen = self.deliveries.lock().await;
        if seen.remove(id) {
            self.append_delivery_line(&format!("-{id}"))?;
        }
        Ok(())
    }

    async fn put_notification_failure(
        &self,
        id: JobId,
        failure: NotificationFailure,
    ) -> Result<(), StoreError> {
        self.change_notification_failures(id, |failures| {
            failures.retain(|f| f.notifier != failure.notifier);
            failures.push(failure);
        })
        .await
    }

    async fn clear_notification_failure(
        &self,
        id: JobId,
        notifier: &str,
    ) -> Result<(), StoreError> {
        self.change_notification_failures(id, |failures| {
            failures.retain(|f| f.notifier != notifier)
        })
        .await
    }

    async fn notification_failures(
        &self,
        id: JobId,
    ) -> Result<Vec<NotificationFailure>, StoreError> {
        self.read_notification_failures(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobStatus;
    use crate::store::conformance::new_job;

    #[tokio::test]
    async fn records_survive_reopen_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let a = store.create(new_job("a"), 1).await.unwrap();
        let mut b = store.create(new_job("b"), 2).await.unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        b.status = JobStatus::Success;
        store.put(&mut b).await.unwrap();
        drop(store);

        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get(2).await.unwrap().unwrap().status,
            JobStatus::Success
        );
        let c = store.create(new_job("c"), 3).await.unwrap();
        assert_eq!(c.id, 3);
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
        // The newest record is damaged: it is set aside, the store still opens, and its id stays taken.
        std::fs::write(dir.path().join("jobs/3/job.json"), b"{ torn").unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store.get(3).await.unwrap().is_none());
        assert!(dir.path().join("jobs/3/job.json.corrupt").exists());
        assert_eq!(store.create(new_job("d"), 4).await.unwrap().id, 4);
        // Delivery ids survive the reopen; a released one can be claimed again, also after a reopen.
        assert!(!store.claim_delivery("d-1").await.unwrap());
        store.release_delivery("d-1").await.unwrap();
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store.claim_delivery("d-1").await.unwrap());
    }

    #[tokio::test]
    async fn puts_are_compare_and_set_on_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut mine = store.create(new_job("a"), 1).await.unwrap();
        let mut theirs = mine.clone();
        mine.status = JobStatus::Provisioning;
        store.put(&mut mine).await.unwrap();
        theirs.status = JobStatus::Cancelled;
        assert!(matches!(
            store.put(&mut theirs).await,
            Err(StoreError::Conflict { .. })
        ));
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let stored = store.get(1).await.unwrap().unwrap();
        assert_eq!(stored.status, JobStatus::Provisioning);
        assert_eq!(stored.revision, mine.revision);
    }
}
