//! The queue as a Redis stream with one consumer group (`[queue] backend = "redis"`), shared by every
//! controller of a service.
//!
//! - `push`: `XADD <stream> * job <id>`.
//! - `pop`: first `XAUTOCLAIM` — an entry another controller took and has not acknowledged for a whole
//!   lease (it died, or is still waiting for a free worker) comes to this one — then `XREADGROUP … >`
//!   for a new entry, blocking a second at a time. Each controller reads as its own consumer (its
//!   `controller_id`), and takes only what a free worker asked for, so no controller holds more than
//!   its `workers` jobs.
//! - `ack`: `XACK` and `XDEL`, at the job's final status.
//!
//! Two controllers may end up with the same job (a claim of an entry whose taker was only slow): the
//! store decides, since a job runs only after a compare-and-set on its record from `queued`, and the
//! loser acknowledges an entry with nothing left to run. A running job whose controller died is taken
//! over through its lease in the store, not through the queue.
//!
//! Connections: one for quick commands and one for the blocking read (a blocked command holds its
//! connection), both reconnecting by themselves after Redis restarts; a command that fails meanwhile
//! is an error the engine retries.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio::sync::Mutex;

use super::{Delivery, JobQueue, QueueError};
use crate::jobs::JobId;

/// The consumer group every controller reads through.
const GROUP: &str = "zeroci-workers";
/// The stream's key unless `[queue] stream` says otherwise.
pub const DEFAULT_STREAM: &str = "zeroci:jobs";
/// How long a read blocks on the server before it looks for abandoned entries again.
const BLOCK: Duration = Duration::from_secs(1);
/// How long start-up waits for Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a command may go unanswered (a half-open connection must not hang a worker); a blocking
/// read gets [`BLOCK`] more.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RedisQueue {
    commands: ConnectionManager,
    /// The blocking reads, one at a time: each takes one entry for one worker.
    reader: Mutex<ConnectionManager>,
    stream: String,
    consumer: String,
    /// How long an entry stays with a controller that does not acknowledge it.
    reclaim_after: Duration,
    /// Where the next `XAUTOCLAIM` scan of pending entries starts (it looks at a few per call).
    reclaim_from: std::sync::Mutex<String>,
}

fn backend(error: redis::RedisError) -> QueueError {
    QueueError::Backend {
        backend: "redis",
        cause: Box::new(error),
    }
}

/// `redis://:password@host` → `redis://:***@host`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn delivery_of(entry: &StreamId) -> Result<Delivery, String> {
    let job = entry
        .map
        .get("job")
        .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
        .ok_or_else(|| format!("stream entry {} has no job id", entry.id))?;
    Ok(Delivery {
        job: job as JobId,
        receipt: entry.id.clone(),
    })
}

impl RedisQueue {
    /// Connects (an unreachable Redis is an error after [`CONNECT_TIMEOUT`]) and makes the consumer
    /// group if it is not there.
    pub async fn open(
        url: &str,
        stream: &str,
        consumer: &str,
        reclaim_after: Duration,
    ) -> Result<RedisQueue, QueueError> {
        let unreachable = |message: String| QueueError::Backend {
            backend: "redis",
            cause: format!("cannot reach Redis at {}: {message}", redact_url(url)).into(),
        };
        let client = redis::Client::open(url).map_err(|e| unreachable(e.to_string()))?;
        // Few, short retries per reconnection: a command that fails comes back as an error, and the
        // engine's own retries (with backoff) decide how long to keep trying.
        let config = |response: Duration| {
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(response))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500))
        };
        let connect = |response: Duration| {
            let client = client.clone();
            async move {
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    ConnectionManager::new_with_config(client, config(response)),
                )
                .await
                .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
                .map_err(|e| unreachable(e.to_string()))
            }
        };
        let commands = connect(RESPONSE_TIMEOUT).await?;
        let reader = connect(RESPONSE_TIMEOUT + BLOCK).await?;
        let queue = RedisQueue {
            commands,
            reader: Mutex::new(reader),
            stream: stream.to_string(),
            consumer: consumer.to_string(),
            reclaim_after,
            reclaim_from: std::sync::Mutex::new("0-0".into()),
        };
        queue
            .make_group()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(queue)
    }

    /// Makes the stream and its consumer group unless they exist (made by another controller, or
    /// before a restart).
    async fn make_group(&self) -> redis::RedisResult<()> {
        let mut conn = self.commands.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    /// A command's error; when Redis lost the group (a restart without its data, a flush), the group
    /// is made again so the queue works on. Jobs that were waiting in the lost stream are still
    /// `queued` in the store: each controller's next start queues them again.
    async fn failed(&self, error: redis::RedisError) -> QueueError {
        if error.code() == Some("NOGROUP") {
            tracing::warn!(
                "the Redis queue lost its consumer group (Redis lost its data?): making it again"
            );
            if let Err(e) = self.make_group().await {
                return backend(e);
            }
        }
        backend(error)
    }

    /// An entry left unacknowledged for longer than `reclaim_after` by any consumer, now this one's.
    async fn reclaim(&self) -> Result<Option<Delivery>, QueueError> {
        let mut conn = self.commands.clone();
        let from = self
            .reclaim_from
            .lock()
            .map_or_else(|_| "0-0".to_string(), |f| f.clone());
        let reply: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.reclaim_after.as_millis() as u64)
            .arg(&from)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
        {
            Ok(reply) => reply,
            Err(e) => return Err(self.failed(e).await),
        };
        // The scan goes on from there next time (it looks at a few pending entries per call) and
        // starts over once it has been through them all ("0-0").
        if let Ok(mut next) = self.reclaim_from.lock() {
            *next = reply.next_stream_id.clone();
        }
        self.first(&reply.claimed).await
    }

    /// The first well-formed entry; a malformed one is acknowledged and dropped (it can never run).
    async fn first(&self, entries: &[StreamId]) -> Result<Option<Delivery>, QueueError> {
        for entry in entries {
            match delivery_of(entry) {
                Ok(delivery) => return Ok(Some(delivery)),
                Err(problem) => {
                    tracing::warn!(%problem, "dropping a queue entry without a job");
                    self.ack(&Delivery {
                        job: 0,
                        receipt: entry.id.clone(),
                    })
                    .await?;
                }
            }
        }
        Ok(None)
    }

    /// A new entry for this consumer, waiting up to [`BLOCK`] for one.
    async fn read_new(&self) -> Result<Option<Delivery>, QueueError> {
        let mut reader = self.reader.lock().await;
        let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut *reader)
            .await;
        drop(reader);
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return Err(self.failed(e).await),
        };
        let entries: Vec<StreamId> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect();
        self.first(&entries).await
    }
}

#[async_trait]
impl JobQueue for RedisQueue {
    async fn push(&self, id: JobId) -> Result<(), QueueError> {
        let mut conn = self.commands.clone();
        redis::cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg("job")
            .arg(id)
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(backend)
    }

    async fn pop(&self) -> Result<Delivery, QueueError> {
        loop {
            if let Some(delivery) = self.reclaim().await? {
                return Ok(delivery);
            }
            if let Some(delivery) = self.read_new().await? {
                return Ok(delivery);
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let mut conn = self.commands.clone();
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&delivery.receipt)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(&delivery.receipt)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend)
    }

    async fn health(&self) -> Result<(), QueueError> {
        let mut conn = self.commands.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(backend)
    }

    async fn waiting(&self) -> usize {
        let mut conn = self.commands.clone();
        // Acknowledged entries are deleted: the stream holds the waiting and the pending ones.
        let counts: redis::RedisResult<(usize, redis::Value)> = redis::pipe()
            .cmd("XLEN")
            .arg(&self.stream)
            .cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .query_async(&mut conn)
            .await;
        match counts {
            Ok((len, pending)) => {
                let pending = match pending {
                    redis::Value::Array(items) => items
                        .first()
                        .and_then(|v| redis::from_redis_value::<usize>(v.clone()).ok())
                        .unwrap_or(0),
                    _ => 0,
                };
                len.saturating_sub(pending)
            }
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn queue(server: &zeroci_testkit::services::Service, consumer: &str) -> RedisQueue {
        RedisQueue::open(
            &server.url(),
            "test:jobs",
            consumer,
            Duration::from_millis(300),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_url_never_shows_its_password() {
        assert_eq!(
            redact_url("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_go_to_one_consumer_each_and_an_abandoned_one_to_another() {
        let server = zeroci_testkit::services::Service::redis();
        let a = queue(&server, "controller-a").await;
        let b = queue(&server, "controller-b").await;
        for id in 1..=4 {
            a.push(id).await.unwrap();
        }
        assert_eq!(a.waiting().await, 4);
        let first = a.pop().await.unwrap();
        let second = b.pop().await.unwrap();
        let third = b.pop().await.unwrap();
        assert_eq!((first.job, second.job, third.job), (1, 2, 3));
        assert_eq!(a.waiting().await, 1, "three pending, one waiting");
        a.ack(&first).await.unwrap();
        b.ack(&second).await.unwrap();
        // b "dies" holding job 3: a takes the waiting job 4, and job 3 once b's hold has lasted
        // longer than the lease (300 ms here).
        let last = a.pop().await.unwrap();
        assert_eq!(last.job, 4);
        let reclaimed = a.pop().await.unwrap();
        assert_eq!(reclaimed.job, 3);
        a.ack(&reclaimed).await.unwrap();
        a.ack(&last).await.unwrap();
        assert_eq!(a.waiting().await, 0);
        // b's late acknowledgement changes nothing.
        b.ack(&third).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_jobs_survive_a_redis_restart_and_the_queue_reconnects() {
        let mut server = zeroci_testkit::services::Service::redis();
        let q = queue(&server, "controller-a").await;
        for id in 1..=3 {
            q.push(id).await.unwrap();
        }
        server.restart();
        let mut popped = Vec::new();
        for _ in 0..3 {
            // Commands fail until the connection is back; a worker retries the same way.
            let delivery = zeroci_testkit::eventually("the queue after a restart", || async {
                q.pop().await.ok()
            })
            .await;
            popped.push(delivery.job);
            q.ack(&delivery).await.unwrap();
        }
        assert_eq!(popped, [1, 2, 3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_whose_redis_lost_everything_makes_its_group_again() {
        let server = zeroci_testkit::services::Service::redis();
        let q = queue(&server, "controller-a").await;
        q.push(1).await.unwrap();
        let mut conn = q.commands.clone();
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        // The first read meets NOGROUP and makes the group again; then the queue works.
        assert!(q.pop().await.is_err());
        q.push(2).await.unwrap();
        let delivery = q.pop().await.unwrap();
        assert_eq!(delivery.job, 2);
        q.ack(&delivery).await.unwrap();
    }
}
