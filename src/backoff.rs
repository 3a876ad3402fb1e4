//! Capped exponential backoff with full jitter: the one retry pacing of every ZeroCI binary (agent
//! enrolment and reconnects, the CLI following a log across a controller restart, the controller's
//! GitHub calls and machine retries).
//!
//! The delay before retry `n` is uniform in `[0, min(cap, base * 2^n)]` ("full jitter"), so many
//! clients that lost the same server at the same moment do not all come back at the same moment. The
//! sleep is injectable so tests can observe the delays without waiting for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a [`Backoff`] waits; the default is `tokio::time::sleep`.
pub type SleepFn = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// First ceiling of the default backoff (an agent reconnecting).
pub const DEFAULT_BASE: Duration = Duration::from_millis(50);
/// Largest delay of the default backoff.
pub const DEFAULT_CAP: Duration = Duration::from_secs(2);

/// Retry pacing; see the module docs. Not shared: each retry loop owns one.
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    rng: StdRng,
    sleep: SleepFn,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("base", &self.base)
            .field("cap", &self.cap)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_BASE, DEFAULT_CAP)
    }
}

impl Backoff {
    /// A backoff that sleeps with tokio's timer.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff::with_sleep(base, cap, Arc::new(|d| Box::pin(tokio::time::sleep(d))))
    }

    /// A backoff that waits with `sleep` (tests record the delays instead of waiting).
    pub fn with_sleep(base: Duration, cap: Duration, sleep: SleepFn) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
            rng: StdRng::from_os_rng(),
            sleep,
        }
    }

    /// The largest delay the next [`next_delay`](Backoff::next_delay) may return.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Picks the next delay and counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    /// Waits for the next delay and returns it.
    pub async fn wait(&mut self) -> Duration {
        let delay = self.next_delay();
        self.sleep(delay).await;
        delay
    }

    /// Waits for `delay` (one picked with [`next_delay`](Backoff::next_delay)) with the injected sleep.
    pub async fn sleep(&self, delay: Duration) {
        (self.sleep)(delay).await
    }

    /// Back to the first, shortest ceiling (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures counted since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The largest delay this backoff ever picks.
    pub fn cap(&self) -> Duration {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let slept = Arc::new(Mutex::new(Vec::new()));
        let record = slept.clone();
        let sleep: SleepFn = Arc::new(move |d| {
            record.lock().unwrap().push(d);
            Box::pin(async {})
        });
        let base = Duration::from_millis(50);
        let cap = Duration::from_secs(2);
        let mut backoff = Backoff::with_sleep(base, cap, sleep);

        let mut ceilings = Vec::new();
        for _ in 0..40 {
            ceilings.push(backoff.ceiling());
            backoff.wait().await;
        }
        let slept = slept.lock().unwrap().clone();
        assert_eq!(slept.len(), 40);
        assert_eq!(ceilings[0], base);
        assert_eq!(ceilings[1], base * 2);
        assert_eq!(ceilings[5], Duration::from_millis(1600));
        assert_eq!(ceilings[6], cap);
        assert_eq!(ceilings[39], cap);
        for (delay, ceiling) in slept.iter().zip(&ceilings) {
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
        }
        // Full jitter: the capped delays are spread out, not all equal to the cap.
        let capped = &slept[6..];
        assert!(
            capped.iter().any(|d| *d < cap / 2),
            "no jitter in {capped:?}"
        );

        backoff.reset();
        assert_eq!(backoff.ceiling(), base);
        assert!(backoff.next_delay() <= base);
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(3));
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(3));
        }
    }
}
