//! What a schedule should do now: wait, start a run, or skip a tick. Pure: the caller brings the
//! clock and whether the previous run is still going.

use zeroci::cron::CronSchedule;

/// Ticks counted one by one at most; an outage longer than this many ticks reports this many.
pub const MISSED_COUNT_CAP: u32 = 10_000;

/// Stored as the next tick of an expression that never fires again.
pub const NEVER: i64 = i64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing before `until`.
    Wait { until: i64 },
    /// Start the run for tick `due_at`: `late_ms` after it, standing for `missed` earlier ticks
    /// nobody ran. The schedule's next tick is then `next_at`.
    Fire {
        due_at: i64,
        late_ms: i64,
        missed: u32,
        next_at: i64,
    },
    /// Tick `due_at` came while the previous run was still going and runs may not overlap.
    Skip { due_at: i64, next_at: i64 },
}

/// The decision at `now` for a schedule whose next tick is `next_at`. After an outage the run is for
/// the latest tick that passed (one run, not one per tick), the earlier ones counted as missed.
pub fn decide(
    cron: &CronSchedule,
    next_at: i64,
    now: i64,
    previous_running: bool,
    allow_overlap: bool,
) -> Due {
    if now < next_at {
        return Due::Wait { until: next_at };
    }
    let due_at = cron
        .last_at_or_before(now)
        .filter(|&last| last >= next_at)
        .unwrap_or(next_at);
    let next_after_now = cron.next_after(now).unwrap_or(NEVER);
    if previous_running && !allow_overlap {
        return Due::Skip {
            due_at,
            next_at: next_after_now,
        };
    }
    Due::Fire {
        due_at,
        late_ms: now - due_at,
        missed: ticks_between(cron, next_at, due_at),
        next_at: next_after_now,
    }
}

/// How many ticks fall in `[from, to)`, up to [`MISSED_COUNT_CAP`].
fn ticks_between(cron: &CronSchedule, from: i64, to: i64) -> u32 {
    let mut count = 0;
    let mut tick = from;
    while tick < to && count < MISSED_COUNT_CAP {
        count += 1;
        match cron.next_after(tick) {
            Some(next) => tick = next,
            None => break,
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-28 12:00:00 UTC.
    const NOON: i64 = 1_774_699_200_000;

    fn every_second() -> CronSchedule {
        CronSchedule::parse("* * * * * *", "UTC").unwrap()
    }

    #[test]
    fn waits_until_the_tick_then_fires_on_time() {
        let cron = every_second();
        assert_eq!(
            decide(&cron, NOON, NOON - 1, false, false),
            Due::Wait { until: NOON }
        );
        assert_eq!(
            decide(&cron, NOON, NOON + 3, false, false),
            Due::Fire {
                due_at: NOON,
                late_ms: 3,
                missed: 0,
                next_at: NOON + 1000
            }
        );
    }

    #[test]
    fn after_an_outage_one_late_run_stands_for_the_missed_ticks() {
        let cron = every_second();
        // Ticks at +0, +1 s, +2 s and +3 s passed; the run is for +3 s, 400 ms late; three missed.
        let due = decide(&cron, NOON, NOON + 3400, false, false);
        assert_eq!(
            due,
            Due::Fire {
                due_at: NOON + 3000,
                late_ms: 400,
                missed: 3,
                next_at: NOON + 4000
            }
        );
        // A nightly schedule down for three days: one run for last night's tick.
        let nightly = CronSchedule::parse("0 2 * * *", "UTC").unwrap();
        let two_am = NOON - 10 * 3_600_000;
        let Due::Fire {
            due_at,
            missed,
            late_ms,
            ..
        } = decide(&nightly, two_am - 2 * 86_400_000, NOON, false, false)
        else {
            panic!("a run is due");
        };
        assert_eq!((due_at, missed, late_ms), (two_am, 2, 10 * 3_600_000));
    }

    #[test]
    fn a_long_outage_counts_missed_ticks_up_to_the_cap() {
        let cron = every_second();
        let Due::Fire { missed, .. } = decide(&cron, NOON, NOON + 86_400_000, false, false) else {
            panic!("a run is due");
        };
        assert_eq!(missed, MISSED_COUNT_CAP);
    }

    #[test]
    fn a_tick_during_a_running_run_is_skipped_unless_overlap_is_allowed() {
        let cron = every_second();
        assert_eq!(
            decide(&cron, NOON, NOON + 10, true, false),
            Due::Skip {
                due_at: NOON,
                next_at: NOON + 1000
            }
        );
        assert!(matches!(
            decide(&cron, NOON, NOON + 10, true, true),
            Due::Fire { .. }
        ));
    }
}
