//! Schedules end to end: ticks met on time with no duplicate and no gap, one run per tick with two
//! controllers on one store, one late run after an outage, the original's HTTP API behind its token,
//! invalid expressions and zones refused, `run_on.schedule` followed by pushes, pause and resume.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Repo, Settings, TestEnv};
use crate::production::{Peer, production};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const VIEWER_TOKEN: &str = "viewer-token-0123456789";

/// `zeroci schedule show NAME --json`.
fn shown(env: &TestEnv, name: &str) -> Value {
    let out = env.cli(&["schedule", "show", name, "--json"]);
    assert_eq!(out.code, 0, "schedule show: {}", out.stderr);
    out.json()
}

/// The schedule's runs (newest first), once `enough` says they are enough. Looks again every 200 ms:
/// each look is a CLI process.
fn runs_when(
    env: &TestEnv,
    name: &str,
    what: &str,
    enough: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    zeroci_testkit::wait_for(what, || {
        let runs = shown(env, name)["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if enough(&runs) {
            return Some(runs);
        }
        std::thread::sleep(Duration::from_millis(200));
        None
    })
}

/// The tick (Unix milliseconds) a run is for.
fn due_at(run: &Value) -> i64 {
    let due = run["schedule"]["due_at"].as_str().expect("a schedule run");
    time::OffsetDateTime::parse(due, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .expect("an RFC 3339 time")
}

fn created_at(run: &Value) -> i64 {
    let created = run["created_at"].as_str().expect("created_at");
    time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap()
}

/// The ticks of `runs`, oldest first, checked to be whole seconds with no duplicate and no gap.
fn consecutive_seconds(runs: &[Value]) -> Vec<i64> {
    let mut ticks: Vec<i64> = runs.iter().map(due_at).collect();
    ticks.sort_unstable();
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "one run per second, none twice, none missed: {ticks:?}"
        );
    }
    ticks
}

fn add_every_second(env: &TestEnv, name: &str) {
    let out = env.cli(&[
        "schedule",
        "add",
        name,
        "--cron",
        "* * * * * *",
        "--test",
        "true",
        // Runs queue behind the other tests' jobs on a busy machine: overlap keeps every tick.
        "--allow-overlap",
    ]);
    assert_eq!(out.code, 0, "schedule add: {}", out.stderr);
}

fn pause(env: &TestEnv, name: &str) {
    let out = env.cli(&["schedule", "pause", name]);
    assert_eq!(out.code, 0, "schedule pause: {}", out.stderr);
}

#[test]
fn a_schedule_every_second_fires_on_time_for_ten_seconds_with_no_duplicate_or_gap() {
    let env = TestEnv::start();
    add_every_second(&env, "tick");
    let runs = runs_when(&env, "tick", "eleven runs", |runs| runs.len() >= 11);
    pause(&env, "tick");
    let ticks = consecutive_seconds(&runs);
    assert!(ticks.len() >= 11);
    for run in &runs {
        let started = created_at(run) - due_at(run);
        assert!(
            (0..1000).contains(&started),
            "started {started} ms after its tick: {run:#}"
        );
        assert_eq!(run["schedule"]["late"], false, "{run:#}");
        assert!(
            run["triggered_by"]
                .as_str()
                .unwrap()
                .starts_with("schedule tick")
        );
    }
    // Every run did its work: the commands schedule has no repository, its checkout makes a workspace.
    let first = runs.last().unwrap()["id"].as_u64().unwrap();
    assert_eq!(env.wait_job(first)["status"], "success");
    let listed = env.cli(&["schedule", "list"]).stdout_str();
    let row = listed
        .lines()
        .find(|l| l.starts_with("tick "))
        .unwrap_or_default();
    for column in [
        "* * * * * *",
        "UTC",
        "commands (1 step)",
        "paused",
        "success #",
    ] {
        assert!(row.contains(column), "{listed}");
    }
}

#[test]
fn two_controllers_on_one_store_start_one_run_per_tick() {
    let (settings, addresses) = production(4, true);
    let env = TestEnv::start_with(settings);
    let peer = Peer::start(&env, "controller-b", &addresses[1]);
    add_every_second(&env, "shared");
    let runs = runs_when(&env, "shared", "eight runs", |runs| runs.len() >= 8);
    pause(&env, "shared");
    consecutive_seconds(&runs);
    // Both controllers were watching the same ticks; which one fired each does not matter.
    assert!(peer.log_text().contains("scheduler started"));
}

#[test]
fn a_controller_stopped_across_two_ticks_starts_one_late_run_after_its_restart() {
    let mut env = TestEnv::start();
    add_every_second(&env, "nightly");
    let before = runs_when(&env, "nightly", "two runs", |runs| runs.len() >= 2);
    let last_before = before.iter().map(due_at).max().unwrap();
    env.kill_controller();
    // The outage itself is what is tested: at least two ticks pass with no controller.
    std::thread::sleep(Duration::from_millis(3500));
    env.start_controller("127.0.0.1:0");
    let runs = runs_when(&env, "nightly", "the late run and one after it", |runs| {
        runs.iter().any(|r| r["schedule"]["late"] == true)
            && runs.iter().filter(|r| due_at(r) > last_before).count() >= 2
    });
    pause(&env, "nightly");
    let mut after: Vec<&Value> = runs.iter().filter(|r| due_at(r) > last_before).collect();
    after.sort_by_key(|r| due_at(r));
    let late = after[0];
    assert_eq!(late["schedule"]["late"], true, "{late:#}");
    let missed = late["schedule"]["missed"].as_u64().unwrap();
    assert!(
        missed >= 2,
        "the late run stands for the ticks of the outage: {late:#}"
    );
    assert_eq!(
        due_at(late) - last_before,
        (missed as i64 + 1) * 1000,
        "one run for the outage, not one per tick"
    );
    assert!(
        late["triggered_by"]
            .as_str()
            .unwrap()
            .contains("earlier ticks missed"),
        "{late:#}"
    );
    for run in &after[1..] {
        assert_eq!(run["schedule"]["late"], false, "back on time: {run:#}");
    }
    consecutive_seconds(
        &after
            .iter()
            .skip(1)
            .map(|r| (*r).clone())
            .collect::<Vec<_>>(),
    );
}

fn api(env: &TestEnv, method: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, _, answer) = env.http_request(method, path, &headers, &body);
    let answer = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    (status, answer)
}

#[test]
fn the_original_schedule_api_works_behind_its_token() {
    let env = TestEnv::start_with(Settings {
        extra: format!(
            "[web]\nadmin_tokens = [\"{ADMIN_TOKEN}\"]\nviewer_tokens = [\"{VIEWER_TOKEN}\"]\n"
        ),
        ..Settings::default()
    });
    let nightly = json!({
        "schedule_name": "nightly",
        "run_time": "0 2 * * *",
        "prerequisites": {"image_name": "ubuntu:22.04"},
        "install": "echo installing",
        "script": [{"name": "unit", "cmd": "echo unit tests ran"}, "echo second"],
        "timeout": 600,
    });
    let (status, answer) = api(&env, "POST", "/api/schedule", None, &nightly);
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("token is required")
    );
    let (status, _) = api(&env, "POST", "/api/schedule", Some("not-a-token"), &nightly);
    assert_eq!(status, 401);
    let (status, answer) = api(&env, "POST", "/api/schedule", Some(VIEWER_TOKEN), &nightly);
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = api(&env, "POST", "/api/schedule", Some(ADMIN_TOKEN), &nightly);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["run_time"], "0 2 * * *");
    let (status, answer) = api(&env, "POST", "/api/schedule", Some(ADMIN_TOKEN), &nightly);
    assert_eq!(status, 409, "the name is taken: {answer}");

    // Bad expressions and zones say what is wrong; the original's `authentication` field works too.
    let mut bad = json!({"schedule_name": "bad", "run_time": "0 25 * * *", "script": "true",
        "authentication": ADMIN_TOKEN});
    let (status, answer) = api(&env, "POST", "/api/schedule", None, &bad);
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("hour field `25`"),
        "{answer}"
    );
    bad["run_time"] = json!("0 2 * * *");
    bad["time_zone"] = json!("Mars/Olympus");
    let (status, answer) = api(&env, "POST", "/api/schedule", None, &bad);
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("unknown time zone"),
        "{answer}"
    );

    let (status, names) = api(
        &env,
        "GET",
        "/api/schedule",
        Some(VIEWER_TOKEN),
        &Value::Null,
    );
    assert_eq!((status, names), (200, json!(["nightly"])));
    let (status, _) = api(&env, "GET", "/api/schedule", None, &Value::Null);
    assert_eq!(status, 401);

    let (status, answer) = api(
        &env,
        "POST",
        "/api/schedule_trigger",
        Some(ADMIN_TOKEN),
        &json!({"schedule_name": "nightly"}),
    );
    assert_eq!(status, 202, "{answer}");
    let id = answer["job"].as_u64().unwrap();
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let log = String::from_utf8(env.raw_log(id, None)).unwrap();
    assert!(
        log.contains("installing") && log.contains("unit tests ran\n") && log.contains("second\n"),
        "{log}"
    );
    assert_eq!(job["schedule"]["name"], "nightly");
    let (_, one) = api(
        &env,
        "GET",
        "/api/schedule?schedule_name=nightly",
        Some(ADMIN_TOKEN),
        &Value::Null,
    );
    assert_eq!(one["runs"][0]["id"], id, "{one}");
    assert_eq!(one["last_job"], id);

    let remove = json!({"schedule_name": "nightly"});
    for (token, expected) in [(VIEWER_TOKEN, 403), (ADMIN_TOKEN, 200), (ADMIN_TOKEN, 404)] {
        let (status, answer) = api(&env, "DELETE", "/api/schedule", Some(token), &remove);
        assert_eq!(status, expected, "{answer}");
    }
    let (_, names) = api(
        &env,
        "GET",
        "/api/schedule",
        Some(ADMIN_TOKEN),
        &Value::Null,
    );
    assert_eq!(names, json!([]));
    // The run stays in the history, and the badge shows it.
    let (status, badge) = env.http_get("/status?schedule=nightly");
    assert_eq!(status, 200);
    assert!(String::from_utf8(badge).unwrap().contains("passing"));
}

#[test]
fn invalid_expressions_and_time_zones_are_refused_with_what_is_wrong() {
    let env = TestEnv::start();
    for (args, why) in [
        (
            vec!["--cron", "0 25 * * *"],
            "hour field `25`: `25` is out of range 0-23",
        ),
        (vec!["--cron", "* * * *"], "expected 5 fields"),
        (vec!["--cron", "0 0 31 2 *"], "never fires"),
        (
            vec!["--cron", "0 2 * * *", "--tz", "Mars/Olympus"],
            "unknown time zone `Mars/Olympus`",
        ),
    ] {
        let mut command = vec!["schedule", "add", "bad", "--test", "true"];
        command.extend(args);
        let out = env.cli(&command);
        assert_eq!(out.code, 4, "{command:?}: {}", out.stderr);
        assert!(out.stderr.contains(why), "{command:?}: {}", out.stderr);
    }
    let listed = env.cli(&["schedule", "list"]).stdout_str();
    assert_eq!(listed, "no schedules\n");
    let out = env.cli(&[
        "schedule",
        "add",
        "zoned",
        "--cron",
        "30 2 * * 1-5",
        "--tz",
        "Europe/Amsterdam",
        "--test",
        "true",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let zoned = shown(&env, "zoned");
    assert_eq!(zoned["time_zone"], "Europe/Amsterdam");
    assert!(
        zoned["next_at"].as_str().unwrap().ends_with(":30:00.000Z"),
        "{zoned:#}"
    );
}

#[test]
fn run_on_schedule_is_registered_updated_and_removed_by_pushes() {
    let env = TestEnv::start();
    let with_schedule = |cron: &str| {
        format!(
            "script:\n  - echo built\nrun_on:\n  push: {{branches: [main]}}\n  schedule: {{branch: main, cron: \"{cron}\", timezone: Europe/Paris}}\n"
        )
    };
    let repo = Repo::new(
        &env,
        "nightly-repo",
        &[("zeroCI.yaml", &with_schedule("0 3 * * *"))],
    );
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let schedule = shown(&env, "nightly-repo@main");
    assert_eq!(schedule["origin"], "run_on");
    assert_eq!(schedule["cron"], "0 3 * * *");
    assert_eq!(schedule["time_zone"], "Europe/Paris");
    assert_eq!(schedule["ref"], "main");

    // A run by hand tests the branch's head through the repository's own file.
    let out = env.cli(&["schedule", "run", "nightly-repo@main", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = out.json();
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["schedule"]["name"], "nightly-repo@main");
    assert_eq!(env.raw_log(run["id"].as_u64().unwrap(), None), b"built\n");

    repo.commit(&[("zeroCI.yaml", &with_schedule("0 4 * * *"))], "later");
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    assert_eq!(shown(&env, "nightly-repo@main")["cron"], "0 4 * * *");

    repo.commit(
        &[("zeroCI.yaml", "script:\n  - echo built\n")],
        "no more nights",
    );
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let gone = env.cli(&["schedule", "show", "nightly-repo@main"]);
    assert_eq!(gone.code, 4);
    assert!(gone.stderr.contains("no schedule named"), "{}", gone.stderr);
}

#[test]
fn a_paused_schedule_does_not_fire_and_a_resumed_one_does_not_catch_up() {
    let env = TestEnv::start();
    add_every_second(&env, "pausing");
    runs_when(&env, "pausing", "a first run", |runs| !runs.is_empty());
    pause(&env, "pausing");
    let paused_at = zeroci::now_unix_ms();
    let count = shown(&env, "pausing")["runs"].as_array().unwrap().len();
    // Absence is what is tested: ticks pass while it is paused.
    std::thread::sleep(Duration::from_millis(2500));
    let still = shown(&env, "pausing")["runs"].as_array().unwrap().len();
    // A tick being fired as the pause landed may still be recorded.
    assert!(
        still <= count + 1,
        "no runs while paused: {count} then {still}"
    );
    let out = env.cli(&["schedule", "resume", "pausing"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout_str().contains("resumed; next run"),
        "{}",
        out.stdout_str()
    );
    let runs = runs_when(&env, "pausing", "a run after resuming", |runs| {
        runs.iter().any(|r| due_at(r) > paused_at + 2500)
    });
    pause(&env, "pausing");
    let resumed = runs.iter().find(|r| due_at(r) > paused_at + 2500).unwrap();
    assert_eq!(
        resumed["schedule"]["late"], false,
        "no catching up on paused ticks: {resumed:#}"
    );
    assert!(
        runs.iter()
            .all(|r| !(paused_at + 1000..paused_at + 2500).contains(&due_at(r))),
        "nothing fired for the paused ticks"
    );
}
