//! `zeroci-agent join`: a long-lived host agent that joins a controller's pool with a join token and
//! makes a fresh machine per job on the controller's request ([`machines`]). It dials out, holds one
//! `PoolService.Join` stream, answers every request on it, and dials again after the stream ends (a
//! controller restart), naming the machines it still runs. A refused token ends it: nothing will change
//! by trying again.

pub mod machines;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{info, warn};
use zeroci::backoff::Backoff;
use zeroci::bootstrap::Bootstrap;
use zeroci::pb;
use zeroci::pb::pool_controller_message::Kind as Command;
use zeroci::pb::pool_member_message::Kind as Say;
use zeroci::pb::pool_service_client::PoolServiceClient;

use self::machines::{Gone, Machines, StartFailure};

/// How long one controller address may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval until the controller's `JoinWelcome` says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// What `zeroci-agent join` was told.
#[derive(Clone)]
pub struct JoinSettings {
    /// Controller addresses (`host:port` or URLs).
    pub controllers: Vec<String>,
    pub token: String,
    /// The controller's CA (PEM), pinned.
    pub ca_pem: String,
    pub name: String,
    /// Random and kept in the work directory: the controller tells this host rejoining from another
    /// one that uses the same name.
    pub host_id: String,
    pub labels: Vec<String>,
    pub capacity: u32,
}

impl std::fmt::Debug for JoinSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in a log line.
        f.debug_struct("JoinSettings")
            .field("controllers", &self.controllers)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// This host's id, kept in `<work_dir>/host-id` (made on the first start).
pub fn host_id(work_dir: &std::path::Path) -> std::io::Result<String> {
    let path = work_dir.join("host-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) => write_host_id(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_host_id(&path),
        Err(e) => Err(e),
    }
}

fn write_host_id(path: &std::path::Path) -> std::io::Result<String> {
    use rand::RngCore as _;
    let mut id = [0u8; 12];
    rand::rng().fill_bytes(&mut id);
    let id = zeroci::encoding::hex(&id);
    std::fs::write(path, &id)?;
    Ok(id)
}

/// Why the host agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the controller refused to let this host join: {0}")]
    Refused(String),
    #[error("{0}")]
    Setup(String),
}

/// How one stream ended.
enum StreamEnd {
    /// Stopping on purpose (SIGTERM).
    Shutdown,
    /// Try again: the controller went away or the link broke.
    Lost(String),
    /// Trying again cannot help.
    Refused(String),
}

/// Joins and serves until `shutdown` fires or the controller refuses the token; machines are removed
/// before it returns.
pub async fn join(
    settings: JoinSettings,
    machines: Arc<Machines>,
    mut gone: mpsc::UnboundedReceiver<Gone>,
    shutdown: CancellationToken,
) -> Result<(), JoinError> {
    let tls = zeroci::tls::client_config(&settings.ca_pem, None);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut first = 0;
    let result = loop {
        let connected = tokio::select! {
            connected = crate::endpoints::connect_any(&settings.controllers, first, &tls, CONNECT_TIMEOUT) => connected,
            () = shutdown.cancelled() => break Ok(()),
        };
        let end = match connected {
            Ok((channel, index)) => {
                first = index;
                let mut link = Link {
                    settings: &settings,
                    machines: &machines,
                    gone: &mut gone,
                    backoff: &mut backoff,
                };
                link.serve(channel, &shutdown).await
            }
            Err(e) => StreamEnd::Lost(e),
        };
        match end {
            StreamEnd::Shutdown => break Ok(()),
            StreamEnd::Refused(why) => break Err(JoinError::Refused(why)),
            StreamEnd::Lost(why) => {
                let delay = backoff.next_delay();
                warn!(reason = %why, retry_in = ?delay, "not joined; trying again");
                tokio::select! {
                    () = backoff.sleep(delay) => {}
                    () = shutdown.cancelled() => break Ok(()),
                }
            }
        }
    };
    machines.destroy_all().await;
    result
}

struct Link<'a> {
    settings: &'a JoinSettings,
    machines: &'a Arc<Machines>,
    gone: &'a mut mpsc::UnboundedReceiver<Gone>,
    backoff: &'a mut Backoff,
}

impl Link<'_> {
    async fn serve(
        &mut self,
        channel: tonic::transport::Channel,
        shutdown: &CancellationToken,
    ) -> StreamEnd {
        let (out, out_rx) = mpsc::channel::<pb::PoolMemberMessage>(64);
        let hello = pb::PoolMemberMessage {
            kind: Some(Say::Hello(pb::JoinHello {
                name: self.settings.name.clone(),
                host_id: self.settings.host_id.clone(),
                labels: self.settings.labels.clone(),
                capacity: self.settings.capacity,
                version: env!("CARGO_PKG_VERSION").into(),
                machines: self.machines.names(),
                isolated: self.machines.isolated(),
            })),
        };
        if out.send(hello).await.is_err() {
            return StreamEnd::Lost("cannot queue the hello".into());
        }
        let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
        let bearer = format!("Bearer {}", self.settings.token);
        match bearer.parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => {
                return StreamEnd::Refused(
                    "the join token holds characters a header cannot".into(),
                );
            }
        }
        let mut client = PoolServiceClient::new(channel);
        let mut inbound = match client.join(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return ended(status),
        };
        let mut heartbeat_every = DEFAULT_HEARTBEAT;
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        last_heard = tokio::time::Instant::now();
                        match message.kind {
                            Some(Command::Welcome(welcome)) => {
                                self.backoff.reset();
                                if welcome.heartbeat_secs > 0 {
                                    heartbeat_every = Duration::from_secs(u64::from(welcome.heartbeat_secs));
                                    heartbeat = tokio::time::interval(heartbeat_every);
                                }
                                info!(controller = ?self.settings.controllers, name = %self.settings.name, "joined the pool");
                            }
                            Some(Command::Start(start)) => self.start(start, out.clone()),
                            Some(Command::Destroy(destroy)) => self.destroy(destroy, out.clone()),
                            Some(Command::Heartbeat(_)) | None => {}
                        }
                    }
                    Ok(None) => return StreamEnd::Lost("the controller closed the stream".into()),
                    Err(status) => return ended(status),
                },
                Some((name, exit)) = self.gone.recv() => {
                    let said = pb::PoolMemberMessage { kind: Some(Say::Gone(pb::MachineGone { name, exit })) };
                    if out.send(said).await.is_err() {
                        return StreamEnd::Lost("the stream closed".into());
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > 3 * heartbeat_every {
                        return StreamEnd::Lost(format!("heard nothing for {:?}", last_heard.elapsed()));
                    }
                    let beat = pb::PoolMemberMessage {
                        kind: Some(Say::Heartbeat(pb::Heartbeat { at_unix_ms: zeroci::now_unix_ms() })),
                    };
                    if out.send(beat).await.is_err() {
                        return StreamEnd::Lost("the stream closed".into());
                    }
                }
                () = shutdown.cancelled() => return StreamEnd::Shutdown,
            }
        }
    }

    /// Starts a machine (on a task of its own: a slow start must not hold up heartbeats) and answers.
    fn start(&self, start: pb::StartMachine, out: mpsc::Sender<pb::PoolMemberMessage>) {
        let machines = self.machines.clone();
        tokio::spawn(async move {
            let request_id = start.request_id;
            let started = match serde_json::from_slice::<Bootstrap>(&start.bootstrap_json) {
                Ok(bootstrap) => machines.start(
                    &start.name,
                    bootstrap,
                    &start.repo_url,
                    start.give_up_after_secs,
                    start.max_processes,
                ),
                Err(e) => Err(StartFailure {
                    message: format!("unreadable bootstrap: {e}"),
                    retryable: false,
                }),
            };
            let kind = match started {
                Ok((pid, processes_limited)) => Say::Started(pb::MachineStarted {
                    request_id,
                    pid,
                    processes_limited,
                }),
                Err(failure) => {
                    warn!(machine = %start.name, error = %failure.message, "cannot start machine");
                    Say::Failed(pb::MachineFailed {
                        request_id,
                        message: failure.message,
                        retryable: failure.retryable,
                    })
                }
            };
            // A lost stream loses the answer; the controller times the request out and destroys.
            let _ = out.send(pb::PoolMemberMessage { kind: Some(kind) }).await;
        });
    }

    fn destroy(&self, destroy: pb::DestroyMachine, out: mpsc::Sender<pb::PoolMemberMessage>) {
        let machines = self.machines.clone();
        tokio::spawn(async move {
            let error = machines
                .destroy(&destroy.name)
                .await
                .err()
                .unwrap_or_default();
            info!(machine = %destroy.name, %error, "machine destroyed on request");
            let said = pb::PoolMemberMessage {
                kind: Some(Say::Destroyed(pb::MachineDestroyed {
                    request_id: destroy.request_id,
                    error,
                })),
            };
            let _ = out.send(said).await;
        });
    }
}

/// What a status that ended the stream means for the next try.
fn ended(status: tonic::Status) -> StreamEnd {
    match status.code() {
        Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::PermissionDenied => StreamEnd::Refused(status.message().to_string()),
        _ => StreamEnd::Lost(format!("{}: {}", status.code(), status.message())),
    }
}
