//! The in-memory store: every seam kept in the controller's memory, nothing across a restart.
//! `[db] backend = "memory"` runs a throw-away controller on it; the engine's own tests use it to run
//! jobs without a disk. It keeps the same contracts as the durable backends (compare-and-set puts,
//! ordered appends that skip cursors already stored, ids never reused), so tests on it test the engine.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::Mutex;

use super::{
    ArtifactPiece, ArtifactStore, ByteStream, JobFilter, JobStore, JoinTokenStore, LogCursor,
    LogEvent, LogStore, LogStream, Payloads, ReportStore, ScheduleStore, StoreError,
};
use crate::jobs::{JobId, JobRecord, NewJob, NotificationFailure};
use crate::provisioner::pool::tokens::JoinToken;
use crate::schedules::Schedule;

#[derive(Default)]
pub struct MemoryStore {
    state: std::sync::Mutex<State>,
    /// Held across a whole create, so ids are given out in order.
    create: Mutex<()>,
}

#[derive(Default)]
struct State {
    records: BTreeMap<JobId, JobRecord>,
    highest_id: JobId,
    deliveries: HashSet<String>,
    notification_failures: HashMap<JobId, BTreeMap<String, NotificationFailure>>,
    logs: HashMap<JobId, Vec<LogEvent>>,
    reports: HashMap<(JobId, LogCursor), Bytes>,
    artifacts: HashMap<(JobId, u32, String), BytesMut>,
    schedules: BTreeMap<String, Schedule>,
    join_tokens: JoinTokens,
}

impl MemoryStore {
    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| StoreError::Backend {
            backend: "memory",
            cause: "store lock poisoned by a panic".into(),
        })
    }
}

/// The jobs `filter` selects, newest first (shared by the backends that keep records in memory).
pub(crate) fn filter_newest_first<'a>(
    records: impl DoubleEndedIterator<Item = &'a JobRecord>,
    filter: &JobFilter,
) -> Vec<JobRecord> {
    let limit = if filter.limit == 0 {
        usize::MAX
    } else {
        filter.limit
    };
    records
        .rev()
        .filter(|j| filter.status.is_none_or(|s| j.status == s))
        .filter(|j| filter.before.is_none_or(|before| j.id < before))
        .filter(|j| filter.branch.as_ref().is_none_or(|b| &j.ref_name == b))
        .filter(|j| {
            filter
                .schedule
                .as_ref()
                .is_none_or(|name| j.schedule.as_ref().is_some_and(|s| &s.name == name))
        })
        .filter(|j| {
            filter
                .repo
                .as_ref()
                .is_none_or(|r| &j.repo == r || &j.repo_url == r)
        })
        .take(limit)
        .cloned()
        .collect()
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn create(&self, new: NewJob, now_ms: i64) -> Result<JobRecord, StoreError> {
        let _order = self.create.lock().await;
        let mut state = self.state()?;
        state.highest_id += 1;
        let job = JobRecord::new(state.highest_id, new, now_ms);
        state.records.insert(job.id, job.clone());
        Ok(job)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.state()?.records.get(&id).cloned())
    }

    async fn put(&self, job: &mut JobRecord) -> Result<(), StoreError> {
        let mut state = self.state()?;
        let found = state.records.get(&job.id).map(|r| r.revision).unwrap_or(0);
        if found != job.revision {
            return Err(StoreError::Conflict {
                id: job.id,
                expected: job.revision,
                found,
            });
        }
        job.revision += 1;
        state.records.insert(job.id, job.clone());
        Ok(())
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        Ok(filter_newest_first(self.state()?.records.values(), filter))
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        let state = self.state()?;
        Ok(state
            .records
            .values()
            .filter(|j| !j.status.is_final())
            .cloned()
            .collect())
    }

    async fn with_machines(&self) -> Result<Vec<JobRecord>, StoreError> {
        let state = self.state()?;
        Ok(state
            .records
            .values()
            .filter(|j| j.machine.is_some())
            .cloned()
            .collect())
    }

    async fn claim_delivery(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.state()?.deliveries.insert(id.to_string()))
    }

    async fn release_delivery(&self, id: &str) -> Result<(), StoreError> {
        self.state()?.deliveries.remove(id);
        Ok(())
    }

    async fn put_notification_failure(
        &self,
        id: JobId,
        failure: NotificationFailure,
    ) -> Result<(), StoreError> {
        let mut state = self.state()?;
        if state.records.contains_key(&id) {
            state
                .notification_failures
                .entry(id)
                .or_default()
                .insert(failure.notifier.clone(), failure);
        }
        Ok(())
    }

    async fn clear_notification_failure(
        &self,
        id: JobId,
        notifier: &str,
    ) -> Result<(), StoreError> {
        if let Some(failures) = self.state()?.notification_failures.get_mut(&id) {
            failures.remove(notifier);
        }
        Ok(())
    }

    async fn notification_failures(
        &self,
        id: JobId,
    ) -> Result<Vec<NotificationFailure>, StoreError> {
        Ok(self
            .state()?
            .notification_failures
            .get(&id)
            .map(|f| f.values().cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl LogStore for MemoryStore {
    async fn append(&self, job: JobId, events: Vec<LogEvent>) -> Result<(), StoreError> {
        let mut state = self.state()?;
        let log = state.logs.entry(job).or_default();
        let stored = log.last().map(|e| e.cursor).unwrap_or(LogCursor::START);
        let fresh: Vec<LogEvent> = events.into_iter().filter(|e| e.cursor > stored).collect();
        let mut last = stored;
        for event in &fresh {
            if event.cursor <= last {
                return Err(StoreError::OutOfOrder {
                    id: job,
                    message: format!("cursor {:?} does not follow {:?}", event.cursor, last),
                });
            }
            last = event.cursor;
        }
        log.extend(fresh);
        Ok(())
    }

    fn read(&self, job: JobId, after: LogCursor, payloads: Payloads) -> LogStream {
        let events: Result<Vec<LogEvent>, StoreError> = self.state().map(|state| {
            let Some(log) = state.logs.get(&job) else {
                return Vec::new();
            };
            let start = log.partition_point(|e| e.cursor <= after);
            log[start..]
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if payloads == Payloads::WithoutOutput && e.kind == super::EventKind::Output {
                        e.withheld = e.payload.len() as u32;
                        e.payload = Bytes::new();
                    }
                    e
                })
                .collect()
        });
        match events {
            Ok(events) => Box::pin(futures::stream::iter(events.into_iter().map(Ok))),
            Err(e) => Box::pin(futures::stream::once(async move { Err(e) })),
        }
    }

    async fn close(&self, _job: JobId) {}
}

#[async_trait]
impl ReportStore for MemoryStore {
    async fn put_report(&self, job: JobId, at: LogCursor, xml: Bytes) -> Result<(), StoreError> {
        self.state()?.reports.insert((job, at), xml);
        Ok(())
    }

    async fn report(&self, job: JobId, at: LogCursor) -> Result<Option<Bytes>, StoreError> {
        Ok(self.state()?.reports.get(&(job, at)).cloned())
    }
}

#[async_trait]
impl ArtifactStore for MemoryStore {
    async fn put_pieces(&self, job: JobId, pieces: Vec<ArtifactPiece>) -> Result<(), StoreError> {
        let mut state = self.state()?;
        for piece in pieces {
            let file = state
                .artifacts
                .entry((job, piece.attempt, piece.name))
                .or_default();
            let end = piece.offset as usize + piece.data.len();
            if file.len() < end {
                file.resize(end, 0);
            }
            file[piece.offset as usize..end].copy_from_slice(&piece.data);
        }
        Ok(())
    }

    fn read_artifact(&self, job: JobId, attempt: u32, name: &str) -> ByteStream {
        let found = self.state().and_then(|state| {
            state
                .artifacts
                .get(&(job, attempt, name.to_string()))
                .map(|b| Bytes::copy_from_slice(b))
                .ok_or_else(|| StoreError::Backend {
                    backend: "memory",
                    cause: format!("job {job} has no artifact {name:?} from attempt {attempt}")
                        .into(),
                })
        });
        Box::pin(futures::stream::once(async move { found }))
    }
}

/// Compare-and-set of `schedule` into `schedules` (shared by the backends that keep them in memory):
/// the schedule as it will be stored, or the conflict.
pub(crate) fn put_schedule_in(
    schedules: &BTreeMap<String, Schedule>,
    schedule: &Schedule,
) -> Result<Schedule, StoreError> {
    // The creation time too: a schedule removed and made again restarts its revisions, and a writer
    // still holding the old one must not overwrite the new.
    let found = schedules
        .get(&schedule.name)
        .map(|s| (s.revision, s.created_at));
    let expected = (schedule.revision > 0).then_some((schedule.revision, schedule.created_at));
    if found != expected {
        return Err(StoreError::ScheduleChanged {
            name: schedule.name.clone(),
        });
    }
    let mut next = schedule.clone();
    next.revision += 1;
    Ok(next)
}

#[async_trait]
impl ScheduleStore for MemoryStore {
    async fn put_schedule(&self, schedule: &mut Schedule) -> Result<(), StoreError> {
        let mut state = self.state()?;
        let next = put_schedule_in(&state.schedules, schedule)?;
        schedule.revision = next.revision;
        state.schedules.insert(next.name.clone(), next);
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        Ok(self.state()?.schedules.get(name).cloned())
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        Ok(self.state()?.schedules.values().cloned().collect())
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.state()?.schedules.remove(name).is_some())
    }
}

/// Join tokens by name, for the backends that keep them in memory.
#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct JoinTokens(BTreeMap<String, JoinToken>);

impl JoinTokens {
    /// Adds `token` unless its name is taken; whether it was added.
    pub(crate) fn add(&mut self, token: &JoinToken) -> bool {
        if self.0.contains_key(&token.name) {
            return false;
        }
        self.0.insert(token.name.clone(), token.clone());
        true
    }

    pub(crate) fn by_id(&self, id: &str) -> Option<JoinToken> {
        self.0.values().find(|t| t.id == id).cloned()
    }

    pub(crate) fn all(&self) -> Vec<JoinToken> {
        self.0.values().cloned().collect()
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<JoinToken> {
        self.0.remove(name)
    }
}

#[async_trait]
impl JoinTokenStore for MemoryStore {
    async fn add_join_token(&self, token: &JoinToken) -> Result<bool, StoreError> {
        Ok(self.state()?.join_tokens.add(token))
    }

    async fn join_token(&self, id: &str) -> Result<Option<JoinToken>, StoreError> {
        Ok(self.state()?.join_tokens.by_id(id))
    }

    async fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError> {
        Ok(self.state()?.join_tokens.all())
    }

    async fn remove_join_token(&self, name: &str) -> Result<Option<JoinToken>, StoreError> {
        Ok(self.state()?.join_tokens.remove(name))
    }
}
