//! What the engine does for agents: enrolment (bootstrap token → job certificate), attaching a stream to
//! its job, and storing the agent's sequenced events exactly once and in order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;
use zeroci::pb;
use zeroci::pb::controller_message::Kind as Reply;
use zeroci::pki::Identity;

use crate::engine::BOOTSTRAP_TOKEN_LEN;
use crate::engine::apply;
use crate::engine::{ActiveJob, AgentLink, AgentTx, Engine, sha256_hex};
use crate::error::ControllerError;
use crate::jobs::{JobRecord, JobStatus};

/// Seconds an agent certificate outlives the latest end of its job (clocks, a slow final flush).
const AGENT_CERT_SLACK_SECS: u64 = 300;

impl Engine {
    /// Exchanges a one-time bootstrap token and a CSR for a job certificate.
    pub async fn enroll(
        &self,
        token: &str,
        csr_pem: &str,
    ) -> Result<pb::EnrollResponse, ControllerError> {
        if token.is_empty() {
            return Err(ControllerError::Unauthenticated(
                "bootstrap token is required".into(),
            ));
        }
        // Refused before touching any job: a guess of the wrong shape costs nothing.
        if token.len() != BOOTSTRAP_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ControllerError::Unauthenticated(
                "malformed bootstrap token".into(),
            ));
        }
        let unknown =
            || ControllerError::PermissionDenied("unknown or already used bootstrap token".into());
        let wanted = sha256_hex(token);
        let active = self.pending_enrolment(&wanted).ok_or_else(unknown)?;
        let mut state = active.state.lock().await;
        // The record decides: the token may have been used while this call waited for the lock.
        let ours = state.record.machine.as_ref().is_some_and(|machine| {
            machine.token_sha256.as_deref() == Some(wanted.as_str())
                && machine.attempt == active.attempt
        });
        if !ours {
            return Err(unknown());
        }
        let ttl = self.agent_cert_validity(&state.record);
        let (certificate_pem, not_after_unix_ms) = self
            .ca
            .sign_agent_csr(csr_pem, active.id, active.attempt, ttl)
            .map_err(|e| {
                ControllerError::InvalidArgument(format!("bad certificate request: {e}"))
            })?;
        // One-time: the token is forgotten as soon as it has been used.
        if let Some(machine) = state.record.machine.as_mut() {
            machine.token_sha256 = None;
        }
        if let Ok(mut pending) = active.bootstrap_token_sha256.lock() {
            pending.take();
        }
        self.jobs.put(&mut state.record).await?;
        info!(
            job_id = active.id,
            attempt = active.attempt,
            "agent enrolled"
        );
        Ok(pb::EnrollResponse {
            certificate_pem,
            job_id: active.id,
            attempt: active.attempt,
            not_after_unix_ms,
        })
    }

    /// Whether `token` is the bootstrap token of a machine whose agent has not enrolled yet: a
    /// quick look that waits on no job, so the enrolment door can let a right token through even
    /// while it refuses an address that keeps guessing.
    pub fn expects_bootstrap_token(&self, token: &str) -> bool {
        self.pending_enrolment(&sha256_hex(token)).is_some()
    }

    /// The job whose machine waits to enroll with the token of this SHA-256, found without locking
    /// any job's state.
    fn pending_enrolment(&self, token_sha256: &str) -> Option<Arc<ActiveJob>> {
        self.active_jobs().into_iter().find(|active| {
            active
                .bootstrap_token_sha256
                .lock()
                .is_ok_and(|pending| pending.as_deref() == Some(token_sha256))
        })
    }

    /// A new certificate for an agent whose current one (of `job_id`, `attempt`) is still valid.
    pub async fn renew_agent_certificate(
        &self,
        identity: Identity,
        csr_pem: &str,
    ) -> Result<pb::EnrollResponse, ControllerError> {
        let Identity::Agent { job_id, attempt } = identity else {
            return Err(ControllerError::PermissionDenied(
                "only agent certificates are renewed".into(),
            ));
        };
        let active = self
            .active_job(job_id)
            .filter(|a| a.attempt == attempt)
            .ok_or_else(|| {
                ControllerError::FailedPrecondition(format!(
                    "attempt {attempt} of job {job_id} is not running here"
                ))
            })?;
        let state = active.state.lock().await;
        if state.record.status.is_final() {
            return Err(ControllerError::FailedPrecondition(format!(
                "job {job_id} is already over"
            )));
        }
        let ttl = self.agent_cert_validity(&state.record);
        let (certificate_pem, not_after_unix_ms) = self
            .ca
            .sign_agent_csr(csr_pem, job_id, attempt, ttl)
            .map_err(|e| {
                ControllerError::InvalidArgument(format!("bad certificate request: {e}"))
            })?;
        info!(
            job_id,
            attempt,
            valid_secs = ttl.as_secs(),
            "agent certificate renewed"
        );
        Ok(pb::EnrollResponse {
            certificate_pem,
            job_id,
            attempt,
            not_after_unix_ms,
        })
    }

    /// How long an agent certificate issued now lives: `[tls] agent_cert_ttl`, but not past the time
    /// the job must have ended (`[limits] max_job_duration` from its start, the cancel grace and a
    /// margin). A job that can outlive it renews its agent's certificate.
    fn agent_cert_validity(&self, record: &JobRecord) -> Duration {
        let ttl = Duration::from_secs(self.config.tls.agent_cert_ttl);
        let max = self.config.limits.max_job_duration;
        if max == 0 {
            return ttl;
        }
        let now = zeroci::now_unix_ms();
        let started = if record.started_at > 0 {
            record.started_at
        } else {
            now
        };
        let slack_secs = self
            .config
            .main
            .cancel_grace
            .saturating_add(AGENT_CERT_SLACK_SECS);
        let life_ms = max.saturating_add(slack_secs).saturating_mul(1000);
        let end = started.saturating_add(i64::try_from(life_ms).unwrap_or(i64::MAX));
        let left = Duration::from_millis(end.saturating_sub(now).max(0) as u64);
        ttl.min(left.max(Duration::from_secs(AGENT_CERT_SLACK_SECS)))
    }

    /// Binds a new agent stream to its job and sends `Welcome` on `tx`.
    pub async fn attach(
        &self,
        identity: Identity,
        hello: pb::Hello,
        tx: AgentTx,
        address: String,
        link_id: u64,
        stop: CancellationToken,
    ) -> Result<Arc<ActiveJob>, ControllerError> {
        let Identity::Agent { job_id, attempt } = identity else {
            return Err(ControllerError::PermissionDenied(
                "only agent certificates may attach".into(),
            ));
        };
        if hello.job_id != job_id || hello.attempt != attempt {
            return Err(ControllerError::PermissionDenied(format!(
                "certificate is for job {job_id} attempt {attempt}, not job {} attempt {}",
                hello.job_id, hello.attempt
            )));
        }
        let Some(active) = self.active_job(job_id) else {
            return Err(match self.jobs.get(job_id).await? {
                Some(job) if job.status.is_final() => ControllerError::FailedPrecondition(format!(
                    "job {job_id} is already over ({})",
                    job.status.word()
                )),
                // Not over, just not attached here (yet): the agent should try again later.
                Some(_) => ControllerError::Unavailable(format!(
                    "job {job_id} is not being supervised by this controller right now"
                )),
                None => ControllerError::NotFound(format!("job {job_id} not found")),
            });
        };
        if active.attempt != attempt {
            return Err(ControllerError::FailedPrecondition(format!(
                "attempt {attempt} of job {job_id} is stale; the job is on attempt {}",
                active.attempt
            )));
        }
        let mut state = active.state.lock().await;
        if state.record.status.is_final() {
            return Err(ControllerError::FailedPrecondition(format!(
                "job {job_id} is already over"
            )));
        }
        if state.record.status == JobStatus::Provisioning {
            state.record.status = JobStatus::Running;
            self.jobs.put(&mut state.record).await?;
        }
        let run = apply::run_steps(&state.record);
        let welcome = pb::Welcome {
            acked_seq: state.agent_seq,
            assignment: (!hello.has_assignment).then(|| self.assignment(&state.record)),
            heartbeat_interval_ms: self.config.main.heartbeat_interval_ms,
            run_steps: (!run.steps.is_empty()).then_some(run),
        };
        // The channel is new and empty: this cannot block.
        let _ = tx.try_send(Ok(pb::ControllerMessage {
            kind: Some(Reply::Welcome(welcome)),
        }));
        let now = zeroci::now_unix_ms();
        let info = pb::AgentInfo {
            job_id,
            attempt,
            address,
            hostname: hello.hostname.clone(),
            version: hello.agent_version.clone(),
            last_seen_unix_ms: now,
            connected_at_unix_ms: now,
        };
        if let Ok(mut link) = active.link.lock() {
            if let Some(old) = link.replace(AgentLink {
                id: link_id,
                tx,
                info,
                stop,
                told_output_full: false,
            }) {
                // The agent reconnected; the old stream is dead or dying.
                old.stop.cancel();
            }
        }
        active.connected.store(true, Ordering::Relaxed);
        active.touch();
        if let Some(reason) = state.record.cancel_reason.clone() {
            active.send_to_agent(Reply::Cancel(pb::Cancel {
                reason,
                grace_secs: self.config.main.cancel_grace,
            }));
        }
        info!(
            job_id,
            attempt,
            acked_seq = state.agent_seq,
            resumed = hello.has_assignment,
            "agent attached"
        );
        Ok(active.clone())
    }

    /// The record and attempt of an artifact an agent may fetch: one kept by an earlier pipeline job of
    /// the very job (and attempt) its certificate is for.
    pub async fn artifact_for_agent(
        &self,
        identity: Identity,
        name: &str,
    ) -> Result<(JobRecord, u32), ControllerError> {
        let Identity::Agent { job_id, attempt } = identity else {
            return Err(ControllerError::PermissionDenied(
                "only agent certificates may fetch artifacts".into(),
            ));
        };
        let active = self
            .active_job(job_id)
            .filter(|a| a.attempt == attempt)
            .ok_or_else(|| {
                ControllerError::FailedPrecondition(format!(
                    "attempt {attempt} of job {job_id} is not running"
                ))
            })?;
        let record = active.state.lock().await.record.clone();
        let stage = record.stage();
        let kept = record
            .artifacts
            .iter()
            .rev()
            .find(|a| a.name == name && a.stage < stage && a.error.is_empty());
        let Some(kept) = kept else {
            return Err(ControllerError::NotFound(format!(
                "job {job_id} has no artifact {name:?} from an earlier pipeline job"
            )));
        };
        let source_attempt = record.first_attempt + kept.stage;
        Ok((record, source_attempt))
    }

    /// Forgets a stream that ended, unless a newer one replaced it already.
    pub fn detach(&self, active: &ActiveJob, link_id: u64) {
        if let Ok(mut link) = active.link.lock()
            && link.as_ref().is_some_and(|l| l.id == link_id)
        {
            link.take();
        }
    }

    fn assignment(&self, record: &JobRecord) -> pb::Assignment {
        let mut env: std::collections::HashMap<String, String> =
            self.config.environment.clone().into_iter().collect();
        let settings = self.config.repo(&record.repo, &record.repo_url);
        if let Some(repo) = settings {
            env.extend(repo.env.clone());
        }
        // Secrets never go to code from outside the repository (a fork's pull request).
        if let Some(repo) = settings.filter(|_| !record.untrusted) {
            env.extend(repo.secrets.clone());
        }
        let git_http_header = match self.clone_token(record) {
            Some(token) => format!("Authorization: Basic {}", clone_credentials(&token)),
            None => String::new(),
        };
        let secrets = self.job_secrets(record);
        pb::Assignment {
            job_id: record.id,
            attempt: record.attempt,
            repo_url: record.repo_url.clone(),
            commit: record.commit.clone(),
            repo_name: record.repo.clone(),
            branch: record.ref_name.clone(),
            env,
            secrets,
            idle_timeout_secs: self.config.main.idle_timeout,
            checkout_timeout_secs: self.config.main.checkout_timeout,
            checkout_step: record.checkout_step(),
            git_http_header,
        }
    }

    /// The GitHub token a job clones a private repository with, when it gets one.
    fn clone_token(&self, record: &JobRecord) -> Option<String> {
        let token = self.config.github.as_ref()?.access_token.clone()?;
        (record.github_repo.is_some()
            && !record.untrusted
            && record.repo_url.starts_with("https://"))
        .then_some(token)
    }

    /// Every form of every secret the job can see, for masking what it prints and what is shown of
    /// it: its repository's secrets (as the repository asks: escaped forms always, base64 when set)
    /// and the token it clones with.
    pub fn job_secrets(&self, record: &JobRecord) -> Vec<String> {
        let mut secrets = Vec::new();
        let settings = self
            .config
            .repo(&record.repo, &record.repo_url)
            .filter(|_| !record.untrusted);
        if let Some(repo) = settings {
            for value in repo.secrets.values() {
                secrets.push(value.clone());
                secrets.extend(crate::engine::masking::escaped_forms(value));
                if repo.mask_base64 {
                    secrets.extend(crate::engine::masking::base64_forms(value));
                }
            }
        }
        if let Some(token) = self.clone_token(record) {
            // Private repositories clone with the token as an HTTP header for git alone: not in the
            // URL (which git would keep in .git/config for the job to read) and never in the record.
            secrets.push(clone_credentials(&token));
            secrets.push(token);
        }
        secrets
    }
}

/// The Basic credentials git sends for a GitHub token.
fn clone_credentials(token: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
}
