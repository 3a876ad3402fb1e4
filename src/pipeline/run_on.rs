//! `run_on`: which events start the pipeline (the original's last era, validated as it did: at least
//! one trigger, `branches` a list of names, `cron` a valid expression).
//!
//! ```yaml
//! run_on:
//!   push: {branches: [development]}
//!   pull_request: {branches: [development]}
//!   manual: {branches: [master]}
//!   schedule: {branch: development, cron: "0 0 * * *"}
//! ```

use serde_json::{Map, Value as Json};

use super::schema::{Checker, join, required_text};
use super::yaml::{Node, Value};

const TRIGGERS: [&str; 4] = ["push", "pull_request", "manual", "schedule"];

/// The validated `run_on`, normalised to `{"push": {"branches": [..]}, .., "schedule": {"branch",
/// "cron"}}` with unknown keys left out.
pub fn check(c: &mut Checker, node: &Node, path: &str) -> Option<Json> {
    let expected = "a mapping with at least one of `push`, `pull_request`, `manual`, `schedule`";
    let fields = c.fields(node, path, &TRIGGERS, expected)?;
    if !TRIGGERS.iter().any(|t| fields.has(t)) {
        c.error(node, path, format!("expected {expected}"));
    }
    let mut out = Map::new();
    for trigger in ["push", "pull_request", "manual"] {
        if let Some(value) = fields.get(trigger) {
            if let Some(branches) = branches_trigger(c, value, &join(path, trigger)) {
                out.insert(trigger.to_string(), branches);
            }
        }
    }
    if let Some(value) = fields.get("schedule") {
        if let Some(schedule) = schedule(c, value, &join(path, "schedule")) {
            out.insert("schedule".to_string(), schedule);
        }
    }
    Some(Json::Object(out))
}

/// `{branches: [main, develop]}`.
fn branches_trigger(c: &mut Checker, node: &Node, path: &str) -> Option<Json> {
    let fields = c.fields(
        node,
        path,
        &["branches"],
        "a mapping such as `{branches: [main]}`",
    )?;
    let key = join(path, "branches");
    let Some(list) = fields.value("branches") else {
        c.error(
            fields.get("branches").unwrap_or(node),
            &key,
            "is required: a list of branch names such as `[main]`",
        );
        return None;
    };
    let Value::Seq(items) = &list.value else {
        // The original refused `branches: develop` too; say how to write it.
        let hint = list
            .text()
            .map(|t| format!("; write `[{t}]`"))
            .unwrap_or_default();
        c.error(
            list,
            &key,
            format!(
                "expected a list of branch names, found {}{hint}",
                list.describe()
            ),
        );
        return None;
    };
    if items.is_empty() {
        c.error(
            list,
            &key,
            format!("must list at least one branch (remove `{path}` to turn the trigger off)"),
        );
    }
    let mut branches = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item
            .text()
            .filter(|t| !t.trim().is_empty() && matches!(item.value, Value::Scalar { .. }))
        {
            Some(name) => branches.push(Json::String(name.to_string())),
            None => c.error(
                item,
                &format!("{key}[{i}]"),
                format!("expected a branch name, found {}", item.describe()),
            ),
        }
    }
    Some(serde_json::json!({ "branches": branches }))
}

/// `{branch: main, cron: "0 2 * * *"}`.
fn schedule(c: &mut Checker, node: &Node, path: &str) -> Option<Json> {
    let expected = "a mapping such as `{branch: main, cron: \"0 2 * * *\"}`";
    let fields = c.fields(node, path, &["branch", "cron"], expected)?;
    let branch = required_text(c, &fields, path, "branch", "the branch to build");
    let cron = required_text(
        c,
        &fields,
        path,
        "cron",
        "a cron expression such as \"0 2 * * *\"",
    );
    let cron = cron.and_then(|(text, at)| match check_cron(&text) {
        Ok(()) => Some(text),
        Err(why) => {
            c.error(
                at,
                &join(path, "cron"),
                format!("invalid cron expression `{text}`: {why}"),
            );
            None
        }
    });
    Some(serde_json::json!({ "branch": branch.map(|(b, _)| b), "cron": cron }))
}

/// Minute, hour, day of month, month, day of week.
const CRON_FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Checks a standard five-field cron expression: each field a comma-separated list of `*`, `N`,
/// `N-M`, each optionally `/STEP`; months and days of week also by their English abbreviation.
pub fn check_cron(expression: &str) -> Result<(), String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != CRON_FIELDS.len() {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        ));
    }
    for (field, (name, min, max)) in fields.iter().zip(CRON_FIELDS) {
        check_cron_field(field, name, min, max)
            .map_err(|why| format!("{name} field `{field}`: {why}"))?;
    }
    Ok(())
}

fn check_cron_field(field: &str, name: &str, min: u32, max: u32) -> Result<(), String> {
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(s) if s >= 1 && s <= max.max(1) => {}
                _ => {
                    return Err(format!(
                        "step `{step}` must be a number from 1 to {}",
                        max.max(1)
                    ));
                }
            }
        }
        if range == "*" {
            continue;
        }
        let (low, high) = match range.split_once('-') {
            Some((low, high)) => (
                cron_value(low, name, min, max)?,
                cron_value(high, name, min, max)?,
            ),
            None => {
                let value = cron_value(range, name, min, max)?;
                (value, value)
            }
        };
        if low > high {
            return Err(format!("range `{range}` runs backwards"));
        }
    }
    Ok(())
}

fn cron_value(text: &str, name: &str, min: u32, max: u32) -> Result<u32, String> {
    let by_name = |names: &[&str], first: u32| {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(text))
            .and_then(|i| u32::try_from(i).ok())
            .map(|i| i + first)
    };
    let named = match name {
        "month" => by_name(&MONTHS, 1),
        "day of week" => by_name(&DAYS, 0),
        _ => None,
    };
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
