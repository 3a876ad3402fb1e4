//! `PoolService`: the streams of hosts joined with `zeroci-agent join`. Each stream gets a task that
//! forwards the pool provisioner's requests to the host, delivers the host's answers, sends heartbeats,
//! drops a silent host and re-checks the join token on every heartbeat, so a token revoked on another
//! controller ends the stream here too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use zeroci::pb;
use zeroci::pb::pool_controller_message::Kind as Command;
use zeroci::pb::pool_member_message::Kind as Said;

use crate::api::rate_limit::{ENROLMENT, FailureLimiter};
use crate::error::ControllerError;
use crate::provisioner::pool::hosts::{Answer, HostCredentials, HostHello, PoolHosts};
use crate::provisioner::pool::membership::PoolMembership;

/// How often each side sends a heartbeat; three missed ones drop the stream.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a new stream may take to say `JoinHello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most machines one host may offer.
const MAX_CAPACITY: u32 = 1_000;
/// Most labels one host may offer.
const MAX_LABELS: usize = 64;
/// Longest a host may take to take a message off its stream, and the store to answer a token
/// check: past it the stream ends (a host reconnects; a heartbeat is not held up by either).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PoolApi {
    membership: Arc<PoolMembership>,
    /// Cancelled when the controller stops serving (after the shutdown drain).
    links_stop: CancellationToken,
    /// Joining is open to anyone who can connect: refused tokens are counted per address.
    token_failures: FailureLimiter,
}

impl PoolApi {
    pub fn new(membership: Arc<PoolMembership>, links_stop: CancellationToken) -> PoolApi {
        PoolApi {
            membership,
            links_stop,
            token_failures: FailureLimiter::new(ENROLMENT),
        }
    }
}

type Outbound = Result<pb::PoolControllerMessage, Status>;

#[tonic::async_trait]
impl pb::pool_service_server::PoolService for PoolApi {
    type JoinStream = ReceiverStream<Outbound>;

    async fn join(
        &self,
        request: Request<Streaming<pb::PoolMemberMessage>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        let peer = request.remote_addr().map(|a| a.ip());
        let token = self
            .token_failures
            .guard(peer, false, self.membership.authenticate(&presented))
            .await?;
        let Some(hosts) = self.membership.hosts().cloned() else {
            return Err(ControllerError::FailedPrecondition(
                "this controller does not use pool machines (set [provisioner] kind = \"pool\")"
                    .into(),
            )
            .into());
        };
        let address = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no JoinHello in time"))??;
        let Some(pb::PoolMemberMessage {
            kind: Some(Said::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be JoinHello",
            ));
        };
        let hello = check_hello(hello).map_err(Status::invalid_argument)?;
        let credentials = HostCredentials {
            token_id: token.id.clone(),
            token_name: token.name.clone(),
            address,
        };
        let name = hello.name.clone();
        let silent_after = 3 * HEARTBEAT.as_millis() as i64;
        let joined = hosts
            .join(hello, credentials, zeroci::now_unix_ms(), silent_after)
            .map_err(Status::already_exists)?;
        let (sender, receiver) = mpsc::channel(16);
        let welcome = pb::PoolControllerMessage {
            kind: Some(Command::Welcome(pb::JoinWelcome {
                heartbeat_secs: HEARTBEAT.as_secs() as u32,
            })),
        };
        if sender.send(Ok(welcome)).await.is_err() {
            hosts.leave(&name, joined.session);
            return Err(Status::cancelled("the host went away"));
        }
        let link = HostLink {
            hosts,
            membership: self.membership.clone(),
            name,
            token_id: token.id,
            session: joined.session,
            last_seen: joined.last_seen,
        };
        let stop = self.links_stop.clone();
        tokio::spawn(link.serve(inbound, joined.commands, joined.kicked, sender, stop));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// A `JoinHello` made safe to keep: a name that is a label, capacity within bounds, valid labels.
fn check_hello(hello: pb::JoinHello) -> Result<HostHello, String> {
    zeroci::labels::validate(&hello.name).map_err(|e| format!("host name: {e}"))?;
    if hello.capacity == 0 || hello.capacity > MAX_CAPACITY {
        return Err(format!(
            "capacity must be between 1 and {MAX_CAPACITY}, got {}",
            hello.capacity
        ));
    }
    if hello.labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    let mut labels = BTreeSet::new();
    for label in hello.labels {
        zeroci::labels::validate(&label)?;
        labels.insert(label);
    }
    if hello.host_id.is_empty() || hello.host_id.len() > 64 {
        return Err("host_id must have 1 to 64 characters".into());
    }
    let capacity = hello.capacity as usize;
    if hello.machines.len() > capacity {
        return Err(format!(
            "{} machines named, more than the capacity {capacity}",
            hello.machines.len()
        ));
    }
    for machine in &hello.machines {
        zeroci::labels::validate(machine).map_err(|e| format!("machine name: {e}"))?;
    }
    Ok(HostHello {
        name: hello.name,
        host_id: hello.host_id,
        labels,
        capacity: hello.capacity,
        version: hello.version.chars().take(64).collect(),
        isolated: hello.isolated,
        machines: hello
            .machines
            .into_iter()
            .take(MAX_CAPACITY as usize)
            .collect(),
    })
}

/// Queues a message for the host, bounded: false when it went away or does not read.
async fn send(outbound: &mpsc::Sender<Outbound>, message: Outbound) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, outbound.send(message)).await,
        Ok(Ok(()))
    )
}

struct HostLink {
    hosts: Arc<PoolHosts>,
    membership: Arc<PoolMembership>,
    name: String,
    token_id: String,
    session: u64,
    last_seen: Arc<std::sync::atomic::AtomicI64>,
}

impl HostLink {
    async fn serve(
        self,
        mut inbound: Streaming<pb::PoolMemberMessage>,
        mut commands: mpsc::Receiver<pb::PoolControllerMessage>,
        kicked: CancellationToken,
        outbound: mpsc::Sender<Outbound>,
        stop: CancellationToken,
    ) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                message = inbound.next() => match message {
                    Some(Ok(message)) => {
                        self.last_seen.store(zeroci::now_unix_ms(), Ordering::Relaxed);
                        self.heard(message);
                    }
                    Some(Err(status)) => break format!("stream failed: {}", status.message()),
                    None => break "the host closed its stream".to_string(),
                },
                Some(command) = commands.recv() => {
                    if !send(&outbound, Ok(command)).await {
                        break "the host does not read its stream".into();
                    }
                }
                _ = heartbeat.tick() => {
                    let silent_ms = zeroci::now_unix_ms() - self.last_seen.load(Ordering::Relaxed);
                    if silent_ms > 3 * HEARTBEAT.as_millis() as i64 {
                        break format!("silent for {} s", silent_ms / 1000);
                    }
                    match tokio::time::timeout(SEND_TIMEOUT, self.membership.still_valid(&self.token_id)).await {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => {
                            send(&outbound, Err(Status::unauthenticated("join token revoked"))).await;
                            break "its join token was revoked".into();
                        }
                        // The store is down or slow: keep the host, the next heartbeat asks again.
                        Ok(Err(error)) => warn!(host = %self.name, %error, "cannot check the join token"),
                        Err(_) => warn!(host = %self.name, "the join token check timed out"),
                    }
                    let beat = pb::PoolControllerMessage {
                        kind: Some(Command::Heartbeat(pb::Heartbeat { at_unix_ms: zeroci::now_unix_ms() })),
                    };
                    if !send(&outbound, Ok(beat)).await {
                        break "the host does not read its stream".into();
                    }
                }
                () = kicked.cancelled() => {
                    let still_valid = tokio::time::timeout(SEND_TIMEOUT, self.membership.still_valid(&self.token_id))
                        .await
                        .map_or(true, |valid| valid.unwrap_or(true));
                    let status = if still_valid {
                        Status::aborted("the same host joined again on another stream")
                    } else {
                        Status::unauthenticated("join token revoked")
                    };
                    send(&outbound, Err(status)).await;
                    break "dropped by the controller".into();
                }
                () = stop.cancelled() => break "the controller is stopping".into(),
            }
        };
        info!(host = %self.name, reason = %why, "pool host stream ended");
        self.hosts.leave(&self.name, self.session);
    }

    fn heard(&self, message: pb::PoolMemberMessage) {
        let (name, session) = (&self.name, self.session);
        match message.kind {
            Some(Said::Started(s)) => {
                let started = Answer::Started {
                    pid: s.pid,
                    processes_limited: s.processes_limited,
                };
                self.hosts.answer(name, session, s.request_id, started);
            }
            Some(Said::Failed(f)) => self.hosts.answer(
                name,
                session,
                f.request_id,
                Answer::Failed {
                    message: f.message.chars().take(2_000).collect(),
                    retryable: f.retryable,
                },
            ),
            Some(Said::Destroyed(d)) => self.hosts.answer(
                name,
                session,
                d.request_id,
                Answer::Destroyed {
                    error: d.error.chars().take(2_000).collect(),
                },
            ),
            Some(Said::Gone(gone)) => {
                info!(host = %name, machine = %gone.name, exit = %gone.exit, "pool machine removed by its host");
                self.hosts.release(name, &gone.name);
            }
            Some(Said::Heartbeat(_)) => {}
            Some(Said::Hello(_)) | None => {
                warn!(host = %name, "unexpected message on a joined stream");
            }
        }
    }
}
