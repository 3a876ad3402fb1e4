//! The outbox: every event the agent produced that the controller has not acknowledged yet.
//!
//! This is what makes "never lose a line" hold across dropped connections. Producers (the executor and
//! its pipe readers) [`push`](Outbox::push) events and get their sequence number (1, 2, 3, ... per
//! attempt). One connection at a time drains it with [`next_unsent`](Outbox::next_unsent), which walks a
//! "sent" cursor forward; acknowledgements prune the front; after a reconnect
//! [`reset_cursor`](Outbox::reset_cursor) rewinds the cursor to what the controller says it stored, so
//! everything after that is sent again, in order.
//!
//! Concurrency: state sits behind a `std` mutex that is never held across an `.await`; every change bumps
//! a `watch` version so waiters (a pusher held back by the byte cap, `wait_acked`, the sender waiting for
//! new events) re-check. Pushes wait while the buffered bytes exceed the cap: that is the backpressure that
//! slows a fast command down (its pipe fills, its writes block) instead of growing memory without bound.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::watch;
use zeroci::pb::{AgentEvent, agent_event::Kind};

/// Default cap on unacknowledged bytes held in memory.
pub const DEFAULT_CAP_BYTES: usize = 16 * 1024 * 1024;

/// Fixed per-event allowance for the fields that are not payload bytes.
const EVENT_OVERHEAD: usize = 32;

/// The unacknowledged events of one attempt; see the module docs.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Set when the controller said the job's output reached its limit: `Output` events are dropped
    /// here instead of crossing the network to be dropped there.
    output_stopped: std::sync::atomic::AtomicBool,
    /// Bumped on every change; waiters subscribe and re-check the state.
    version: watch::Sender<u64>,
    cap_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Unacknowledged events; `events[i].seq == acked + 1 + i`.
    events: VecDeque<(AgentEvent, usize)>,
    /// Highest sequence number handed out.
    last_seq: u64,
    /// Highest sequence number the controller acknowledged.
    acked: u64,
    /// Highest sequence number handed to the current connection's sender.
    cursor: u64,
    /// Sum of the sizes of `events`.
    bytes: usize,
}

fn event_size(kind: &Kind) -> usize {
    EVENT_OVERHEAD
        + match kind {
            Kind::Output(o) => o.data.len(),
            Kind::CheckedOut(c) => c.pipeline_file.len() + c.commit.len(),
            Kind::StepExited(e) => e.message.len(),
            Kind::TestReport(r) => r.xml.len() + r.source.len(),
            Kind::Artifact(a) => a.data.len() + a.name.len() + a.error.len(),
            Kind::StepStarted(_) | Kind::Finished(_) => 0,
        }
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(DEFAULT_CAP_BYTES)
    }
}

impl Outbox {
    /// An empty outbox whose pushes wait while more than `cap_bytes` are unacknowledged.
    pub fn new(cap_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            output_stopped: std::sync::atomic::AtomicBool::new(false),
            version: watch::Sender::new(0),
            cap_bytes,
        }
    }

    /// From now on `Output` events are dropped (the job's stored output is full).
    pub fn stop_output(&self) {
        self.output_stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that matters more
        // than losing the agent, so recover the guard rather than cascading the panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Appends an event and returns its sequence number. Waits while the buffered bytes exceed the cap;
    /// a single event larger than the cap still goes through once the outbox is below it.
    pub async fn push(&self, kind: Kind) -> u64 {
        if matches!(kind, Kind::Output(_))
            && self
                .output_stopped
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            // Nothing new to order after: the last event handed out stands for this one.
            return self.lock().last_seq;
        }
        let size = event_size(&kind);
        let mut changes = self.version.subscribe();
        loop {
            {
                let mut state = self.lock();
                if state.bytes <= self.cap_bytes {
                    state.last_seq += 1;
                    let seq = state.last_seq;
                    let event = AgentEvent {
                        seq,
                        at_unix_ms: zeroci::now_unix_ms(),
                        kind: Some(kind),
                    };
                    state.events.push_back((event, size));
                    state.bytes += size;
                    drop(state);
                    self.bump();
                    return seq;
                }
            }
            // The sender lives in `self`, so `changed` cannot fail while we are borrowed.
            let _ = changes.changed().await;
        }
    }

    /// Records that the controller stored everything up to `seq`: drops those events and wakes waiters.
    /// An acknowledgement beyond what was produced is clamped (it cannot refer to anything real).
    pub fn ack(&self, seq: u64) {
        let mut state = self.lock();
        if seq > state.last_seq {
            tracing::warn!(
                seq,
                last_seq = state.last_seq,
                "acknowledgement beyond the last event"
            );
        }
        let seq = seq.min(state.last_seq);
        if seq <= state.acked {
            return;
        }
        state.acked = seq;
        while state.events.front().is_some_and(|(e, _)| e.seq <= seq) {
            if let Some((_, size)) = state.events.pop_front() {
                state.bytes -= size;
            }
        }
        state.cursor = state.cursor.max(seq);
        drop(state);
        self.bump();
    }

    /// Starts a new connection: everything up to `acked` is stored, everything after it is sent again.
    pub fn reset_cursor(&self, acked: u64) {
        self.ack(acked);
        let mut state = self.lock();
        if acked < state.acked {
            // The controller forgot events it acknowledged earlier; they are gone from here too.
            tracing::warn!(
                acked,
                previously_acked = state.acked,
                "controller reports fewer stored events"
            );
        }
        state.cursor = state.acked;
        drop(state);
        self.bump();
    }

    /// The next event after the sent cursor, advancing the cursor; waits until there is one. Cancel-safe:
    /// the cursor only moves when an event is returned.
    pub async fn next_unsent(&self) -> AgentEvent {
        let mut changes = self.version.subscribe();
        loop {
            {
                let mut state = self.lock();
                let index = state.cursor.saturating_sub(state.acked);
                if let Some(index) = usize::try_from(index).ok()
                    && let Some((event, _)) = state.events.get(index)
                {
                    let event = event.clone();
                    state.cursor = event.seq;
                    return event;
                }
            }
            let _ = changes.changed().await;
        }
    }

    /// Resolves once every event up to and including `seq` is acknowledged (the flush barrier).
    pub async fn wait_acked(&self, seq: u64) {
        let mut changes = self.version.subscribe();
        while self.lock().acked < seq {
            let _ = changes.changed().await;
        }
    }

    /// The highest sequence number produced so far (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// The highest acknowledged sequence number.
    pub fn acked_seq(&self) -> u64 {
        self.lock().acked
    }

    /// Bytes currently held for unacknowledged events (payload plus a fixed per-event allowance).
    pub fn buffered_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Number of unacknowledged events.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// True when every event is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use zeroci::pb::{Output, StepStarted};

    use super::*;

    #[tokio::test]
    async fn once_stopped_output_is_dropped_and_other_events_still_go() {
        let outbox = Outbox::new(1 << 20);
        let output = |text: &str| {
            Kind::Output(Output {
                step: 1,
                data: text.as_bytes().to_vec().into(),
                ..Default::default()
            })
        };
        assert_eq!(outbox.push(output("kept")).await, 1);
        outbox.stop_output();
        assert_eq!(
            outbox.push(output("dropped")).await,
            1,
            "nothing new to order after"
        );
        let exited = Kind::StepExited(zeroci::pb::StepExited {
            step: 1,
            ..Default::default()
        });
        assert_eq!(outbox.push(exited).await, 2);
        assert_eq!(outbox.next_unsent().await.seq, 1);
        assert!(matches!(
            outbox.next_unsent().await.kind,
            Some(Kind::StepExited(_))
        ));
    }

    fn output(data: &'static [u8]) -> Kind {
        Kind::Output(Output {
            step: 1,
            stream: 1,
            data: Bytes::from_static(data),
        })
    }

    async fn next(outbox: &Outbox) -> AgentEvent {
        tokio::time::timeout(Duration::from_secs(5), outbox.next_unsent())
            .await
            .expect("an event")
    }

    #[tokio::test]
    async fn assigns_sequence_numbers_in_order() {
        let outbox = Outbox::default();
        for i in 1..=5u64 {
            assert_eq!(
                outbox
                    .push(Kind::StepStarted(StepStarted { step: i as u32 }))
                    .await,
                i
            );
        }
        for i in 1..=5u64 {
            let e = next(&outbox).await;
            assert_eq!(e.seq, i);
            assert_eq!(
                e.kind,
                Some(Kind::StepStarted(StepStarted { step: i as u32 }))
            );
        }
        assert_eq!(outbox.last_seq(), 5);
    }

    #[tokio::test]
    async fn ack_prunes_and_clamps() {
        let outbox = Outbox::default();
        for _ in 0..4 {
            outbox.push(output(b"abc")).await;
        }
        assert_eq!(outbox.len(), 4);
        outbox.ack(2);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.acked_seq(), 2);
        outbox.ack(1); // stale ack: no effect
        assert_eq!(outbox.acked_seq(), 2);
        outbox.ack(99); // beyond the last event: clamped
        assert_eq!(outbox.acked_seq(), 4);
        assert!(outbox.is_empty());
        assert_eq!(outbox.buffered_bytes(), 0);
        // The cursor moved past acknowledged events: nothing to send until a new push.
        outbox.push(output(b"d")).await;
        assert_eq!(next(&outbox).await.seq, 5);
    }

    #[tokio::test]
    async fn reset_cursor_resends_everything_unacknowledged() {
        let outbox = Outbox::default();
        for _ in 0..5 {
            outbox.push(output(b"x")).await;
        }
        for i in 1..=5 {
            assert_eq!(next(&outbox).await.seq, i);
        }
        outbox.ack(2);
        // The connection dropped; the controller says it stored 3.
        outbox.reset_cursor(3);
        assert_eq!(outbox.acked_seq(), 3);
        assert_eq!(next(&outbox).await.seq, 4);
        assert_eq!(next(&outbox).await.seq, 5);
        // A controller reporting less than it acknowledged cannot get pruned events back.
        outbox.reset_cursor(1);
        assert_eq!(next(&outbox).await.seq, 4);
    }

    #[tokio::test]
    async fn sender_waits_for_new_events() {
        let outbox = Arc::new(Outbox::default());
        let reader = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.next_unsent().await.seq }
        });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        outbox.push(output(b"late")).await;
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), reader)
                .await
                .unwrap()
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn backpressure_blocks_and_releases() {
        // Each 100-byte event counts 132 bytes; a cap of 200 lets two in, then blocks.
        let outbox = Arc::new(Outbox::new(200));
        static DATA: [u8; 100] = [7; 100];
        assert_eq!(outbox.push(output(&DATA)).await, 1);
        assert_eq!(outbox.push(output(&DATA)).await, 2);
        let blocked = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push(output(&DATA)).await }
        });
        // Give the pusher every chance to run; it must still be waiting.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!blocked.is_finished(), "push above the cap must wait");
        assert_eq!(outbox.last_seq(), 2);
        outbox.ack(1);
        let seq = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seq, 3);
    }

    #[tokio::test]
    async fn oversized_event_passes_an_empty_outbox() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(output(b"much more than ten bytes")).await, 1);
    }

    #[tokio::test]
    async fn wait_acked_is_a_flush_barrier() {
        let outbox = Arc::new(Outbox::default());
        for _ in 0..3 {
            outbox.push(output(b"x")).await;
        }
        outbox.wait_acked(0).await; // nothing to wait for
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.wait_acked(3).await }
        });
        outbox.ack(2);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        outbox.ack(3);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
