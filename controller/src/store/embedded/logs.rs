//! The embedded store's log, report and artifact seams: async on the outside, plain file I/O on the
//! blocking pool inside ([`super::files`]).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;

use super::EmbeddedStore;
use super::files::JobFiles;
use super::journal::FrameReader;
use crate::jobs::JobId;
use crate::store::{
    ArtifactPiece, ArtifactStore, ByteStream, LogCursor, LogEvent, LogStore, LogStream, Payloads,
    ReportStore, StoreError,
};

/// Runs file work on the blocking pool.
async fn blocking<T, F>(files: &Arc<JobFiles>, work: F) -> Result<T, StoreError>
where
    F: FnOnce(&JobFiles) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let files = files.clone();
    tokio::task::spawn_blocking(move || work(&files))
        .await
        .map_err(|e| StoreError::Backend {
            backend: "embedded",
            cause: Box::new(e),
        })?
}

/// Where a log stream is.
struct ReadState {
    files: Arc<JobFiles>,
    job: JobId,
    after: LogCursor,
    payloads: Payloads,
    /// Opened on the first pull; `None` after it found no log.
    reader: Option<FrameReader>,
    opened: bool,
}

impl ReadState {
    /// The next batch; empty at the end of what is stored.
    fn next_batch(&mut self) -> Result<Vec<LogEvent>, StoreError> {
        if !self.opened {
            self.opened = true;
            self.reader = self.files.reader(self.job, self.after, self.payloads)?;
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Vec::new());
        };
        let batch = self.files.read_batch(self.job, reader, self.after)?;
        if let Some(last) = batch.last() {
            self.after = last.cursor;
        }
        Ok(batch)
    }
}

#[async_trait]
impl LogStore for EmbeddedStore {
    async fn append(&self, job: JobId, events: Vec<LogEvent>) -> Result<(), StoreError> {
        blocking(&self.files, move |files| files.append(job, &events)).await
    }

    fn read(&self, job: JobId, after: LogCursor, payloads: Payloads) -> LogStream {
        let state = ReadState {
            files: self.files.clone(),
            job,
            after,
            payloads,
            reader: None,
            opened: false,
        };
        let batches = futures::stream::try_unfold(state, |mut state| async move {
            let files = state.files.clone();
            let (state, batch) = blocking(&files, move |_| {
                let batch = state.next_batch()?;
                Ok((state, batch))
            })
            .await?;
            if batch.is_empty() {
                return Ok(None);
            }
            Ok(Some((batch, state)))
        });
        Box::pin(
            batches
                .map_ok(|batch| futures::stream::iter(batch.into_iter().map(Ok)))
                .try_flatten(),
        )
    }

    async fn close(&self, job: JobId) {
        let _ = blocking(&self.files, move |files| {
            files.close(job);
            Ok(())
        })
        .await;
    }
}

#[async_trait]
impl ReportStore for EmbeddedStore {
    async fn put_report(&self, job: JobId, at: LogCursor, xml: Bytes) -> Result<(), StoreError> {
        blocking(&self.files, move |files| files.put_report(job, at, &xml)).await
    }

    async fn report(&self, job: JobId, at: LogCursor) -> Result<Option<Bytes>, StoreError> {
        blocking(&self.files, move |files| files.report(job, at)).await
    }
}

/// Artifacts are read in pieces of this size.
const ARTIFACT_READ_BYTES: usize = 256 * 1024;

#[async_trait]
impl ArtifactStore for EmbeddedStore {
    async fn put_pieces(&self, job: JobId, pieces: Vec<ArtifactPiece>) -> Result<(), StoreError> {
        blocking(&self.files, move |files| {
            files.write_artifacts(job, &pieces)
        })
        .await
    }

    fn read_artifact(&self, job: JobId, attempt: u32, name: &str) -> ByteStream {
        let path = self.files.artifact_path(job, attempt, name);
        let chunks = futures::stream::once(async move {
            match tokio::fs::File::open(&path).await {
                Ok(file) => Ok(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    ARTIFACT_READ_BYTES,
                )
                .map_err(move |e| StoreError::Io {
                    path: String::new(),
                    source: e,
                })),
                Err(e) => Err(super::io_err(&path)(e)),
            }
        })
        .try_flatten();
        Box::pin(chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, collect_log};

    fn output(attempt: u32, seq: u64, data: &'static [u8]) -> LogEvent {
        LogEvent {
            cursor: LogCursor::new(attempt, seq),
            agent_seq: seq,
            step: 1,
            kind: EventKind::Output,
            stream: 1,
            at_ms: 1,
            payload: Bytes::from_static(data),
            withheld: 0,
        }
    }

    #[tokio::test]
    async fn reads_resume_after_any_cursor_also_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let events = vec![output(1, 1, b"a"), output(1, 2, b"b"), output(2, 1, b"c")];
        store.append(7, events.clone()).await.unwrap();
        for (after, expect) in [
            (LogCursor::START, &events[..]),
            (LogCursor::new(1, 1), &events[1..]),
            (LogCursor::new(1, 2), &events[2..]),
            (LogCursor::new(2, 1), &events[3..]),
        ] {
            let read = collect_log(store.read(7, after, Payloads::All))
                .await
                .unwrap();
            assert_eq!(read, expect);
        }
        store.close(7).await;
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let read = collect_log(store.read(7, LogCursor::new(1, 1), Payloads::All))
            .await
            .unwrap();
        assert_eq!(read, &events[1..]);
        assert!(
            collect_log(store.read(8, LogCursor::START, Payloads::All))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn artifacts_and_reports_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let piece = |offset, data: &'static [u8]| ArtifactPiece {
            attempt: 1,
            name: "bin/app".into(),
            offset,
            data: Bytes::from_static(data),
        };
        store
            .put_pieces(3, vec![piece(0, b"hello "), piece(6, b"world")])
            .await
            .unwrap();
        // A resend writes the same bytes at the same place.
        store.put_pieces(3, vec![piece(6, b"world")]).await.unwrap();
        let bytes: Vec<Bytes> = store
            .read_artifact(3, 1, "bin/app")
            .try_collect()
            .await
            .unwrap();
        assert_eq!(bytes.concat(), b"hello world");
        let missing: Result<Vec<Bytes>, _> = store.read_artifact(3, 1, "nope").try_collect().await;
        assert!(missing.is_err());
        let at = LogCursor::new(1, 4);
        store
            .put_report(3, at, Bytes::from_static(b"<testsuite/>"))
            .await
            .unwrap();
        assert_eq!(store.report(3, at).await.unwrap().unwrap(), "<testsuite/>");
        assert!(
            store
                .report(3, LogCursor::new(1, 5))
                .await
                .unwrap()
                .is_none()
        );
    }
}
