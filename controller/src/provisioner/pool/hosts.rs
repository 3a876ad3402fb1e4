//! The pool hosts joined to this controller now, and the requests in flight to each. The gRPC stream
//! of a host (`api::pool_service`) registers it here and delivers its answers; the pool provisioner
//! picks a host, sends it requests and waits for the answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroci::pb;

/// What a host said when it joined.
#[derive(Debug, Clone)]
pub struct HostHello {
    pub name: String,
    /// Random, kept by the host across restarts: tells the same host rejoining from another one
    /// that uses the same name.
    pub host_id: String,
    pub labels: BTreeSet<String>,
    pub capacity: u32,
    pub version: String,
    pub isolated: bool,
    /// Machines it still runs (after a reconnect).
    pub machines: Vec<String>,
}

/// Who a stream belongs to.
#[derive(Debug, Clone)]
pub struct HostCredentials {
    pub token_id: String,
    pub token_name: String,
    pub address: String,
}

/// A host's answer to one request.
#[derive(Debug)]
pub enum Answer {
    Started { pid: u32, processes_limited: bool },
    Failed { message: String, retryable: bool },
    Destroyed { error: String },
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("pool host {0} is not joined to this controller")]
    NotJoined(String),
    #[error("pool host {0} left before it answered")]
    Left(String),
    #[error("pool host {host} did not answer within {after:?}")]
    Timeout { host: String, after: Duration },
}

/// The registration of one stream, handed to the stream's task.
pub struct Joined {
    /// Tells this stream apart from a later one of the same host name.
    pub session: u64,
    /// What to send the host.
    pub commands: mpsc::Receiver<pb::PoolControllerMessage>,
    /// Fired when the stream must end (its token was revoked, or the host joined again).
    pub kicked: CancellationToken,
    /// Updated by the stream on every message heard.
    pub last_seen: Arc<AtomicI64>,
}

struct Host {
    session: u64,
    hello: HostHello,
    credentials: HostCredentials,
    connected_at_ms: i64,
    last_seen: Arc<AtomicI64>,
    /// Machines this host runs for jobs (placed here, or reported by the host when it joined).
    machines: BTreeSet<String>,
    commands: mpsc::Sender<pb::PoolControllerMessage>,
    pending: HashMap<u64, oneshot::Sender<Answer>>,
    kicked: CancellationToken,
}

#[derive(Default)]
pub struct PoolHosts {
    hosts: Mutex<BTreeMap<String, Host>>,
    /// Woken whenever a host joins or leaves or a machine place comes free.
    changed: Notify,
    next_id: AtomicU64,
}

/// Commands queued per host; a host that reads none for this long is dropped by its stream anyway.
const COMMAND_QUEUE: usize = 64;

impl PoolHosts {
    fn hosts(&self) -> MutexGuard<'_, BTreeMap<String, Host>> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent maps.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a host. A registered host of the same name is replaced (its stream kicked) when it
    /// is the same host (the same id: it reconnects after a network cut, before its old stream timed
    /// out) or has gone silent; another live host of that name keeps it, and this one is refused.
    pub fn join(
        &self,
        hello: HostHello,
        credentials: HostCredentials,
        now_ms: i64,
        silent_after_ms: i64,
    ) -> Result<Joined, String> {
        {
            let hosts = self.hosts();
            if let Some(old) = hosts.get(&hello.name)
                && old.hello.host_id != hello.host_id
                && now_ms - old.last_seen.load(Ordering::Relaxed) < silent_after_ms
            {
                return Err(format!(
                    "another host named {:?} is joined (from {}); give this one another --name",
                    hello.name, old.credentials.address
                ));
            }
        }
        let session = self.next_id();
        let (sender, commands) = mpsc::channel(COMMAND_QUEUE);
        let kicked = CancellationToken::new();
        let last_seen = Arc::new(AtomicI64::new(now_ms));
        let host = Host {
            session,
            machines: hello.machines.iter().cloned().collect(),
            hello,
            credentials,
            connected_at_ms: now_ms,
            last_seen: last_seen.clone(),
            commands: sender,
            pending: HashMap::new(),
            kicked: kicked.clone(),
        };
        info!(host = %host.hello.name, labels = ?host.hello.labels, capacity = host.hello.capacity, machines = host.machines.len(), "pool host joined");
        if let Some(old) = self.hosts().insert(host.hello.name.clone(), host) {
            old.kicked.cancel();
        }
        self.changed.notify_waiters();
        Ok(Joined {
            session,
            commands,
            kicked,
            last_seen,
        })
    }

    /// Unregisters the host of stream `session` (a later stream of the same name stays). Requests
    /// waiting for it fail at once.
    pub fn leave(&self, name: &str, session: u64) {
        let mut hosts = self.hosts();
        if hosts.get(name).is_some_and(|h| h.session == session) {
            hosts.remove(name);
            info!(host = %name, "pool host left");
        }
        drop(hosts);
        self.changed.notify_waiters();
    }

    /// Delivers the host's answer to request `id`.
    pub fn answer(&self, name: &str, session: u64, id: u64, answer: Answer) {
        let waiter = self
            .hosts()
            .get_mut(name)
            .filter(|h| h.session == session)
            .and_then(|h| h.pending.remove(&id));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(answer);
            }
            None => warn!(host = %name, request = id, "answer to no request in flight"),
        }
    }

    /// Ends every stream that joined with token `token_id`.
    pub fn kick_token(&self, token_id: &str) {
        for host in self.hosts().values() {
            if host.credentials.token_id == token_id {
                host.kicked.cancel();
            }
        }
    }

    /// How many hosts joined with token `token_id`.
    pub fn joined_with(&self, token_id: &str) -> usize {
        self.hosts()
            .values()
            .filter(|h| h.credentials.token_id == token_id)
            .count()
    }

    /// Takes a place for machine `machine` on the least busy host that offers every label in
    /// `labels` (and makes sandboxes when `untrusted`); its name, or why there is none, in words.
    pub fn place(
        &self,
        machine: &str,
        labels: &[String],
        untrusted: bool,
    ) -> Result<String, String> {
        // No shortcut for a machine name a host already holds: names are guessable, and a host that
        // claimed one must not get a job its labels or isolation do not fit. (A retried start comes
        // after the failed machine was destroyed and its place given back.)
        let mut hosts = self.hosts();
        let fitting: Vec<&mut Host> = hosts
            .values_mut()
            .filter(|h| labels.iter().all(|l| h.hello.labels.contains(l)))
            .filter(|h| h.hello.isolated || !untrusted)
            .collect();
        let wanted = if labels.is_empty() {
            String::new()
        } else {
            format!(" with labels {}", labels.join(","))
        };
        if fitting.is_empty() {
            return Err(format!(
                "no pool host{wanted}{} is joined to this controller",
                if untrusted {
                    " that makes sandboxes (needed for a fork's pull request)"
                } else {
                    ""
                }
            ));
        }
        let total = fitting.len();
        let Some(host) = fitting
            .into_iter()
            .filter(|h| h.machines.len() < h.hello.capacity as usize)
            .min_by_key(|h| (h.machines.len() * 1000) / h.hello.capacity.max(1) as usize)
        else {
            return Err(format!(
                "all {total} pool host(s){wanted} are running as many machines as they offer"
            ));
        };
        host.machines.insert(machine.to_string());
        Ok(host.hello.name.clone())
    }

    /// Gives back the place of `machine` on `host`.
    pub fn release(&self, host: &str, machine: &str) {
        if let Some(h) = self.hosts().get_mut(host) {
            h.machines.remove(machine);
        }
        self.changed.notify_waiters();
    }

    /// Sends a request made by `make` (given its id) to `host` and waits for the answer.
    pub async fn request(
        &self,
        host: &str,
        make: impl FnOnce(u64) -> pb::pool_controller_message::Kind,
        within: Duration,
    ) -> Result<Answer, RequestError> {
        let id = self.next_id();
        let (sender, receiver) = oneshot::channel();
        let commands = {
            let mut hosts = self.hosts();
            let h = hosts
                .get_mut(host)
                .ok_or_else(|| RequestError::NotJoined(host.to_string()))?;
            h.pending.insert(id, sender);
            h.commands.clone()
        };
        // Forgets the request however this call ends (answered, timed out, or dropped by a cancel).
        let _forget = ForgetRequest {
            hosts: self,
            host,
            id,
        };
        let message = pb::PoolControllerMessage {
            kind: Some(make(id)),
        };
        let left = || RequestError::Left(host.to_string());
        let answer = async {
            commands.send(message).await.map_err(|_| left())?;
            receiver.await.map_err(|_| left())
        };
        let result = tokio::time::timeout(within, answer).await;
        result.map_err(|_| RequestError::Timeout {
            host: host.to_string(),
            after: within,
        })?
    }

    /// Waits until `host` is joined, for at most `within`; whether it is.
    pub async fn wait_for(&self, host: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if self.hosts().contains_key(host) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.hosts().contains_key(host);
            }
        }
    }

    /// The hosts for `zeroci agents`, by name.
    pub fn list(&self) -> Vec<pb::PoolHostInfo> {
        self.hosts()
            .values()
            .map(|h| pb::PoolHostInfo {
                name: h.hello.name.clone(),
                labels: h.hello.labels.iter().cloned().collect(),
                capacity: h.hello.capacity,
                machines: h.machines.iter().cloned().collect(),
                address: h.credentials.address.clone(),
                version: h.hello.version.clone(),
                token_name: h.credentials.token_name.clone(),
                connected_at_unix_ms: h.connected_at_ms,
                last_seen_unix_ms: h.last_seen.load(Ordering::Relaxed),
                isolated: h.hello.isolated,
            })
            .collect()
    }
}

struct ForgetRequest<'a> {
    hosts: &'a PoolHosts,
    host: &'a str,
    id: u64,
}

impl Drop for ForgetRequest<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.hosts.hosts().get_mut(self.host) {
            h.pending.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, labels: &[&str], capacity: u32) -> HostHello {
        HostHello {
            name: name.into(),
            host_id: format!("id-{name}"),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            capacity,
            version: "test".into(),
            isolated: true,
            machines: Vec::new(),
        }
    }

    fn credentials() -> HostCredentials {
        HostCredentials {
            token_id: "t1".into(),
            token_name: "rack".into(),
            address: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn machines_go_to_the_least_busy_host_with_the_labels_until_all_are_full() {
        let hosts = PoolHosts::default();
        let _a = hosts
            .join(hello("a", &["linux"], 2), credentials(), 0, 1)
            .unwrap();
        let _b = hosts
            .join(hello("b", &["linux", "gpu"], 1), credentials(), 0, 1)
            .unwrap();
        assert_eq!(hosts.place("m1", &["gpu".into()], false).unwrap(), "b");
        let refused = hosts.place("m2", &["gpu".into()], false).unwrap_err();
        assert!(
            refused.contains("all 1 pool host(s) with labels gpu"),
            "{refused}"
        );
        // A name a host already holds gets no shortcut past the checks.
        assert!(hosts.place("m1", &["gpu".into()], false).is_err());
        assert_eq!(hosts.place("m3", &[], false).unwrap(), "a");
        assert_eq!(hosts.place("m4", &[], false).unwrap(), "a");
        assert!(hosts.place("m5", &[], false).is_err());
        hosts.release("b", "m1");
        assert_eq!(hosts.place("m5", &[], false).unwrap(), "b");
        let none = hosts.place("m6", &["arm64".into()], false).unwrap_err();
        assert!(none.contains("no pool host with labels arm64"), "{none}");
    }

    #[test]
    fn a_fork_never_goes_to_a_host_without_sandboxes() {
        let hosts = PoolHosts::default();
        let mut plain = hello("plain", &[], 4);
        plain.isolated = false;
        let _p = hosts.join(plain, credentials(), 0, 1).unwrap();
        let refused = hosts.place("m1", &[], true).unwrap_err();
        assert!(refused.contains("makes sandboxes"), "{refused}");
        assert_eq!(hosts.place("m1", &[], false).unwrap(), "plain");
    }

    #[tokio::test]
    async fn a_request_gets_its_answer_and_fails_when_the_host_leaves() {
        let hosts = Arc::new(PoolHosts::default());
        let mut joined = hosts.join(hello("a", &[], 1), credentials(), 0, 1).unwrap();
        let answering = {
            let hosts = hosts.clone();
            tokio::spawn(async move {
                let command = joined.commands.recv().await.unwrap();
                let Some(pb::pool_controller_message::Kind::Destroy(d)) = command.kind else {
                    panic!("{command:?}")
                };
                hosts.answer(
                    "a",
                    joined.session,
                    d.request_id,
                    Answer::Destroyed {
                        error: String::new(),
                    },
                );
                joined
            })
        };
        let make = |id| {
            pb::pool_controller_message::Kind::Destroy(pb::DestroyMachine {
                request_id: id,
                name: "m".into(),
            })
        };
        let answer = hosts
            .request("a", make, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(answer, Answer::Destroyed { error } if error.is_empty()));
        let joined = answering.await.unwrap();
        hosts.leave("a", joined.session);
        assert!(matches!(
            hosts.request("a", make, Duration::from_secs(5)).await,
            Err(RequestError::NotJoined(_))
        ));
        assert!(!hosts.wait_for("a", Duration::from_millis(20)).await);
    }

    #[test]
    fn joining_again_replaces_the_old_stream_and_revoking_kicks() {
        let hosts = PoolHosts::default();
        let first = hosts
            .join(hello("a", &[], 1), credentials(), 0, 1000)
            .unwrap();
        let mut other = hello("a", &[], 1);
        other.host_id = "someone else".into();
        let Err(refused) = hosts.join(other.clone(), credentials(), 10, 1000) else {
            panic!("a live host keeps its name");
        };
        assert!(refused.contains("another host named \"a\""), "{refused}");
        let second = hosts
            .join(hello("a", &[], 1), credentials(), 10, 1000)
            .unwrap();
        assert!(first.kicked.is_cancelled());
        hosts.leave("a", first.session);
        assert_eq!(
            hosts.list().len(),
            1,
            "the old stream's leave leaves the new one"
        );
        assert_eq!(hosts.joined_with("t1"), 1);
        hosts.kick_token("t1");
        assert!(second.kicked.is_cancelled());
        // Another host may take the name once the holder has gone silent.
        assert!(hosts.join(other, credentials(), 5000, 1000).is_ok());
    }
}
