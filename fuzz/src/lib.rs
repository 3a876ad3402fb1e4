//! The fuzz targets' bodies: each takes arbitrary bytes, feeds them to what ZeroCI reads from
//! outside, and checks what must hold whatever the input. A panic is a finding.
//!
//! The libFuzzer binaries in `fuzz_targets/` call these (`cargo fuzz run TARGET --features
//! libfuzzer`); the corpus tests replay every checked-in input through them on the stable toolchain.

use std::path::Path;

use prost::Message;
use zeroci::pb;
use zeroci_controller::config::{Config, LimitsConfig};
use zeroci_controller::engine::RunState;
use zeroci_controller::engine::apply::{self, Effect, PlanDefaults};
use zeroci_controller::engine::events::prepare;
use zeroci_controller::github::webhook::{parse_event, verify_signature};
use zeroci_controller::jobs::{JobRecord, NewJob};
use zeroci_controller::store::LogCursor;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every fuzz target by name, for the tests that replay and run them.
pub const TARGETS: [(&str, Target); 5] = [
    ("webhook", webhook),
    ("pipeline", pipeline),
    ("junit", junit),
    ("config", config),
    ("agent_messages", agent_messages),
];

/// The events GitHub sends and one it does not; the input's first byte picks one.
const EVENTS: [&str; 5] = ["push", "pull_request", "ping", "issues", ""];

/// A GitHub delivery: the first byte picks the `X-GitHub-Event` header, the rest is the body. Parsing
/// never panics, and the signature check refuses a made-up header without panicking either.
pub fn webhook(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let event = EVENTS[pick as usize % EVENTS.len()];
    let _ = parse_event(event, body);
    // The body's own head as a signature header: malformed, wrong length, not hex, or just wrong.
    let header = String::from_utf8_lossy(&body[..body.len().min(80)]);
    assert!(verify_signature(b"secret", body, Some(&header)).is_err());
}

/// A `zeroCI.yaml`: linting never panics, a valid file has a plan and an invalid one has errors, and
/// both render as text and JSON.
pub fn pipeline(data: &[u8]) {
    let report = zeroci::pipeline::lint(data);
    assert_eq!(report.is_valid(), report.pipeline.is_some());
    assert_eq!(report.is_valid(), report.errors.is_empty());
    let _ = report.render_diagnostics(zeroci::pipeline::FILE_NAME);
    let json = report.to_json();
    assert_eq!(json["valid"], report.is_valid());
    if let Some(pipeline) = &report.pipeline {
        assert!(!pipeline.jobs.is_empty(), "a valid pipeline runs something");
        let _ = pipeline.schedule();
        let _ = pipeline.run_on_excludes("push", "main");
    }
}

/// A JUnit XML report: parsing never panics and its totals add up.
pub fn junit(data: &[u8]) {
    let Ok(report) = zeroci_controller::junit::parse(data) else {
        return;
    };
    let t = &report.totals;
    assert_eq!(
        t.total as u64,
        t.passed as u64 + t.failed as u64 + t.errors as u64 + t.skipped as u64
    );
    assert!(report.cases.len() <= t.total as usize || report.truncated);
}

/// A `config.toml`: parsing and validation never panic; a config that loads validates again.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, Path::new("/fuzz/config.toml")) {
        assert_eq!(config.validate(), Ok(()));
    }
}

/// The output limit of the agent-messages target: small, so inputs reach it.
const FUZZ_LOG_LIMIT: u64 = 4096;

/// What an agent sends on its stream: length-prefixed (two bytes, big-endian) `AgentMessage`s; a
/// heartbeat ends a batch, as a pause between messages does on a real stream. Each batch goes
/// through the engine's own preparation and the record's reducer, as `handle_events` does minus the
/// store. Nothing panics, sequence numbers only move forward, output stays within the limit.
pub fn agent_messages(data: &[u8]) {
    let mut state = RunState {
        record: fuzz_record(),
        logged: LogCursor::new(1, 0),
        agent_seq: 0,
        retired: false,
        output_bytes: 0,
    };
    let limits = LimitsConfig {
        max_log_bytes: FUZZ_LOG_LIMIT,
        ..LimitsConfig::default()
    };
    let defaults = PlanDefaults {
        step_timeout_secs: 60,
        max_step_timeout_secs: 3600,
    };
    let mut batch = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let Some(message) = rest.get(2..2 + len) else {
            break;
        };
        rest = &rest[2 + len..];
        let Ok(message) = pb::AgentMessage::decode(message) else {
            continue;
        };
        match message.kind {
            Some(pb::agent_message::Kind::Event(event)) => batch.push(event),
            Some(pb::agent_message::Kind::Heartbeat(_))
                if !handle_batch(&mut state, &limits, defaults, std::mem::take(&mut batch)) =>
            {
                return;
            }
            _ => {}
        }
    }
    handle_batch(&mut state, &limits, defaults, batch);
}

/// One batch through `prepare` and the reducer; false once the job would be over.
fn handle_batch(
    state: &mut RunState,
    limits: &LimitsConfig,
    defaults: PlanDefaults,
    events: Vec<pb::AgentEvent>,
) -> bool {
    let before = (state.agent_seq, state.logged);
    let batch = prepare(limits, 1, state, events);
    let mut previous = before.1;
    for event in &batch.events {
        assert!(event.cursor > previous, "log positions only move forward");
        previous = event.cursor;
    }
    assert!(batch.output_bytes <= limits.max_log_bytes);
    if let Some(last) = batch.events.last() {
        state.logged = last.cursor;
    }
    if let Some(seq) = batch.handled_through {
        assert!(seq > before.0, "only new events are handled");
        state.agent_seq = seq;
    }
    state.output_bytes = batch.output_bytes;
    for event in &batch.events {
        let effect = apply::apply_event(&mut state.record, event, defaults);
        if matches!(effect, Effect::Finished | Effect::ConfigError { .. }) {
            let _ = state.record.final_status();
            return false;
        }
    }
    let mut indices: Vec<u32> = state.record.steps.iter().map(|s| s.index).collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(
        indices.len(),
        state.record.steps.len(),
        "step indices are unique"
    );
    batch.problem.is_none()
}

/// A job running its first machine, as the engine holds it when its agent attaches.
fn fuzz_record() -> JobRecord {
    let mut record = JobRecord::new(
        1,
        NewJob {
            repo: "fuzz".into(),
            repo_url: "/fuzz".into(),
            ref_name: "main".into(),
            commit: "HEAD".into(),
            triggered_by: "fuzz".into(),
            ..Default::default()
        },
        0,
    );
    record.attempt = 1;
    record.first_attempt = 1;
    record.steps.push(apply::checkout_step());
    record
}
