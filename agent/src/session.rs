//! The connection to the controller: one `Attach` stream at a time, reconnecting until the job is over.
//!
//! Each stream starts with `Hello` and expects `Welcome`, which rewinds the outbox to what the controller
//! stored, so every unacknowledged event is sent again in order. While a stream is up, four things run
//! concurrently in one `select!`: the event sender (outbox → stream), the heartbeat timer, a one-shot
//! `GoingAway` on shutdown, and the reader (acks, steps, cancel, disconnect), which also drops the stream
//! when the controller has been silent for three heartbeat intervals. All outgoing messages go through
//! one bounded channel; a failed send means the stream is gone, which only ever leads to a reconnect.
//!
//! Reconnects use capped, jittered exponential backoff; the session gives up after `give_up_after`
//! without a working stream. Refusals that mean "this agent is stale" end it for good (fencing).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};
use zeroci::pb::agent_service_client::AgentServiceClient;
use zeroci::pb::{
    AgentMessage, ControllerMessage, Hello, Welcome, agent_message, controller_message,
};

use crate::backoff::Backoff;
use crate::control::JobControl;
use crate::credentials::Credentials;
use crate::outbox::Outbox;

/// Heartbeat pace when the controller does not name one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Shortest silence after which the controller counts as gone.
const MIN_LIVENESS: Duration = Duration::from_secs(3);
/// Upper bound for dialing, for the `Attach` response and for `Welcome`.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean close waits for the controller to end the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// A stream that lasted this long resets the reconnect backoff.
const STABLE_STREAM: Duration = Duration::from_secs(10);
/// Outgoing messages buffered between the tasks and the HTTP/2 stream.
const OUTGOING_QUEUE: usize = 32;

/// A tonic endpoint for the controller with the agent's keepalive settings.
pub fn endpoint(
    controller: &str,
    tls: ClientTlsConfig,
) -> Result<Endpoint, tonic::transport::Error> {
    Ok(
        Endpoint::from_shared(zeroci::tls::endpoint_url(controller))?
            .tls_config(tls)?
            .connect_timeout(ATTACH_TIMEOUT)
            // HTTP/2 pings find a dead connection even when neither side has anything to say.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true),
    )
}

/// Who the agent is and where it connects.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub controller: String,
    /// The CA and the current certificate (renewed while the job runs).
    pub credentials: Arc<Credentials>,
    pub job_id: u64,
    pub attempt: u32,
    pub hostname: String,
    pub give_up_after: Duration,
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The controller said the job is over for this agent (`Disconnect{done: true}`).
    Done(String),
    /// The agent closed the stream itself (its job's `Finished` was acknowledged).
    Closed,
    /// The controller refused this agent as stale or foreign.
    Fenced(String),
    /// No working stream for `give_up_after`.
    GaveUp,
}

/// How one stream ended.
enum StreamEnd {
    Done(String),
    Closed,
    /// The stream broke or the controller asked for a reconnect.
    Lost(String),
}

/// Why one stream could not be used.
enum AttachError {
    Fenced(String),
    Failed(String),
}

fn classify(status: Status) -> AttachError {
    match status.code() {
        Code::FailedPrecondition | Code::PermissionDenied | Code::Unauthenticated => {
            AttachError::Fenced(format!("{:?}: {}", status.code(), status.message()))
        }
        _ => AttachError::Failed(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// The connection to the controller; see the module docs.
pub struct Session {
    config: SessionConfig,
    outbox: Arc<Outbox>,
    control: Arc<JobControl>,
    backoff: Backoff,
    /// Cancelled when the agent wants to leave cleanly.
    close: CancellationToken,
    /// Set to the reason when the agent is shutting down; sent as `GoingAway` on every stream.
    going_away: watch::Receiver<Option<String>>,
    /// The controllers to dial ([`crate::endpoints`]) and which one answered last.
    endpoints: Vec<String>,
    preferred: usize,
}

impl Session {
    pub fn new(
        config: SessionConfig,
        outbox: Arc<Outbox>,
        control: Arc<JobControl>,
        close: CancellationToken,
        going_away: watch::Receiver<Option<String>>,
    ) -> Session {
        Session {
            outbox,
            control,
            backoff: Backoff::default(),
            close,
            going_away,
            endpoints: crate::endpoints::list(&config.controller),
            preferred: 0,
            config,
        }
    }

    /// Keeps a stream up until the job is over; see [`SessionEnd`].
    pub async fn run(mut self) -> SessionEnd {
        let job_id = self.config.job_id;
        let mut offline_since = Instant::now();
        loop {
            if self.close.is_cancelled() {
                return SessionEnd::Closed;
            }
            let attempt_started = Instant::now();
            match self.attach_once().await {
                Ok(StreamEnd::Done(reason)) => return SessionEnd::Done(reason),
                Ok(StreamEnd::Closed) => return SessionEnd::Closed,
                Ok(StreamEnd::Lost(why)) => {
                    tracing::warn!(job_id = %job_id, reason = %why, "connection lost; reconnecting");
                    offline_since = Instant::now();
                    // Only a stream that stayed up earns a fast retry; a controller that accepts and
                    // drops at once keeps getting longer pauses.
                    if attempt_started.elapsed() >= STABLE_STREAM {
                        self.backoff.reset();
                    }
                }
                Err(AttachError::Fenced(why)) => {
                    tracing::error!(job_id = %job_id, reason = %why, "controller refused this agent");
                    return SessionEnd::Fenced(why);
                }
                Err(AttachError::Failed(why)) => {
                    tracing::warn!(job_id = %job_id, reason = %why, "cannot attach; retrying");
                    // The controller that answered does not serve the job (yet): the next try starts
                    // with another one, where there are several.
                    self.preferred = self.preferred.wrapping_add(1) % self.endpoints.len().max(1);
                }
            }
            if offline_since.elapsed() >= self.config.give_up_after {
                return SessionEnd::GaveUp;
            }
            tokio::select! {
                _ = self.backoff.wait() => {}
                () = self.close.cancelled() => return SessionEnd::Closed,
            }
            if offline_since.elapsed() >= self.config.give_up_after {
                return SessionEnd::GaveUp;
            }
        }
    }

    async fn connect(&mut self) -> Result<Channel, AttachError> {
        let tls = self.config.credentials.tls();
        let (channel, index) =
            crate::endpoints::connect_any(&self.endpoints, self.preferred, &tls, ATTACH_TIMEOUT)
                .await
                .map_err(AttachError::Failed)?;
        self.preferred = index;
        Ok(channel)
    }

    /// One stream, from dialing to its end.
    async fn attach_once(&mut self) -> Result<StreamEnd, AttachError> {
        let channel = self.connect().await?;
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
        let hello = Hello {
            job_id: self.config.job_id,
            attempt: self.config.attempt,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            has_assignment: self.control.has_assignment(),
            last_seq: self.outbox.last_seq(),
            hostname: self.config.hostname.clone(),
        };
        send(&tx, agent_message::Kind::Hello(hello))
            .await
            .map_err(|_| AttachError::Failed("request stream closed before Hello".into()))?;
        let response = tokio::time::timeout(ATTACH_TIMEOUT, client.attach(ReceiverStream::new(rx)))
            .await
            .map_err(|_| AttachError::Failed("no answer to Attach".into()))?
            .map_err(classify)?;
        let mut inbound = response.into_inner();
        let first = tokio::time::timeout(ATTACH_TIMEOUT, inbound.message())
            .await
            .map_err(|_| AttachError::Failed("no Welcome".into()))?
            .map_err(classify)?;
        let welcome = match first.and_then(|m| m.kind) {
            Some(controller_message::Kind::Welcome(welcome)) => welcome,
            Some(other) => {
                return Err(AttachError::Failed(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
            None => return Err(AttachError::Failed("stream ended before Welcome".into())),
        };
        let heartbeat = self.on_welcome(welcome);
        self.serve(tx, inbound, heartbeat).await
    }

    /// Applies `Welcome`; returns the heartbeat interval.
    fn on_welcome(&self, welcome: Welcome) -> Duration {
        tracing::info!(job_id = %self.config.job_id, acked_seq = welcome.acked_seq,
            last_seq = self.outbox.last_seq(), "attached");
        self.outbox.reset_cursor(welcome.acked_seq);
        if let Some(assignment) = welcome.assignment
            && !self.control.assign(assignment)
        {
            tracing::debug!("ignoring a second assignment");
        }
        if let Some(steps) = welcome.run_steps
            && self.control.deliver_steps(steps)
        {
            tracing::info!("steps received with Welcome");
        }
        match welcome.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms),
        }
    }

    /// Runs an established stream until it ends.
    async fn serve(
        &self,
        tx: mpsc::Sender<AgentMessage>,
        mut inbound: Streaming<ControllerMessage>,
        heartbeat: Duration,
    ) -> Result<StreamEnd, AttachError> {
        let liveness = (heartbeat * 3).max(MIN_LIVENESS);
        let end = tokio::select! {
            end = send_events(&self.outbox, &tx) => Ok(end),
            end = send_heartbeats(&tx, heartbeat) => Ok(end),
            end = send_going_away(&tx, self.going_away.clone()) => Ok(end),
            end = self.read(&mut inbound, liveness) => end,
            () = self.close.cancelled() => Ok(StreamEnd::Closed),
        };
        // Dropping the last sender ends the request stream: a clean half-close.
        drop(tx);
        if matches!(end, Ok(StreamEnd::Closed)) {
            let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
            let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
        }
        end
    }

    /// Handles what the controller sends.
    async fn read(
        &self,
        inbound: &mut Streaming<ControllerMessage>,
        liveness: Duration,
    ) -> Result<StreamEnd, AttachError> {
        use controller_message::Kind;
        loop {
            let message = match tokio::time::timeout(liveness, inbound.message()).await {
                Err(_) => {
                    return Ok(StreamEnd::Lost(format!(
                        "controller silent for {liveness:?}"
                    )));
                }
                Ok(Err(status)) => {
                    return match classify(status) {
                        AttachError::Fenced(why) => Err(AttachError::Fenced(why)),
                        AttachError::Failed(why) => Ok(StreamEnd::Lost(why)),
                    };
                }
                Ok(Ok(None)) => return Ok(StreamEnd::Lost("controller ended the stream".into())),
                Ok(Ok(Some(message))) => message,
            };
            match message.kind {
                Some(Kind::Ack(ack)) => self.outbox.ack(ack.seq),
                Some(Kind::RunSteps(steps)) => {
                    if self.control.deliver_steps(steps) {
                        tracing::info!("steps received");
                    } else {
                        tracing::debug!("ignoring steps: already delivered");
                    }
                }
                Some(Kind::Cancel(cancel)) => {
                    let grace = match cancel.grace_secs {
                        0 => crate::control::DEFAULT_GRACE,
                        secs => Duration::from_secs(secs),
                    };
                    tracing::info!(reason = %cancel.reason, ?grace, "job cancelled by the controller");
                    self.control.cancel().cancel(cancel.reason, grace);
                }
                Some(Kind::Heartbeat(_)) => {}
                Some(Kind::OutputLimitReached(limit)) => {
                    tracing::info!(
                        limit_bytes = limit.limit_bytes,
                        "the job's output is full; further output stays on this machine"
                    );
                    self.outbox.stop_output();
                }
                Some(Kind::Disconnect(d)) if d.done => return Ok(StreamEnd::Done(d.reason)),
                Some(Kind::Disconnect(d)) => {
                    return Ok(StreamEnd::Lost(format!("controller: {}", d.reason)));
                }
                Some(Kind::Welcome(_)) => tracing::warn!("unexpected second Welcome; ignored"),
                None => tracing::debug!("empty controller message"),
            }
        }
    }
}

async fn send(tx: &mpsc::Sender<AgentMessage>, kind: agent_message::Kind) -> Result<(), ()> {
    tx.send(AgentMessage { kind: Some(kind) })
        .await
        .map_err(|_| ())
}

/// Sends every outbox event after the cursor, in order; returns when the stream is gone.
async fn send_events(outbox: &Outbox, tx: &mpsc::Sender<AgentMessage>) -> StreamEnd {
    loop {
        let event = outbox.next_unsent().await;
        if send(tx, agent_message::Kind::Event(event)).await.is_err() {
            return StreamEnd::Lost("request stream closed".into());
        }
    }
}

/// Sends a heartbeat every `every`, whatever the job is doing; returns when the stream is gone.
async fn send_heartbeats(tx: &mpsc::Sender<AgentMessage>, every: Duration) -> StreamEnd {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let beat = zeroci::pb::Heartbeat {
            at_unix_ms: zeroci::now_unix_ms(),
        };
        if send(tx, agent_message::Kind::Heartbeat(beat))
            .await
            .is_err()
        {
            return StreamEnd::Lost("request stream closed".into());
        }
    }
}

/// Sends `GoingAway` once the agent starts shutting down, then idles; returns only if the stream is gone.
async fn send_going_away(
    tx: &mpsc::Sender<AgentMessage>,
    mut reason: watch::Receiver<Option<String>>,
) -> StreamEnd {
    let reason = match reason.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone(),
        Err(_) => None,
    };
    // `None`: the agent dropped the sender, so it will never shut down through this path.
    let Some(reason) = reason else {
        return std::future::pending().await;
    };
    let going_away = zeroci::pb::GoingAway { reason };
    if send(tx, agent_message::Kind::GoingAway(going_away))
        .await
        .is_err()
    {
        return StreamEnd::Lost("request stream closed".into());
    }
    std::future::pending().await
}
