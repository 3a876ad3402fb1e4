//! What the engine does for agents: enrolment (bootstrap token → job certificate), attaching a stream to
//! its job, and storing the agent's sequenced events exactly once and in order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroci::pb;
use zeroci::pb::agent_event::Kind as EventKind;
use zeroci::pb::controller_message::Kind as Reply;
use zeroci::pki::Identity;

use crate::engine::apply::{self, Effect};
use crate::engine::{ActiveJob, AgentTx, Engine, RunState, Session, sha256_hex};
use crate::error::ControllerError;
use crate::jobs::{JobRecord, JobStatus, StepKind, StepStatus};
use crate::store::{Frame, FrameHeader, FrameKind};

/// Why a job that ran to its end has the status it has, for `reason`.
fn failure_reason(record: &JobRecord) -> String {
    for step in &record.steps {
        let failed = matches!(
            (step.kind, step.status),
            (_, StepStatus::Error | StepStatus::Cancelled)
                | (StepKind::Checkout | StepKind::Install, StepStatus::Failure)
        );
        if failed {
            let detail = if step.message.is_empty() {
                step.exit_code
                    .map(|c| format!("exit code {c}"))
                    .unwrap_or_default()
            } else {
                step.message.clone()
            };
            return format!("step {:?} failed: {detail}", step.name);
        }
    }
    String::new()
}

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
        let wanted = sha256_hex(token);
        for active in self.active_jobs() {
            let mut state = active.state.lock().await;
            let Some(machine) = state.record.machine.as_mut() else {
                continue;
            };
            if machine.token_sha256.as_deref() != Some(wanted.as_str())
                || machine.attempt != active.attempt
            {
                continue;
            }
            let ttl = Duration::from_secs(self.config.tls.agent_cert_ttl);
            let (certificate_pem, not_after_unix_ms) = self
                .ca
                .sign_agent_csr(csr_pem, active.id, active.attempt, ttl)
                .map_err(|e| {
                    ControllerError::InvalidArgument(format!("bad certificate request: {e}"))
                })?;
            // One-time: the token is forgotten as soon as it has been used.
            machine.token_sha256 = None;
            self.jobs.put(&state.record).await?;
            info!(
                job_id = active.id,
                attempt = active.attempt,
                "agent enrolled"
            );
            return Ok(pb::EnrollResponse {
                certificate_pem,
                job_id: active.id,
                attempt: active.attempt,
                not_after_unix_ms,
            });
        }
        Err(ControllerError::PermissionDenied(
            "unknown or already used bootstrap token".into(),
        ))
    }

    /// Binds a new agent stream to its job and sends `Welcome` on `tx`.
    pub async fn attach(
        &self,
        identity: Identity,
        hello: pb::Hello,
        tx: AgentTx,
        address: String,
        session_id: u64,
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
                    job.status.as_str()
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
            self.jobs.put(&state.record).await?;
        }
        let run = apply::run_steps(&state.record);
        let welcome = pb::Welcome {
            acked_seq: state.last_seq,
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
        if let Ok(mut session) = active.session.lock() {
            if let Some(old) = session.replace(Session {
                id: session_id,
                tx,
                info,
                stop,
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
            last_seq = state.last_seq,
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
    pub fn detach(&self, active: &ActiveJob, session_id: u64) {
        if let Ok(mut session) = active.session.lock()
            && session.as_ref().is_some_and(|s| s.id == session_id)
        {
            session.take();
        }
    }

    fn assignment(&self, record: &JobRecord) -> pb::Assignment {
        let mut env: std::collections::HashMap<String, String> =
            self.config.environment.clone().into_iter().collect();
        let mut secrets = Vec::new();
        let settings = self.config.repo(&record.repo, &record.repo_url);
        if let Some(repo) = settings {
            env.extend(repo.env.clone());
        }
        // Secrets never go to code from outside the repository (a fork's pull request).
        if let Some(repo) = settings.filter(|_| !record.untrusted) {
            env.extend(repo.secrets.clone());
            for value in repo.secrets.values() {
                secrets.push(value.clone());
                if repo.mask_base64 {
                    secrets.extend(crate::engine::masking::base64_forms(value));
                }
            }
        }
        let mut git_http_header = String::new();
        if let (Some(_), false, Some(token)) = (
            &record.github_repo,
            record.untrusted,
            self.config
                .github
                .as_ref()
                .and_then(|g| g.access_token.clone()),
        ) && record.repo_url.starts_with("https://")
        {
            // Private repositories clone with the token as an HTTP header for git alone: not in the URL
            // (which git would keep in .git/config for the job to read) and never in the stored record.
            use base64::Engine as _;
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            git_http_header = format!("Authorization: Basic {basic}");
            secrets.push(token);
            secrets.push(basic);
        }
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
            checkout_step: record.checkout_step(),
            git_http_header,
        }
    }

    /// Stores one agent event. Returns the highest stored sequence number (what to acknowledge).
    pub async fn handle_event(
        &self,
        active: &ActiveJob,
        event: pb::AgentEvent,
    ) -> Result<u64, ControllerError> {
        let mut state = active.state.lock().await;
        if state.record.status.is_final() || event.seq <= state.last_seq {
            // A resend of something stored, or a late event after the end: acknowledge, store nothing.
            return Ok(state.last_seq);
        }
        let problem = if event.seq != state.last_seq + 1 {
            Some(format!(
                "expected event {}, got {}",
                state.last_seq + 1,
                event.seq
            ))
        } else if event.kind.is_none() {
            Some(format!("event {} has no content", event.seq))
        } else {
            None
        };
        if let Some(problem) = problem {
            // Refusing the stream would only make the agent resend the same thing forever: the job's
            // record can no longer be complete, so it ends here, loudly.
            let reason = format!("agent events lost or invalid ({problem})");
            warn!(job_id = active.id, %reason, "ending job");
            self.finalize(active, &mut state, JobStatus::Error, reason)
                .await?;
            return Ok(state.last_seq);
        }
        let Some(kind) = event.kind else {
            return Ok(state.last_seq);
        };
        let at_ms = if event.at_unix_ms > 0 {
            event.at_unix_ms
        } else {
            zeroci::now_unix_ms()
        };
        let (kind, step, stream, payload) = match kind {
            EventKind::Output(o) => {
                let stream = if o.stream == pb::OutputStream::Stderr as i32 {
                    2
                } else {
                    1
                };
                (FrameKind::Output, o.step, stream, o.data)
            }
            EventKind::StepStarted(s) => (FrameKind::StepStarted, s.step, 0, Bytes::new()),
            EventKind::StepExited(e) => (
                FrameKind::StepExited,
                e.step,
                0,
                Bytes::from(e.encode_to_vec()),
            ),
            EventKind::CheckedOut(c) => {
                (FrameKind::CheckedOut, 0, 0, Bytes::from(c.encode_to_vec()))
            }
            EventKind::Finished(_) => (FrameKind::Finished, 0, 0, Bytes::new()),
            EventKind::TestReport(r) => (
                FrameKind::TestReport,
                r.step,
                0,
                Bytes::from(r.encode_to_vec()),
            ),
            EventKind::Artifact(a) => {
                // Filed under the stage's last step, which is what ran before it was kept.
                let after = state
                    .record
                    .steps
                    .iter()
                    .filter(|s| s.stage == state.record.stage())
                    .map(|s| s.index)
                    .max();
                (
                    FrameKind::Artifact,
                    after.unwrap_or(0),
                    0,
                    Bytes::from(a.encode_to_vec()),
                )
            }
        };
        let header = FrameHeader {
            attempt: active.attempt,
            step,
            kind,
            stream,
            seq: event.seq,
            at_ms,
        };
        let frame = Frame { header, payload };
        self.append_and_apply(active, &mut state, frame).await?;
        Ok(state.last_seq)
    }

    async fn append_and_apply(
        &self,
        active: &ActiveJob,
        state: &mut RunState,
        frame: Frame,
    ) -> Result<(), ControllerError> {
        let len = state.writer.append(&frame.header, &frame.payload)?;
        if frame.header.seq > 0 {
            // Stored: from here on a resend of it is a duplicate, whatever happens to the record below.
            state.last_seq = frame.header.seq;
        }
        let effect = apply::apply_frame(&mut state.record, &frame, self.plan_defaults());
        match effect {
            Effect::None => {}
            Effect::Changed => self.jobs.put(&state.record).await?,
            Effect::RunSteps(run) => {
                self.jobs.put(&state.record).await?;
                active.send_to_agent(Reply::RunSteps(run));
            }
            Effect::ConfigError { step, message } => {
                self.jobs.put(&state.record).await?;
                self.publish_progress(active.id, len);
                self.report_config_error(active, state, step, &message)
                    .await?;
                self.finalize(active, state, JobStatus::Error, message)
                    .await?;
                return Ok(());
            }
            Effect::Finished if state.record.has_next_stage() => {
                self.jobs.put(&state.record).await?;
                self.publish_progress(active.id, len);
                self.end_stage(active);
                return Ok(());
            }
            Effect::Finished => {
                let status = state.record.final_status();
                let reason = failure_reason(&state.record);
                self.publish_progress(active.id, len);
                self.finalize(active, state, status, reason).await?;
                return Ok(());
            }
        }
        self.publish_progress(active.id, len);
        Ok(())
    }

    /// Writes the config step's start, message and end as controller frames (sequence number 0).
    async fn report_config_error(
        &self,
        active: &ActiveJob,
        state: &mut RunState,
        step: u32,
        message: &str,
    ) -> Result<(), ControllerError> {
        warn!(job_id = active.id, %message, "invalid pipeline file");
        let now = zeroci::now_unix_ms();
        let header = |kind, stream| FrameHeader {
            attempt: active.attempt,
            step,
            kind,
            stream,
            seq: 0,
            at_ms: now,
        };
        let exited = pb::StepExited {
            step,
            exit_code: 1,
            timed_out: false,
            cancelled: false,
            message: message.to_string(),
        };
        let frames = [
            Frame {
                header: header(FrameKind::StepStarted, 0),
                payload: Bytes::new(),
            },
            Frame {
                header: header(FrameKind::Output, 2),
                payload: Bytes::from(format!("{message}\n")),
            },
            Frame {
                header: header(FrameKind::StepExited, 0),
                payload: Bytes::from(exited.encode_to_vec()),
            },
        ];
        for frame in frames {
            let len = state.writer.append(&frame.header, &frame.payload)?;
            apply::apply_frame(&mut state.record, &frame, self.plan_defaults());
            self.publish_progress(active.id, len);
        }
        self.jobs.put(&state.record).await?;
        Ok(())
    }
}
