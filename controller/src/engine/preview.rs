//! What the first pipeline job asks of its machine, read before that machine exists. The plan proper
//! comes from the agent's checkout, on the machine; a machine that boots an image must know the image
//! first (and a pool host the labels it must offer), so for such provisioners the engine reads `zeroCI.yaml` at the job's commit itself: from the
//! repository on this host, or through GitHub's contents API. Anything else (a URL of another host)
//! boots the `default` image for its first pipeline job; later pipeline jobs get the image their plan
//! names.

use std::time::Duration;

use tracing::{info, warn};
use zeroci::resources::Resources;

use super::Engine;
use crate::jobs::JobRecord;

/// A `git show` of one file needs milliseconds; a repository that takes longer is not worth the wait.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The first pipeline job's `prerequisites`, as far as they are known before its machine exists.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FirstStage {
    pub image_name: Option<String>,
    pub resources: Resources,
    pub labels: Vec<String>,
}

impl Engine {
    /// Reads the first pipeline job's prerequisites when the provisioner needs them to make its
    /// machine and the plan is not known yet; `None` when it is known, not needed, or unreadable.
    pub(super) async fn preview_first_stage(&self, record: &JobRecord) -> Option<FirstStage> {
        if !record.stages.is_empty() || !self.provisioner.needs_prerequisites() {
            return None;
        }
        let text = match (&record.github_repo, &self.github) {
            (Some(repo), Some(github)) => {
                match github
                    .file_at(repo, zeroci::pipeline::FILE_NAME, &record.commit)
                    .await
                {
                    Ok(text) => text,
                    Err(error) => {
                        warn!(job_id = record.id, %error, "cannot read zeroCI.yaml before the machine exists");
                        None
                    }
                }
            }
            _ => self.local_pipeline_file(record).await,
        }?;
        let pipeline = zeroci::pipeline::parse(&text).ok()?;
        let first = pipeline.jobs.into_iter().next()?;
        info!(job_id = record.id, image = ?first.image_name, "first pipeline job's machine chosen from zeroCI.yaml");
        Some(FirstStage {
            image_name: first.image_name,
            resources: first.resources,
            labels: first.labels,
        })
    }

    /// `zeroCI.yaml` at the job's commit in a repository of this host.
    async fn local_pipeline_file(&self, record: &JobRecord) -> Option<Vec<u8>> {
        let repo = crate::provisioner::local::local_source(&record.repo_url)?;
        if record.commit.is_empty() || record.commit.starts_with('-') {
            return None;
        }
        let show = tokio::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .arg("show")
            .arg(format!("{}:{}", record.commit, zeroci::pipeline::FILE_NAME))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(READ_TIMEOUT, show).await {
            Ok(Ok(out)) if out.status.success() => Some(out.stdout),
            _ => None,
        }
    }
}
