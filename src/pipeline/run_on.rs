//! `run_on`: which events start the pipeline (the original's last era, validated as it did: at least
//! one trigger, `branches` a list of names, `cron` a valid expression).
//!
//! ```yaml
//! run_on:
//!   push: {branches: [development]}
//!   pull_request: {branches: [development]}
//!   manual: {branches: [master]}
//!   schedule: {branch: development, cron: "0 0 * * *", timezone: Europe/Amsterdam}
//! ```

use serde_json::{Map, Value as Json};

use super::schema::{Checker, join, optional_text, required_text};
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

/// `{branch: main, cron: "0 2 * * *"}`, optionally with `timezone: Europe/Amsterdam` (default UTC).
fn schedule(c: &mut Checker, node: &Node, path: &str) -> Option<Json> {
    let expected = "a mapping such as `{branch: main, cron: \"0 2 * * *\"}`";
    let fields = c.fields(node, path, &["branch", "cron", "timezone"], expected)?;
    let branch = required_text(c, &fields, path, "branch", "the branch to build");
    let cron = required_text(
        c,
        &fields,
        path,
        "cron",
        "a cron expression such as \"0 2 * * *\"",
    );
    let zone = match fields.get("timezone") {
        None => Some(crate::cron::DEFAULT_TIME_ZONE.to_string()),
        Some(node) => {
            let key = join(path, "timezone");
            let expected = "an IANA time zone such as Europe/Amsterdam";
            match optional_text(c, Some(node), &key, expected) {
                Some(zone) => match crate::cron::time_zone_named(&zone) {
                    Ok(_) => Some(zone),
                    Err(why) => {
                        c.error(node, &key, why);
                        None
                    }
                },
                None => None,
            }
        }
    };
    let cron = cron.and_then(|(text, at)| {
        let checked = crate::cron::CronSchedule::parse(
            &text,
            zone.as_deref().unwrap_or(crate::cron::DEFAULT_TIME_ZONE),
        );
        match checked {
            Ok(_) => Some(text),
            Err(why) => {
                c.error(at, &join(path, "cron"), why);
                None
            }
        }
    });
    Some(serde_json::json!({
        "branch": branch.map(|(b, _)| b),
        "cron": cron,
        "timezone": zone,
    }))
}
