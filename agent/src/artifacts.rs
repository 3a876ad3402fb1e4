//! What a machine sends besides output: a script step's JUnit report, and the file the pipeline keeps
//! (`bin_path`); and what it receives: artifacts kept by earlier pipeline jobs of the same run.
//!
//! Reports and artifact chunks go through the outbox like output, so they are resent after a reconnect
//! and stored exactly once. Fetching uses its own short-lived connection with the agent's certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use zeroci::pb::{self, agent_event::Kind};

use crate::mask::Secrets;
use crate::outbox::Outbox;
use crate::session::SessionConfig;

/// Reports larger than this are announced but not sent: one event must fit the controller's 4 MiB
/// message and journal-frame limits with room to spare.
pub const MAX_TEST_REPORT_BYTES: u64 = 3 * 1024 * 1024;
/// Artifacts larger than this are refused (they travel through the job's journal).
pub const MAX_ARTIFACT_BYTES: u64 = 512 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Sends the step's test report if the step wrote one, its secrets masked like the step's output (a
/// test that fails on a credential prints it into the report's messages); returns the event's sequence
/// number.
pub async fn send_test_report(
    outbox: &Outbox,
    secrets: &Secrets,
    step: u32,
    path: &Path,
) -> Option<u64> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    if !meta.is_file() {
        return None;
    }
    let source = path.display().to_string();
    let report = if meta.len() > MAX_TEST_REPORT_BYTES {
        pb::TestReport {
            step,
            source,
            xml: Default::default(),
            too_large: true,
        }
    } else {
        let xml = tokio::fs::read(path).await.ok()?;
        pb::TestReport {
            step,
            source,
            xml: secrets.mask(xml.into()),
            too_large: false,
        }
    };
    Some(outbox.push(Kind::TestReport(report)).await)
}

/// Where a `bin_path` or artifact name points: absolute as written, else inside the workspace.
pub fn resolve(workspace: &Path, name: &str) -> PathBuf {
    let path = Path::new(name);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        workspace.join(path)
    }
}

/// Sends the file at `bin_path` as artifact chunks (or one last chunk saying why it cannot be kept).
/// A name is shown wherever the job is and is how the artifact is fetched, so one that holds a
/// secret is refused (under its masked name) rather than kept under a name nobody could use.
pub async fn upload(outbox: &Outbox, secrets: &Secrets, workspace: &Path, bin_path: &str) {
    let path = resolve(workspace, bin_path);
    let refuse = |error: String| pb::ArtifactChunk {
        name: secrets.mask_text(bin_path),
        offset: 0,
        data: Default::default(),
        last: true,
        error: secrets.mask_text(&error),
    };
    if secrets.appear_in(bin_path) {
        let error = "its name holds a secret value; not kept".to_string();
        outbox.push(Kind::Artifact(refuse(error))).await;
        return;
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) => {
            outbox
                .push(Kind::Artifact(refuse(format!(
                    "cannot open {}: {e}",
                    path.display()
                ))))
                .await;
            return;
        }
    };
    match file.metadata().await {
        Ok(meta) if !meta.is_file() => {
            outbox
                .push(Kind::Artifact(refuse(format!(
                    "{} is not a regular file",
                    path.display()
                ))))
                .await;
            return;
        }
        Ok(meta) if meta.len() > MAX_ARTIFACT_BYTES => {
            let error = format!(
                "{} is {} bytes; the limit is {MAX_ARTIFACT_BYTES}",
                path.display(),
                meta.len()
            );
            outbox.push(Kind::Artifact(refuse(error))).await;
            return;
        }
        _ => {}
    }
    let mut file = file;
    let mut offset = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = match read_full(&mut file, &mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let mut chunk = refuse(format!("reading {}: {e}", path.display()));
                chunk.offset = offset;
                outbox.push(Kind::Artifact(chunk)).await;
                return;
            }
        };
        buf.truncate(n);
        let last = n < CHUNK;
        let chunk = pb::ArtifactChunk {
            name: bin_path.to_string(),
            offset,
            data: buf.into(),
            last,
            error: String::new(),
        };
        outbox.push(Kind::Artifact(chunk)).await;
        offset += n as u64;
        if last {
            tracing::info!(name = bin_path, bytes = offset, "artifact kept");
            return;
        }
    }
}

async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Fetches earlier pipeline jobs' artifacts into place.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub session: SessionConfig,
}

impl Fetcher {
    /// Downloads `name` and writes it at its path (relative to `workspace`, or absolute).
    pub async fn fetch(&self, workspace: &Path, name: &str) -> Result<u64, String> {
        let c = &self.session;
        let tls = c.credentials.tls();
        let endpoints = crate::endpoints::list(&c.controller);
        let (channel, _) =
            crate::endpoints::connect_any(&endpoints, 0, &tls, Duration::from_secs(10)).await?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
        let mut stream = client
            .fetch_artifact(pb::FetchArtifactRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let path = resolve(workspace, name);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut written = 0u64;
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|s| s.message().to_string())?;
            file.write_all(&piece.data)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            written += piece.data.len() as u64;
        }
        file.flush().await.map_err(|e| e.to_string())?;
        Ok(written)
    }
}
