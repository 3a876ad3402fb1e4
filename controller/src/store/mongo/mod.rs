//! The MongoDB store (`[db] backend = "mongodb"`): what several controllers share in production.
//!
//! Collections in the configured database:
//! - `jobs`: one document per job: `_id` and `id` (the job id), `revision`, the fields the listings filter on
//!   (`status`, `final`, `repo`, `repo_url`, `ref_name`, `has_machine`) and the whole record under
//!   `record`. A put is `update_one` filtered on `_id` *and* the expected `revision`: the database does
//!   the compare-and-set, so two controllers can never both win a claim.
//! - `counters`: `{_id: "jobs", n}`, incremented atomically for each new job id.
//! - `deliveries`: webhook delivery ids as `_id`: a second controller's insert of the same id fails
//!   with a duplicate key, which is how redeliveries are recognised across controllers.
//! - `notifications`: what a notifier could not deliver, `_id` `"<job>/<notifier>"`.
//! - `schedules`: see [`schedules`].
//! - `join_tokens`: see [`join_tokens`].
//! - `logs`, `reports`, `artifacts`: see [`logs`].
//!
//! Writes use write concern `majority` with journaling, so an acknowledged write survives a crash
//! of the database's primary (the store's durability rule). Reads need no transactions: every
//! document is written whole by one controller.

mod join_tokens;
mod logs;
mod schedules;

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{JobFilter, JobStore, StoreError};
use crate::jobs::{JobId, JobRecord, NewJob, NotificationFailure};

/// The date retention counts from, in every collection (a TTL index on it deletes the document).
pub(crate) const RETAIN_FROM: &str = "retain_from";

/// How long start-up waits for a reachable server before it gives up with one line.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct MongoStore {
    db: Database,
    jobs: Collection<Document>,
    counters: Collection<Document>,
    deliveries: Collection<Document>,
    notifications: Collection<Document>,
    schedules: Collection<Document>,
    join_tokens: Collection<Document>,
    logs: Collection<Document>,
    reports: Collection<Document>,
    artifacts: Collection<Document>,
}

/// A driver error as a store error.
pub(crate) fn backend(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend {
        backend: "mongodb",
        cause: Box::new(error),
    }
}

pub(crate) fn corrupt(what: impl std::fmt::Display, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: format!("mongodb {what}"),
        message: message.to_string(),
    }
}

/// A duplicate-key refusal (code 11000): the document is there already.
pub(crate) fn is_duplicate(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        _ => false,
    }
}

/// An integer field, whatever width the server gave it back in (servers and emulators may narrow
/// small 64-bit values to 32 bits).
pub(crate) fn get_int(document: &Document, key: &str) -> Option<i64> {
    match document.get(key)? {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Double(n) if n.fract() == 0.0 => Some(*n as i64),
        _ => None,
    }
}

/// Job ids and other counters are stored as BSON's signed 64-bit integers.
pub(crate) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl MongoStore {
    /// Connects to `uri`, uses database `name`, checks the server answers and makes the indexes.
    /// An unreachable server is an error after [`CONNECT_TIMEOUT`], not a wait forever.
    /// With `retention`, finished runs go after that long (see [`MongoStore::make_indexes`]).
    pub async fn open(
        uri: &str,
        name: &str,
        retention: Option<Duration>,
    ) -> Result<MongoStore, StoreError> {
        let unreachable = |e: mongodb::error::Error| StoreError::Backend {
            backend: "mongodb",
            cause: format!("cannot reach MongoDB at {}: {e}", redact_uri(uri)).into(),
        };
        let mut options = ClientOptions::parse(uri).await.map_err(unreachable)?;
        options
            .server_selection_timeout
            .get_or_insert(CONNECT_TIMEOUT);
        options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
        options
            .app_name
            .get_or_insert_with(|| "zeroci-controller".into());
        options.write_concern.get_or_insert(
            WriteConcern::builder()
                .w(mongodb::options::Acknowledgment::Majority)
                .journal(true)
                .build(),
        );
        let client = Client::with_options(options).map_err(unreachable)?;
        let db = client.database(name);
        db.run_command(doc! {"ping": 1})
            .await
            .map_err(unreachable)?;
        let store = MongoStore {
            jobs: db.collection("jobs"),
            counters: db.collection("counters"),
            deliveries: db.collection("deliveries"),
            notifications: db.collection("notifications"),
            schedules: db.collection("schedules"),
            join_tokens: db.collection("join_tokens"),
            logs: db.collection("logs"),
            reports: db.collection("reports"),
            artifacts: db.collection("artifacts"),
            db,
        };
        store.make_indexes(retention).await?;
        Ok(store)
    }

    /// One index for each query the engine, the CLI and the pages make; with `retention`, TTL indexes
    /// on [`RETAIN_FROM`] through which the server itself deletes a finished job's record that long
    /// after it finished, and its log documents, reports and artifact pieces that long after they were
    /// written (a job not finished, or whose machine is not destroyed yet, has no such date; its
    /// documents are written during its run, so they go within the run's duration of its record).
    async fn make_indexes(&self, retention: Option<Duration>) -> Result<(), StoreError> {
        let index = |keys: Document, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().unique(unique).build())
                .build()
        };
        for collection in [
            &self.jobs,
            &self.logs,
            &self.reports,
            &self.artifacts,
            &self.notifications,
        ] {
            self.retain(collection, retention).await?;
        }
        self.jobs
            .create_indexes([
                index(doc! {"id": 1}, true),
                index(doc! {"final": 1, "id": 1}, false),
                index(doc! {"has_machine": 1}, false),
                index(doc! {"repo": 1, "id": -1}, false),
                index(doc! {"repo_url": 1, "id": -1}, false),
                index(doc! {"status": 1, "id": -1}, false),
                index(doc! {"ref_name": 1, "id": -1}, false),
                index(doc! {"schedule": 1, "id": -1}, false),
            ])
            .await
            .map_err(backend)?;
        self.logs
            .create_indexes([
                index(doc! {"job": 1, "c0": 1}, true),
                index(doc! {"job": 1, "c1": 1}, false),
            ])
            .await
            .map_err(backend)?;
        self.join_tokens
            .create_index(index(doc! {"id": 1}, true))
            .await
            .map_err(backend)?;
        self.notifications
            .create_index(index(doc! {"job": 1, "notifier": 1}, false))
            .await
            .map_err(backend)?;
        self.artifacts
            .create_index(index(
                doc! {"job": 1, "attempt": 1, "name": 1, "offset": 1},
                true,
            ))
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Makes the collection's TTL index say `retention`: made when missing, changed in place
    /// (`collMod`) when the setting changed, dropped when retention is off, so the setting in force is
    /// always the configured one.
    async fn retain(
        &self,
        collection: &Collection<Document>,
        retention: Option<Duration>,
    ) -> Result<(), StoreError> {
        let Some(after) = retention else {
            // Nothing to delete by age any more; an index that is not there is fine.
            let _ = collection.drop_index(format!("{RETAIN_FROM}_1")).await;
            return Ok(());
        };
        let ttl = IndexModel::builder()
            .keys(doc! {RETAIN_FROM: 1})
            .options(IndexOptions::builder().expire_after(after).build())
            .build();
        match collection.create_index(ttl).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // An index with another expiry (code 85, IndexOptionsConflict): change it in place.
                let changed = self
                    .db
                    .run_command(doc! {
                        "collMod": collection.name(),
                        "index": {
                            "keyPattern": {RETAIN_FROM: 1},
                            "expireAfterSeconds": after.as_secs() as i64,
                        },
                    })
                    .await;
                changed.map(drop).map_err(|_| backend(e))
            }
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        self.db.name()
    }
}

impl MongoStore {
    /// The jobs `filter` selects, oldest first.
    async fn oldest_first(&self, filter: Document) -> Result<Vec<JobRecord>, StoreError> {
        let cursor = self
            .jobs
            .find(filter)
            .sort(doc! {"id": 1})
            .await
            .map_err(backend)?;
        jobs_of(cursor).await
    }
}

/// `mongodb://user:password@host` → `mongodb://user:***@host`: a URI may carry a password.
pub fn redact_uri(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &uri[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..]),
                None => uri.to_string(),
            }
        }
        _ => uri.to_string(),
    }
}

/// The stored document of a record: what the listings filter on, beside the record itself.
fn job_document(job: &JobRecord) -> Result<Document, StoreError> {
    let record =
        mongodb::bson::to_document(job).map_err(|e| corrupt(format!("job {}", job.id), e))?;
    let status =
        mongodb::bson::to_bson(&job.status).map_err(|e| corrupt(format!("job {}", job.id), e))?;
    let mut document = doc! {
        "_id": int(job.id),
        // The id again: indexes that combine it with other fields cannot name `_id` everywhere.
        "id": int(job.id),
        "revision": int(job.revision),
        "status": status,
        "final": job.status.is_final(),
        "repo": &job.repo,
        "repo_url": &job.repo_url,
        "ref_name": &job.ref_name,
        "has_machine": job.machine.is_some(),
        "schedule": job.schedule.as_ref().map(|s| s.name.as_str()),
        "record": record,
    };
    if job.status.is_final() && job.machine.is_none() {
        document.insert(
            RETAIN_FROM,
            mongodb::bson::DateTime::from_millis(job.finished_at),
        );
    }
    Ok(document)
}

fn job_of(document: &Document) -> Result<JobRecord, StoreError> {
    let id = document.get("_id").cloned().unwrap_or(Bson::Null);
    let record = document
        .get_document("record")
        .map_err(|e| corrupt(format!("job {id}"), e))?;
    mongodb::bson::from_document(record.clone()).map_err(|e| corrupt(format!("job {id}"), e))
}

async fn jobs_of(cursor: mongodb::Cursor<Document>) -> Result<Vec<JobRecord>, StoreError> {
    let documents: Vec<Document> = cursor.try_collect().await.map_err(backend)?;
    documents.iter().map(job_of).collect()
}

#[async_trait]
impl JobStore for MongoStore {
    async fn create(&self, new: NewJob, now_ms: i64) -> Result<JobRecord, StoreError> {
        let counter = self
            .counters
            .find_one_and_update(doc! {"_id": "jobs"}, doc! {"$inc": {"n": 1_i64}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(backend)?
            .ok_or_else(|| corrupt("counters", "the job counter vanished"))?;
        let id = get_int(&counter, "n").ok_or_else(|| corrupt("counters", "no job counter"))?;
        let job = JobRecord::new(id as JobId, new, now_ms);
        self.jobs
            .insert_one(job_document(&job)?)
            .await
            .map_err(backend)?;
        Ok(job)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.jobs
            .find_one(doc! {"_id": int(id)})
            .await
            .map_err(backend)?
            .as_ref()
            .map(job_of)
            .transpose()
    }

    async fn put(&self, job: &mut JobRecord) -> Result<(), StoreError> {
        let expected = job.revision;
        let mut next = job.clone();
        next.revision = expected + 1;
        let document = job_document(&next)?;
        let mut matched = self
            .jobs
            .replace_one(
                doc! {"_id": int(job.id), "revision": int(expected)},
                document.clone(),
            )
            .await
            .map_err(backend)?
            .matched_count;
        if matched == 0 && expected == 0 {
            // A record never stored (every backend takes revision 0 as "absent").
            matched = match self.jobs.insert_one(document).await {
                Ok(_) => 1,
                Err(e) if is_duplicate(&e) => 0,
                Err(e) => return Err(backend(e)),
            };
        }
        if matched == 0 {
            let found = self
                .jobs
                .find_one(doc! {"_id": int(job.id)})
                .projection(doc! {"revision": 1})
                .await
                .map_err(backend)?
                .and_then(|d| get_int(&d, "revision"))
                .unwrap_or(0);
            return Err(StoreError::Conflict {
                id: job.id,
                expected,
                found: found as u64,
            });
        }
        job.revision = next.revision;
        Ok(())
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let mut query = Document::new();
        if let Some(repo) = &filter.repo {
            query.insert("$or", vec![doc! {"repo": repo}, doc! {"repo_url": repo}]);
        }
        if let Some(status) = filter.status {
            let status = mongodb::bson::to_bson(&status).map_err(|e| corrupt("status", e))?;
            query.insert("status", status);
        }
        if let Some(branch) = &filter.branch {
            query.insert("ref_name", branch);
        }
        if let Some(schedule) = &filter.schedule {
            query.insert("schedule", schedule);
        }
        if let Some(before) = filter.before {
            query.insert("id", doc! {"$lt": int(before)});
        }
        let mut find = self.jobs.find(query).sort(doc! {"id": -1});
        if filter.limit > 0 {
            find = find.limit(i64::try_from(filter.limit).unwrap_or(i64::MAX));
        }
        jobs_of(find.await.map_err(backend)?).await
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.oldest_first(doc! {"final": false}).await
    }

    async fn with_machines(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.oldest_first(doc! {"has_machine": true}).await
    }

    async fn claim_delivery(&self, id: &str) -> Result<bool, StoreError> {
        let now = mongodb::bson::DateTime::now();
        match self
            .deliveries
            .insert_one(doc! {"_id": id, "at": now})
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    async fn release_delivery(&self, id: &str) -> Result<(), StoreError> {
        self.deliveries
            .delete_one(doc! {"_id": id})
            .await
            .map(drop)
            .map_err(backend)
    }

    async fn put_notification_failure(
        &self,
        id: JobId,
        failure: NotificationFailure,
    ) -> Result<(), StoreError> {
        let exists = self
            .jobs
            .find_one(doc! {"_id": int(id)})
            .projection(doc! {"_id": 1})
            .await
            .map_err(backend)?
            .is_some();
        if !exists {
            return Ok(());
        }
        let document = doc! {
            "_id": format!("{id}/{}", failure.notifier),
            "job": int(id),
            "notifier": &failure.notifier,
            "error": &failure.error,
            "at": failure.at,
            RETAIN_FROM: mongodb::bson::DateTime::now(),
        };
        self.notifications
            .replace_one(doc! {"_id": format!("{id}/{}", failure.notifier)}, document)
            .upsert(true)
            .await
            .map(drop)
            .map_err(backend)
    }

    async fn clear_notification_failure(
        &self,
        id: JobId,
        notifier: &str,
    ) -> Result<(), StoreError> {
        self.notifications
            .delete_one(doc! {"_id": format!("{id}/{notifier}")})
            .await
            .map(drop)
            .map_err(backend)
    }

    async fn notification_failures(
        &self,
        id: JobId,
    ) -> Result<Vec<NotificationFailure>, StoreError> {
        let documents: Vec<Document> = self
            .notifications
            .find(doc! {"job": int(id)})
            .sort(doc! {"notifier": 1})
            .await
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        documents
            .iter()
            .map(|d| {
                Ok(NotificationFailure {
                    notifier: d
                        .get_str("notifier")
                        .map_err(|e| corrupt("notifications", e))?
                        .to_string(),
                    error: d
                        .get_str("error")
                        .map_err(|e| corrupt("notifications", e))?
                        .to_string(),
                    at: get_int(d, "at").unwrap_or(0),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_never_shows_its_password() {
        assert_eq!(
            redact_uri("mongodb://ci:hunter2@db.example:27017/zeroci"),
            "mongodb://ci:***@db.example:27017/zeroci"
        );
        assert_eq!(redact_uri("mongodb://db.example/"), "mongodb://db.example/");
    }
}
