//! Schedules in the embedded store: one file per schedule under `schedules/`, named by the hex of
//! its name (names hold `/` and `:`), replaced atomically like job records; all kept in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{EmbeddedStore, io_err, sync_dir, write_durably};
use crate::schedules::Schedule;
use crate::store::memory::put_schedule_in;
use crate::store::{ScheduleStore, StoreError};

pub(super) struct ScheduleFiles {
    dir: PathBuf,
    by_name: Mutex<BTreeMap<String, Schedule>>,
}

impl ScheduleFiles {
    /// Loads every schedule under `dir` (created when missing). An unreadable file is set aside, as
    /// a damaged job record is, so that one torn write does not stop the controller.
    pub(super) fn open(dir: PathBuf) -> Result<ScheduleFiles, StoreError> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut by_name = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            match serde_json::from_slice::<Schedule>(&bytes) {
                Ok(schedule) => {
                    by_name.insert(schedule.name.clone(), schedule);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable schedule set aside");
                    let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                }
            }
        }
        Ok(ScheduleFiles {
            dir,
            by_name: Mutex::new(by_name),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        let hex = zeroci::encoding::hex(name.as_bytes());
        self.dir.join(format!("{hex}.json"))
    }
}

fn write(path: &Path, schedule: &Schedule) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(schedule).map_err(|e| StoreError::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    write_durably(path, &bytes)
}

#[async_trait]
impl ScheduleStore for EmbeddedStore {
    async fn put_schedule(&self, schedule: &mut Schedule) -> Result<(), StoreError> {
        let files = &self.schedules;
        let mut by_name = files.by_name.lock().await;
        let next = put_schedule_in(&by_name, schedule)?;
        write(&files.path(&next.name), &next)?;
        schedule.revision = next.revision;
        by_name.insert(next.name.clone(), next);
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        Ok(self.schedules.by_name.lock().await.get(name).cloned())
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        Ok(self
            .schedules
            .by_name
            .lock()
            .await
            .values()
            .cloned()
            .collect())
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let files = &self.schedules;
        let mut by_name = files.by_name.lock().await;
        if by_name.remove(name).is_none() {
            return Ok(false);
        }
        let path = files.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&files.dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok(true)
    }
}
