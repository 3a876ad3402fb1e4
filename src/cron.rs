//! Cron expressions for schedules and `run_on.schedule`, evaluated by `croner` (Vixie-cron
//! semantics plus `L`, `W`, `#` and `@daily`-style aliases) in an IANA time zone, daylight saving
//! included: five fields (minute hour day-of-month month day-of-week) or six with seconds first.
//!
//! `croner` says that a field is out of bounds but not which one, so an expression it refuses is
//! checked field by field here to say exactly what is wrong ("hour field `25`: `25` is out of range
//! 0-23"); the crate stays the authority on what is valid.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The time zone schedules use when none is given.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// A cron expression that is known to fire, with the zone it is read in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    zone: Tz,
}

impl CronSchedule {
    /// Parses `expression` for `time_zone` (an IANA name such as `Europe/Amsterdam`, or `UTC`). An
    /// error says what is wrong in words a user can act on.
    pub fn parse(expression: &str, time_zone: &str) -> Result<CronSchedule, String> {
        let zone = time_zone_named(time_zone)?;
        let expression = expression.trim();
        let shape = check_shape(expression)?;
        let cron = croner::Cron::from_str(expression).map_err(|error| {
            let why = shape
                .and_then(|fields| check_fields(&fields).err())
                .unwrap_or_else(|| error.to_string());
            format!("invalid cron expression `{expression}`: {why}")
        })?;
        let schedule = CronSchedule { cron, zone };
        // A valid-looking expression can still name no real time (the 31st of February).
        if schedule.next_after(crate::now_unix_ms()).is_none() {
            return Err(format!(
                "the cron expression `{expression}` never fires (it names no date that exists)"
            ));
        }
        Ok(schedule)
    }

    /// The first time strictly after `after_ms` (Unix milliseconds) at which the expression fires, in
    /// Unix milliseconds; none when it never fires again.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after = Utc.timestamp_millis_opt(after_ms).single()?;
        let local: DateTime<Tz> = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.timestamp_millis())
    }

    /// The latest time at or before `at_ms` at which the expression fires, in Unix milliseconds.
    pub fn last_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let at = Utc.timestamp_millis_opt(at_ms).single()?;
        let local: DateTime<Tz> = at.with_timezone(&self.zone);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|previous| previous.timestamp_millis())
    }

    /// In words: "At 02:00, on Monday …".
    pub fn describe(&self) -> String {
        self.cron.describe()
    }
}

/// The zone called `name`; an error that says how zones are named when there is none.
pub fn time_zone_named(name: &str) -> Result<Tz, String> {
    Tz::from_str(name.trim()).map_err(|_| {
        format!("unknown time zone `{name}`: use an IANA name such as `Europe/Amsterdam`, `America/New_York` or `UTC`")
    })
}

/// Checks `expression` as [`CronSchedule::parse`] does, in UTC.
pub fn check(expression: &str) -> Result<(), String> {
    CronSchedule::parse(expression, DEFAULT_TIME_ZONE).map(drop)
}

/// The fields with their names, or `None` for an alias (`@daily`) that croner reads by itself; an
/// error for a wrong number of fields.
fn check_shape(expression: &str) -> Result<Option<Vec<(&str, Field)>>, String> {
    if expression.starts_with('@') {
        return Ok(None);
    }
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let names: &[Field] = match fields.len() {
        5 => &FIELDS[1..],
        6 => &FIELDS,
        n => {
            return Err(format!(
                "invalid cron expression `{expression}`: expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), found {n}"
            ));
        }
    };
    Ok(Some(
        fields.into_iter().zip(names.iter().copied()).collect(),
    ))
}

/// A field's name and range.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
}

const FIELDS: [Field; 6] = [
    Field {
        name: "second",
        min: 0,
        max: 59,
    },
    Field {
        name: "minute",
        min: 0,
        max: 59,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
    },
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The first field that is wrong in the common syntax (lists of `*`, `N`, `N-M`, each optionally
/// `/STEP`; months and days also by their English abbreviation), said precisely.
fn check_fields(fields: &[(&str, Field)]) -> Result<(), String> {
    for (text, field) in fields {
        check_field(text, *field).map_err(|why| format!("{} field `{text}`: {why}", field.name))?;
    }
    Ok(())
}

fn check_field(text: &str, field: Field) -> Result<(), String> {
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(s) if s >= 1 && s <= field.max.max(1) => {}
                _ => {
                    return Err(format!(
                        "step `{step}` must be a number from 1 to {}",
                        field.max.max(1)
                    ));
                }
            }
        }
        if range == "*" || range == "?" {
            continue;
        }
        let (low, high) = match range.split_once('-') {
            Some((low, high)) => (value(low, field)?, value(high, field)?),
            None => {
                let value = value(range, field)?;
                (value, value)
            }
        };
        if low > high {
            return Err(format!("range `{range}` runs backwards"));
        }
    }
    Ok(())
}

fn value(text: &str, field: Field) -> Result<u32, String> {
    let by_name = |names: &[&str], first: u32| {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(text))
            .and_then(|i| u32::try_from(i).ok())
            .map(|i| i + first)
    };
    let named = match field.name {
        "month" => by_name(&MONTHS, 1),
        "day of week" => by_name(&DAYS, 0),
        _ => None,
    };
    let (min, max) = (field.min, field.max);
    let value = match named {
        Some(value) => value,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text
            .parse::<u32>()
            .map_err(|_| format!("`{text}` is out of range {min}-{max}"))?,
        None => return Err(format!("`{text}` is not a number")),
    };
    if value < min || value > max {
        return Err(format!("`{text}` is out of range {min}-{max}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-28 12:00:00 UTC, the day before Europe's clocks go forward.
    const SATURDAY_NOON: i64 = 1_774_699_200_000;

    #[test]
    fn valid_expressions_in_five_or_six_fields_and_aliases() {
        for ok in [
            "0 2 * * *",
            "*/15 0-23/2 1,15 jan-DEC mon-fri",
            "59 23 31 12 7",
            "0 0 * * sun",
            "* * * * * *",
            "*/5 * * * * *",
            "0 0 L * *",
            "@daily",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
    }

    #[test]
    fn invalid_expressions_say_which_field_and_why() {
        for (bad, why) in [
            ("", "found 0"),
            ("* * * *", "expected 5 fields"),
            ("* * * * * * *", "found 7"),
            ("60 * * * *", "minute field `60`: `60` is out of range 0-59"),
            ("0 25 * * *", "hour field `25`: `25` is out of range 0-23"),
            ("* * 0 * *", "day of month field `0`"),
            ("* * * 13 *", "month field `13`"),
            ("* * * * 8", "day of week field `8`"),
            ("*/0 * * * *", "step `0` must be a number from 1 to 59"),
            ("5-1 * * * *", "range `5-1` runs backwards"),
            ("a * * * *", "`a` is not a number"),
            ("61 * * * * *", "second field `61`"),
            ("0 0 31 2 *", "never fires"),
        ] {
            let error = check(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn unknown_time_zones_are_refused_with_how_to_name_one() {
        let error = CronSchedule::parse("0 2 * * *", "Mars/Olympus").unwrap_err();
        assert!(
            error.contains("unknown time zone `Mars/Olympus`"),
            "{error}"
        );
        assert!(CronSchedule::parse("0 2 * * *", "Europe/Amsterdam").is_ok());
    }

    #[test]
    fn next_times_follow_the_zone_across_daylight_saving() {
        let utc = CronSchedule::parse("0 2 * * *", "UTC").unwrap();
        // Sunday 02:00 UTC.
        assert_eq!(utc.next_after(SATURDAY_NOON), Some(1_774_749_600_000));
        // In Amsterdam 02:00 does not exist on Sunday 29 March (clocks jump from 02:00 to 03:00);
        // croner fires at the first instant after the gap, 01:00 UTC, and Monday's at 00:00 UTC.
        let amsterdam = CronSchedule::parse("0 2 * * *", "Europe/Amsterdam").unwrap();
        let sunday = amsterdam.next_after(SATURDAY_NOON).unwrap();
        assert_eq!(sunday, 1_774_746_000_000, "03:00 CEST, right after the gap");
        let monday = amsterdam.next_after(sunday).unwrap();
        assert_eq!(monday, 1_774_828_800_000, "02:00 CEST is 00:00 UTC");
        assert!(sunday < monday);
        // When clocks go back (Sunday 25 October 2026, 03:00 CEST → 02:00 CET) 02:30 happens twice;
        // a fixed-time schedule still runs once that day.
        let half_past_two = CronSchedule::parse("30 2 * * *", "Europe/Amsterdam").unwrap();
        let october_24_noon = 1_792_843_200_000;
        let first = half_past_two.next_after(october_24_noon).unwrap();
        assert_eq!(first, 1_792_888_200_000, "02:30 CEST is 00:30 UTC");
        let second = half_past_two.next_after(first).unwrap();
        assert_eq!(
            second, 1_792_978_200_000,
            "the next is Monday's 02:30 CET, 01:30 UTC"
        );
        // Seconds: strictly after, every second.
        let every_second = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.next_after(SATURDAY_NOON),
            Some(SATURDAY_NOON + 1000)
        );
        assert_eq!(
            every_second.next_after(SATURDAY_NOON + 1),
            Some(SATURDAY_NOON + 1000)
        );
        assert_eq!(
            every_second.last_at_or_before(SATURDAY_NOON + 1500),
            Some(SATURDAY_NOON + 1000)
        );
        assert_eq!(
            utc.last_at_or_before(SATURDAY_NOON),
            Some(SATURDAY_NOON - 10 * 3_600_000),
            "02:00 that morning"
        );
    }
}
