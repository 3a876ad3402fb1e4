//! An RMB peer over the relay's WebSocket: sends signed request envelopes to twins (zos nodes) and
//! matches their replies by `uid`. One connection per client, opened when first needed and again
//! after it breaks; a call in flight when it breaks fails with [`RmbError::Disconnected`], and the
//! caller decides whether to ask again (every zos call the provisioner makes may be repeated).
//!
//! Payloads are encrypted for a destination twin that has an e2e key on chain, and replies are
//! checked against the sender twin's account key: the relay is trusted with nothing but delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use rand::RngCore as _;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as Frame;
use tracing::{debug, warn};

use super::envelope::{Message, Payload};
use super::{Address, Envelope, Request, SCHEMA_JSON, e2e, jwt, sign_envelope, verify_envelope};
use crate::chain::{Chain, Twin};
use crate::identity::Identity;

/// How long opening the WebSocket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Frames queued for the writer.
const OUTGOING: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RmbError {
    #[error("cannot reach the relay {relay}: {message}")]
    Connect { relay: String, message: String },
    #[error("the relay connection broke before twin {twin} answered")]
    Disconnected { twin: u32 },
    #[error("twin {twin} did not answer {command} within {after:?}")]
    Timeout {
        twin: u32,
        command: String,
        after: Duration,
    },
    /// The destination answered with an error (a zos refusal: "contract hash does not match ...").
    #[error("twin {twin} refused {command}: {message}")]
    Remote {
        twin: u32,
        command: String,
        code: u32,
        message: String,
    },
    #[error("twin {0} is not on the chain")]
    UnknownTwin(u32),
    #[error("the chain: {0}")]
    Chain(#[from] crate::chain::ChainError),
    /// A reply that fails its signature or does not decrypt: not from the twin it names.
    #[error("a reply from twin {twin} is not authentic: {message}")]
    Forged { twin: u32, message: String },
    #[error("cannot encrypt for twin {twin}: {message}")]
    Encrypt { twin: u32, message: String },
    /// What must not cross the relay in the clear (a deployment carries the agent's one-time token)
    /// goes only to twins with an e2e key.
    #[error("twin {0} has no e2e key on the chain: a private message cannot be sent to it")]
    NoE2eKey(u32),
}

impl RmbError {
    /// Whether asking again may get an answer (the destination's own refusals are final).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RmbError::Connect { .. } | RmbError::Disconnected { .. } | RmbError::Timeout { .. }
        )
    }
}

/// Who this peer is on the bus.
pub struct Peer {
    pub identity: Arc<Identity>,
    pub twin_id: u32,
    /// The relay's WebSocket URL (`wss://relay.grid.tf`).
    pub relay_url: String,
    /// This connection's session id; several processes of one twin each need their own.
    pub session: String,
}

/// Calls waiting for a reply, by uid, with the link they were sent on.
type Pending = HashMap<String, (u64, oneshot::Sender<Envelope>)>;

struct Link {
    outgoing: mpsc::Sender<Frame>,
    generation: u64,
}

pub struct RmbClient {
    peer: Peer,
    chain: Arc<dyn Chain>,
    pending: Arc<Mutex<Pending>>,
    link: tokio::sync::Mutex<Option<Link>>,
    twins: Mutex<HashMap<u32, Twin>>,
    generation: std::sync::atomic::AtomicU64,
}

/// Forgets a call's entry however the call ends (answered, timed out, dropped).
struct Forget<'a> {
    pending: &'a Mutex<Pending>,
    uid: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(self.uid);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RmbClient {
    pub fn new(peer: Peer, chain: Arc<dyn Chain>) -> RmbClient {
        RmbClient {
            peer,
            chain,
            pending: Arc::new(Mutex::new(HashMap::new())),
            link: tokio::sync::Mutex::new(None),
            twins: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The twin `id` as the chain has it (cached: keys and relays change rarely, and a stale entry
    /// only costs one failed check, after which it is read again).
    async fn twin(&self, id: u32) -> Result<Twin, RmbError> {
        if let Some(twin) = lock(&self.twins).get(&id) {
            return Ok(twin.clone());
        }
        let twin = self
            .chain
            .twin(id)
            .await?
            .ok_or(RmbError::UnknownTwin(id))?;
        lock(&self.twins).insert(id, twin.clone());
        Ok(twin)
    }

    /// Sends `command` with `payload` (JSON) to twin `twin` and returns the reply's payload; the
    /// payload is encrypted when the twin has an e2e key. The whole call, sending included, takes
    /// `within` at most.
    pub async fn call(
        &self,
        twin: u32,
        command: &str,
        payload: &[u8],
        within: Duration,
    ) -> Result<Vec<u8>, RmbError> {
        self.bounded(twin, command, payload, within, false).await
    }

    /// [`call`](RmbClient::call) for a payload that must not cross the relay in the clear: refused
    /// when the twin has no e2e key.
    pub async fn call_private(
        &self,
        twin: u32,
        command: &str,
        payload: &[u8],
        within: Duration,
    ) -> Result<Vec<u8>, RmbError> {
        self.bounded(twin, command, payload, within, true).await
    }

    async fn bounded(
        &self,
        twin: u32,
        command: &str,
        payload: &[u8],
        within: Duration,
        private: bool,
    ) -> Result<Vec<u8>, RmbError> {
        let result = match tokio::time::timeout(
            within,
            self.exchange(twin, command, payload, within, private),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(RmbError::Timeout {
                twin,
                command: command.to_string(),
                after: within,
            }),
        };
        match &result {
            // A link that lets a call time out may be dead without having closed: the next call
            // opens a new one.
            Err(RmbError::Timeout { .. }) => *self.link.lock().await = None,
            // A twin that changed its keys: read it from the chain again next time.
            Err(RmbError::Forged { .. } | RmbError::Encrypt { .. }) => {
                lock(&self.twins).remove(&twin);
            }
            _ => {}
        }
        result
    }

    async fn exchange(
        &self,
        twin: u32,
        command: &str,
        payload: &[u8],
        within: Duration,
        private: bool,
    ) -> Result<Vec<u8>, RmbError> {
        let destination = self.twin(twin).await?;
        if private && destination.e2e_key.is_none() {
            return Err(RmbError::NoE2eKey(twin));
        }
        let mut uid = [0u8; 16];
        rand::rng().fill_bytes(&mut uid);
        let uid = hex::encode(uid);
        let body = match &destination.e2e_key {
            Some(key) => Payload::Cipher(e2e::encrypt(&self.peer.identity, key, payload).map_err(
                |e| RmbError::Encrypt {
                    twin,
                    message: e.to_string(),
                },
            )?),
            None => Payload::Plain(payload.to_vec()),
        };
        let mut envelope = Envelope {
            uid: uid.clone(),
            tags: None,
            timestamp: now_secs(),
            expiration: within.as_secs().max(1),
            source: Some(Address {
                twin: self.peer.twin_id,
                connection: Some(self.peer.session.clone()),
            }),
            destination: Some(Address {
                twin,
                connection: None,
            }),
            message: Some(Message::Request(Request {
                command: command.to_string(),
            })),
            signature: None,
            schema: Some(SCHEMA_JSON.into()),
            federation: None,
            payload: Some(body),
            relays: Vec::new(),
        };
        sign_envelope(&mut envelope, &self.peer.identity);
        let (answer, answered) = oneshot::channel();
        let _forget = Forget {
            pending: &self.pending,
            uid: &uid,
        };
        self.send(&uid, answer, Frame::Binary(envelope.encode_to_vec().into()))
            .await?;
        let reply = answered
            .await
            .map_err(|_| RmbError::Disconnected { twin })?;
        self.open(reply, &destination, command)
    }

    /// Checks a reply and returns its payload, decrypted.
    fn open(&self, reply: Envelope, from: &Twin, command: &str) -> Result<Vec<u8>, RmbError> {
        let forged = |message: String| RmbError::Forged {
            twin: from.id,
            message,
        };
        if reply.source.as_ref().map(|s| s.twin) != Some(from.id) {
            return Err(forged("it names another sender".into()));
        }
        verify_envelope(&reply, &from.account).map_err(|e| forged(e.to_string()))?;
        match reply.message {
            Some(Message::Error(error)) => {
                return Err(RmbError::Remote {
                    twin: from.id,
                    command: command.to_string(),
                    code: error.code,
                    message: error.message,
                });
            }
            Some(Message::Response(_)) => {}
            other => return Err(forged(format!("not a response: {other:?}"))),
        }
        match reply.payload {
            None => Ok(Vec::new()),
            Some(Payload::Plain(data)) => Ok(data),
            Some(Payload::Cipher(data)) => {
                let key = from
                    .e2e_key
                    .as_deref()
                    .ok_or_else(|| forged("encrypted by a twin without an e2e key".into()))?;
                e2e::decrypt(&self.peer.identity, key, &data).map_err(|e| forged(e.to_string()))
            }
        }
    }

    /// Sends a frame on the current link, opening one when there is none; the reply to `uid` goes
    /// to `answer`.
    async fn send(
        &self,
        uid: &str,
        answer: oneshot::Sender<Envelope>,
        frame: Frame,
    ) -> Result<(), RmbError> {
        let mut link = self.link.lock().await;
        if link.as_ref().is_none_or(|l| l.outgoing.is_closed()) {
            *link = Some(self.connect().await?);
        }
        let Some(current) = link.as_ref() else {
            return Err(RmbError::Disconnected { twin: 0 });
        };
        lock(&self.pending).insert(uid.to_string(), (current.generation, answer));
        current
            .outgoing
            .send(frame)
            .await
            .map_err(|_| RmbError::Disconnected { twin: 0 })
    }

    async fn connect(&self) -> Result<Link, RmbError> {
        let token = jwt::build_relay_token(
            &self.peer.identity,
            self.peer.twin_id,
            Some(&self.peer.session),
            now_secs(),
            jwt::DEFAULT_TOKEN_TTL_SECS,
        );
        let relay = self.peer.relay_url.trim_end_matches('/').to_string();
        let url = format!("{relay}/?{token}");
        let failed = |message: String| RmbError::Connect {
            relay: relay.clone(),
            message,
        };
        let connector = tokio_tungstenite::Connector::Rustls(Arc::new(crate::tls::client_config()));
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector));
        let (socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| failed(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (mut write, mut read) = socket.split();
        let (outgoing, mut queued) = mpsc::channel::<Frame>(OUTGOING);
        // Dropped by the reader when the relay goes away: the writer then stops, so the next send
        // fails and opens a new link instead of writing into a dead one.
        let (reader_alive, mut reader_gone) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = queued.recv() => match frame {
                        Some(frame) => {
                            if write.send(frame).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = &mut reader_gone => break,
                }
            }
        });
        let pending = self.pending.clone();
        let pong = outgoing.clone();
        tokio::spawn(async move {
            while let Some(frame) = read.next().await {
                match frame {
                    Ok(Frame::Binary(bytes)) => match Envelope::decode(bytes.as_ref()) {
                        Ok(envelope) => {
                            let waiter = lock(&pending).remove(&envelope.uid);
                            match waiter {
                                Some((_, waiter)) => {
                                    let _ = waiter.send(envelope);
                                }
                                None => debug!(uid = %envelope.uid, "reply to no call in flight"),
                            }
                        }
                        Err(e) => warn!(error = %e, "undecodable frame from the relay"),
                    },
                    Ok(Frame::Ping(data)) => {
                        let _ = pong.send(Frame::Pong(data)).await;
                    }
                    Ok(Frame::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            debug!(generation, "relay connection ended");
            drop(reader_alive);
            // Calls waiting on this link fail now rather than at their timeout; a later link's stay.
            lock(&pending).retain(|_, (sent_on, _)| *sent_on != generation);
        });
        Ok(Link {
            outgoing,
            generation,
        })
    }
}
