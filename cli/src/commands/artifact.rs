//! `zeroci artifact JOB [NAME] [-o FILE]`: download a file a job kept.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tokio_stream::StreamExt;
use zeroci::pb;

use crate::args::ArtifactArgs;

pub async fn download(profile: Option<&Path>, args: ArtifactArgs) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(profile).await?;
    let name = args.name.clone().unwrap_or_default();
    let request = pb::DownloadArtifactRequest {
        id: args.job,
        name: name.clone(),
    };
    let response = client.rpc.download_artifact(request).await;
    let mut stream = response
        .map_err(|s| client.job_error(&s, args.job))?
        .into_inner();
    // Know the name before creating a file: ask the job when none was given.
    let name = if name.is_empty() {
        let job = client.rpc.get_job(pb::GetJobRequest { id: args.job }).await;
        let job = job
            .map_err(|s| client.job_error(&s, args.job))?
            .into_inner();
        job.artifacts
            .last()
            .map(|a| a.name.clone())
            .unwrap_or_else(|| "artifact".to_string())
    } else {
        name
    };
    let to_stdout = args.output.as_deref() == Some("-");
    let path = match &args.output {
        Some(out) if out != "-" => PathBuf::from(out),
        _ => PathBuf::from(
            Path::new(&name)
                .file_name()
                .unwrap_or(std::ffi::OsStr::new("artifact")),
        ),
    };
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )
    };
    let mut written = 0u64;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|s| client.job_error(&s, args.job))?;
        sink.write_all(&piece.data)
            .context("writing the artifact")?;
        written += piece.data.len() as u64;
    }
    sink.flush().context("writing the artifact")?;
    if !to_stdout {
        eprintln!("wrote {} ({written} bytes)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
