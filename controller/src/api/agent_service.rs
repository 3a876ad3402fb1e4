//! `AgentService`: enrolment and the agents' long-lived `Attach` streams.
//!
//! Each stream gets a task ([`serve_link`]) that reads events, hands every run of events that arrived
//! together to the engine as one batch (one durable append), acknowledges the batch with one `Ack`, and
//! sends heartbeats. The task ends when the agent closes the stream, a newer stream of the same agent
//! replaces it, or the controller stops its links at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, warn};
use zeroci::pb;
use zeroci::pb::agent_message::Kind as AgentKind;
use zeroci::pb::controller_message::Kind as Reply;

use crate::api::auth::peer_identity;
use crate::api::rate_limit::{ENROLMENT, FailureLimiter};
use crate::engine::{ActiveJob, AgentTx, Engine};
use crate::error::ControllerError;

/// Events stored in one batch (and acknowledged with one `Ack`) even if more are already waiting.
const MAX_EVENTS_PER_BATCH: usize = 256;
/// Payload bytes after which a batch is stored even if more events are waiting.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// How long a new stream may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentApi {
    engine: Arc<Engine>,
    next_link: AtomicU64,
    /// Cancelled when the controller stops serving agents (after the shutdown drain).
    links_stop: CancellationToken,
    /// Enrolment is open to anyone who can connect: made-up tokens are counted per address.
    enrolment_failures: FailureLimiter,
}

impl AgentApi {
    pub fn new(engine: Arc<Engine>, links_stop: CancellationToken) -> AgentApi {
        AgentApi {
            engine,
            next_link: AtomicU64::new(1),
            links_stop,
            enrolment_failures: FailureLimiter::new(ENROLMENT),
        }
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let request = request.into_inner();
        let known = self
            .engine
            .expects_bootstrap_token(&request.bootstrap_token);
        let enrolled = self
            .enrolment_failures
            .guard(
                peer,
                known,
                self.engine
                    .enroll(&request.bootstrap_token, &request.csr_pem),
            )
            .await?;
        Ok(Response::new(enrolled))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let identity = peer_identity(&request)?;
        let request = request.into_inner();
        let renewed = self
            .engine
            .renew_agent_certificate(identity, &request.csr_pem)
            .await?;
        Ok(Response::new(renewed))
    }

    type FetchArtifactStream = ReceiverStream<Result<pb::ArtifactData, Status>>;

    async fn fetch_artifact(
        &self,
        request: Request<pb::FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let identity = peer_identity(&request)?;
        let name = request.into_inner().name;
        let (record, attempt) = self.engine.artifact_for_agent(identity, &name).await?;
        let pieces =
            crate::engine::reports::artifact_stream(self.engine.clone(), record, name, attempt);
        Ok(Response::new(pieces))
    }

    type AttachStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let identity = peer_identity(&request)?;
        let address = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(Some(pb::AgentMessage {
                kind: Some(AgentKind::Hello(hello)),
            }))) => hello,
            Ok(Ok(_)) => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        let (tx, rx) = mpsc::channel(64);
        let link_id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let stop = self.links_stop.child_token();
        let (job_id, attempt) = (hello.job_id, hello.attempt);
        let peer = address.clone();
        let active = match self
            .engine
            .attach(identity, hello, tx.clone(), address, link_id, stop.clone())
            .await
        {
            Ok(active) => active,
            Err(error) => {
                // A stale or foreign agent is worth an operator's eye; "not here yet" is routine
                // while several controllers share the jobs.
                if matches!(
                    error,
                    ControllerError::FailedPrecondition(_) | ControllerError::PermissionDenied(_)
                ) {
                    warn!(job_id, attempt, %peer, %error, "agent refused");
                } else {
                    debug!(job_id, attempt, %peer, %error, "agent not attached");
                }
                return Err(error.into());
            }
        };
        let engine = self.engine.clone();
        let span = tracing::info_span!(
            "agent_link",
            job_id = active.id,
            attempt = active.attempt,
            link_id
        );
        tokio::spawn(
            async move {
                serve_link(&engine, &active, inbound, tx, stop).await;
                engine.detach(&active, link_id);
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn serve_link(
    engine: &Engine,
    active: &ActiveJob,
    mut inbound: Streaming<pb::AgentMessage>,
    tx: AgentTx,
    stop: CancellationToken,
) {
    let job_id = active.id;
    let mut heartbeat = tokio::time::interval(engine.config.heartbeat_interval());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acked = 0;
    loop {
        let first = tokio::select! {
            message = inbound.message() => message,
            _ = heartbeat.tick() => {
                let beat = pb::Heartbeat { at_unix_ms: zeroci::now_unix_ms() };
                if tx.send(Ok(pb::ControllerMessage { kind: Some(Reply::Heartbeat(beat)) })).await.is_err() {
                    return;
                }
                continue;
            }
            _ = stop.cancelled() => {
                let bye = pb::Disconnect { reason: "controller is stopping or a newer connection took over".into(), done: false };
                let _ = tx.try_send(Ok(pb::ControllerMessage { kind: Some(Reply::Disconnect(bye)) }));
                return;
            }
            _ = tx.closed() => return,
        };
        // This message and every one already waiting form one batch.
        let mut next = Some(first);
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut ended = false;
        while let Some(message) = next.take() {
            let message = match message {
                Ok(Some(m)) => m,
                Ok(None) => {
                    debug!(job_id, "agent closed its stream");
                    ended = true;
                    break;
                }
                Err(status) => {
                    debug!(job_id, %status, "agent stream broke");
                    ended = true;
                    break;
                }
            };
            active.touch();
            match message.kind {
                Some(AgentKind::Event(event)) => {
                    bytes += event.encoded_len();
                    events.push(event);
                }
                Some(AgentKind::Heartbeat(_)) => {}
                Some(AgentKind::GoingAway(bye)) => {
                    info!(job_id, reason = %bye.reason, "agent going away")
                }
                Some(AgentKind::Hello(_)) | None => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "Hello may only be the first message",
                        )))
                        .await;
                    return;
                }
            }
            if events.len() < MAX_EVENTS_PER_BATCH && bytes < MAX_BATCH_BYTES {
                next = inbound.message().now_or_never();
            }
        }
        if !events.is_empty() {
            match engine.handle_events(active, events).await {
                Ok(seq) if seq > acked => {
                    acked = seq;
                    let ack = pb::ControllerMessage {
                        kind: Some(Reply::Ack(pb::Ack { seq: acked })),
                    };
                    if tx.send(Ok(ack)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Not acknowledged: the agent resends after reconnecting.
                    warn!(job_id, error = %e, "cannot store agent events");
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            }
        }
        if ended {
            return;
        }
    }
}
