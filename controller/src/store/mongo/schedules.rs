//! Schedules in MongoDB: collection `schedules`, `_id` the name, `revision` beside the whole record
//! under `record`. A put is an insert (revision 0) or a `replace_one` filtered on the name *and* the
//! expected revision, so the server decides which controller fires a tick.

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};

use super::{MongoStore, backend, corrupt, int, is_duplicate};
use crate::schedules::Schedule;
use crate::store::{ScheduleStore, StoreError};

fn document(schedule: &Schedule) -> Result<Document, StoreError> {
    let record = mongodb::bson::to_document(schedule)
        .map_err(|e| corrupt(format!("schedule {:?}", schedule.name), e))?;
    Ok(doc! {
        "_id": &schedule.name,
        "revision": int(schedule.revision),
        "record": record,
    })
}

fn schedule_of(document: &Document) -> Result<Schedule, StoreError> {
    let record = document
        .get_document("record")
        .map_err(|e| corrupt("schedules", e))?;
    mongodb::bson::from_document(record.clone()).map_err(|e| corrupt("schedules", e))
}

#[async_trait]
impl ScheduleStore for MongoStore {
    async fn put_schedule(&self, schedule: &mut Schedule) -> Result<(), StoreError> {
        let expected = schedule.revision;
        let mut next = schedule.clone();
        next.revision = expected + 1;
        let changed = || StoreError::ScheduleChanged {
            name: schedule.name.clone(),
        };
        if expected == 0 {
            match self.schedules.insert_one(document(&next)?).await {
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => return Err(changed()),
                Err(e) => return Err(backend(e)),
            }
        } else {
            let matched = self
                .schedules
                .replace_one(
                    // The creation time too: see `put_schedule_in` for a schedule made again.
                    doc! {
                        "_id": &schedule.name,
                        "revision": int(expected),
                        "record.created_at": schedule.created_at,
                    },
                    document(&next)?,
                )
                .await
                .map_err(backend)?
                .matched_count;
            if matched == 0 {
                return Err(changed());
            }
        }
        schedule.revision = next.revision;
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        self.schedules
            .find_one(doc! {"_id": name})
            .await
            .map_err(backend)?
            .as_ref()
            .map(schedule_of)
            .transpose()
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let documents: Vec<Document> = self
            .schedules
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        // One document this controller cannot read (written by a newer one during an upgrade) must
        // not stop every other schedule.
        Ok(documents
            .iter()
            .filter_map(|document| match schedule_of(document) {
                Ok(schedule) => Some(schedule),
                Err(error) => {
                    tracing::error!(%error, "unreadable schedule skipped");
                    None
                }
            })
            .collect())
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let deleted = self
            .schedules
            .delete_one(doc! {"_id": name})
            .await
            .map_err(backend)?
            .deleted_count;
        Ok(deleted > 0)
    }
}
