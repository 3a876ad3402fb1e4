//! Failed attempts per peer address, as token buckets: an unauthenticated caller that keeps guessing
//! (enrolment with made-up bootstrap tokens) is refused before any work is done for it, while a
//! peer that does not fail is never slowed down.
//!
//! Memory is bounded: at most `max_peers` addresses are tracked. When the table is full, addresses
//! whose bucket has refilled are forgotten first; if none has, the newcomer shares one overflow
//! bucket with every other untracked address, so spraying addresses cannot grow the table or escape
//! the limit.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ControllerError;

/// How patient a limiter is.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures a peer may have in a burst.
    pub burst: f64,
    /// Failures forgiven per second.
    pub per_second: f64,
    /// Addresses tracked at once.
    pub max_peers: usize,
}

/// Enrolment: an agent enrolls once per machine with a token that is right, so a handful of failures
/// is already unusual.
pub const ENROLMENT: Limits = Limits {
    burst: 20.0,
    per_second: 2.0,
    max_peers: 4096,
};

/// Sign-in and API tokens: people mistype, scripts are misconfigured, guessing is not allowed.
pub const SIGN_IN: Limits = Limits {
    burst: 10.0,
    per_second: 0.5,
    max_peers: 4096,
};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed now.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, limits: &Limits, now: Instant) -> Bucket {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * limits.per_second;
        Bucket {
            tokens: (self.tokens + gained).min(limits.burst),
            at: now,
        }
    }
}

/// Failed attempts by peer address.
pub struct FailureLimiter {
    limits: Limits,
    state: Mutex<Table>,
}

struct Table {
    peers: HashMap<IpAddr, Bucket>,
    /// Shared by the addresses that found the table full.
    overflow: Bucket,
}

/// The unit an address is counted by: an IPv4 address, or an IPv6 /64 (one host's usual share, which
/// it can fill with fresh addresses at will).
fn counted_as(peer: Option<IpAddr>) -> Option<IpAddr> {
    peer.map(|ip| match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    })
}

impl FailureLimiter {
    pub fn new(limits: Limits) -> FailureLimiter {
        let now = Instant::now();
        FailureLimiter {
            limits,
            state: Mutex::new(Table {
                peers: HashMap::new(),
                overflow: Bucket {
                    tokens: limits.burst,
                    at: now,
                },
            }),
        }
    }

    /// `Err(wait)`: the peer used up its failures; it is refused for about `wait`.
    pub fn check(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let peer = counted_as(peer);
        let table = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let limits = self.limits;
        let bucket = match peer.and_then(|p| table.peers.get(&p).copied()) {
            Some(bucket) => bucket,
            // A newcomer with room in the table has failed nothing yet.
            None if peer.is_some() && table.peers.len() < limits.max_peers => return Ok(()),
            None => table.overflow,
        };
        let bucket = bucket.refilled(&limits, now);
        if bucket.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / limits.per_second,
            ))
        }
    }

    /// Counts a failed attempt of `peer` (`None`: an address the transport did not give).
    pub fn failed(&self, peer: Option<IpAddr>, now: Instant) {
        let peer = counted_as(peer);
        let mut table = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let limits = self.limits;
        let full = Bucket {
            tokens: limits.burst,
            at: now,
        };
        let tracked = match peer {
            Some(peer) if table.peers.contains_key(&peer) => Some(peer),
            Some(peer) => {
                if table.peers.len() >= limits.max_peers {
                    // Forget the peers that are back to a full bucket: they are not failing any more.
                    table
                        .peers
                        .retain(|_, b| b.refilled(&limits, now).tokens < limits.burst);
                }
                (table.peers.len() < limits.max_peers).then(|| {
                    table.peers.insert(peer, full);
                    peer
                })
            }
            None => None,
        };
        let bucket = match tracked {
            Some(peer) => table.peers.get_mut(&peer).expect("tracked above"),
            None => &mut table.overflow,
        };
        let mut refilled = bucket.refilled(&limits, now);
        refilled.tokens = (refilled.tokens - 1.0).max(0.0);
        *bucket = refilled;
    }

    /// Runs `attempt` for `peer` unless the peer used up its failures, which is refused at once; a
    /// refused credential (unauthenticated, permission denied) counts as a failure. A credential
    /// already `known` to be right is never held back: the limit slows guessing, it must not let a
    /// guesser sharing an address (a job on the controller's host, a proxy) lock others out.
    pub async fn guard<T>(
        &self,
        peer: Option<IpAddr>,
        known: bool,
        attempt: impl Future<Output = Result<T, ControllerError>>,
    ) -> Result<T, ControllerError> {
        if !known && let Err(wait) = self.check(peer, Instant::now()) {
            return Err(ControllerError::ResourceExhausted(format!(
                "too many failed attempts from this address; try again in {}s",
                wait.as_secs().max(1)
            )));
        }
        let outcome = attempt.await;
        if matches!(
            outcome,
            Err(ControllerError::Unauthenticated(_) | ControllerError::PermissionDenied(_))
        ) {
            self.failed(peer, Instant::now());
        }
        outcome
    }

    /// Addresses tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peers
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        burst: 3.0,
        per_second: 1.0,
        max_peers: 2,
    };

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_peer_is_refused_after_its_burst_of_failures_and_forgiven_over_time() {
        let limiter = FailureLimiter::new(SMALL);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(ip(1), t0).is_ok());
            limiter.failed(ip(1), t0);
        }
        let wait = limiter.check(ip(1), t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // Others are not affected.
        assert!(limiter.check(ip(2), t0).is_ok());
        // One failure is forgiven per second.
        assert!(
            limiter
                .check(ip(1), t0 + Duration::from_millis(999))
                .is_err()
        );
        assert!(limiter.check(ip(1), t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let limiter = FailureLimiter::new(SMALL);
        let t0 = Instant::now();
        let in_net = |last: u16| Some(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]));
        for last in 1..=3 {
            limiter.failed(in_net(last), t0);
        }
        assert!(
            limiter.check(in_net(999), t0).is_err(),
            "a fresh address of the same /64"
        );
        let elsewhere = Some(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]));
        assert!(limiter.check(elsewhere, t0).is_ok());
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn a_peer_that_never_fails_is_never_tracked_nor_slowed() {
        let limiter = FailureLimiter::new(SMALL);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.check(ip(1), t0).is_ok());
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn spraying_addresses_cannot_grow_the_table_nor_escape_the_limit() {
        let limiter = FailureLimiter::new(SMALL);
        let t0 = Instant::now();
        for last in 1..=100 {
            limiter.failed(ip(last), t0);
        }
        assert_eq!(limiter.tracked(), 2, "bounded by max_peers");
        // Every untracked address shares the overflow bucket, which is empty by now.
        assert!(limiter.check(None, t0).is_err());
        assert!(
            limiter.check(ip(150), t0).is_err(),
            "a fresh address is no way out"
        );
        // Once the tracked peers are forgiven, new ones take their place.
        let later = t0 + Duration::from_secs(10);
        limiter.failed(ip(200), later);
        assert!(limiter.check(ip(200), later).is_ok());
    }
}
