//! `AgentService`: enrolment and the agents' long-lived `Attach` streams.
//!
//! Each stream gets a session task that reads events, stores them through the engine, acknowledges in
//! batches (one `Ack` for every run of events that arrived together), and sends heartbeats. The task
//! ends when the agent closes the stream, a newer stream of the same agent replaces it, or the
//! controller stops its sessions at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use zeroci::pb;
use zeroci::pb::agent_message::Kind as AgentKind;
use zeroci::pb::controller_message::Kind as Reply;

use crate::api::auth::peer_identity;
use crate::engine::{ActiveJob, AgentTx, Engine};

/// Events handled before an `Ack` is sent even if more are already waiting.
const MAX_EVENTS_PER_ACK: usize = 256;
/// How long a new stream may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentApi {
    engine: Arc<Engine>,
    next_session: AtomicU64,
    /// Cancelled when the controller stops serving agents (after the shutdown drain).
    sessions_stop: CancellationToken,
}

impl AgentApi {
    pub fn new(engine: Arc<Engine>, sessions_stop: CancellationToken) -> AgentApi {
        AgentApi {
            engine,
            next_session: AtomicU64::new(1),
            sessions_stop,
        }
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(
            self.engine
                .enroll(&request.bootstrap_token, &request.csr_pem)
                .await?,
        ))
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
        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let stop = self.sessions_stop.child_token();
        let active = self
            .engine
            .attach(
                identity,
                hello,
                tx.clone(),
                address,
                session_id,
                stop.clone(),
            )
            .await?;
        let engine = self.engine.clone();
        tokio::spawn(async move {
            run_session(&engine, &active, inbound, tx, stop).await;
            engine.detach(&active, session_id);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn run_session(
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
        // Handle this message and every one already waiting, then acknowledge them together.
        let mut next = Some(first);
        let mut handled = 0;
        let mut highest = acked;
        while let Some(message) = next.take() {
            let message = match message {
                Ok(Some(m)) => m,
                Ok(None) => {
                    debug!(job_id, "agent closed its stream");
                    return;
                }
                Err(status) => {
                    debug!(job_id, %status, "agent stream broke");
                    return;
                }
            };
            active.touch();
            match message.kind {
                Some(AgentKind::Event(event)) => match engine.handle_event(active, event).await {
                    Ok(seq) => highest = seq,
                    Err(e) => {
                        warn!(job_id, error = %e, "refusing agent event");
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                },
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
            handled += 1;
            if handled < MAX_EVENTS_PER_ACK {
                next = inbound.message().now_or_never();
            }
        }
        if highest > acked {
            acked = highest;
            let ack = pb::ControllerMessage {
                kind: Some(Reply::Ack(pb::Ack { seq: acked })),
            };
            if tx.send(Ok(ack)).await.is_err() {
                return;
            }
        }
    }
}
