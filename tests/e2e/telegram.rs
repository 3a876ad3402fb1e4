//! Telegram messages through the real teloxide client against a stand-in Bot API on localhost: the
//! message and its Result button for a finished job, flood control (429 `retry_after`) waited out,
//! and a refused chat counted as a notification failure without touching the job.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::harness::{Repo, Settings, StandIn, TestEnv, pipeline};

const TOKEN: &str = "123456:test-token";

/// The Bot API's `sendMessage`: the first call answers 429 (retry after 1 s), the second 500 when
/// `server_error` is set (teloxide itself then waits 10 s), later ones accept, except for chat
/// `-404`, which does not exist.
#[derive(Clone, Default)]
struct FakeBotApi {
    sent: Arc<Mutex<Vec<Value>>>,
    server_error: bool,
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn send_message(
    State(fake): State<FakeBotApi>,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // `<api_url>bot<token>/<method>`, the token's colon possibly escaped.
    let path = uri.path().replace("%3A", ":");
    if path != format!("/bot{TOKEN}/SendMessage") && path != format!("/bot{TOKEN}/sendMessage") {
        eprintln!("fake Bot API: unexpected {path}");
        return reply(
            StatusCode::NOT_FOUND,
            json!({"ok": false, "error_code": 404, "description": "Not Found"}),
        );
    }
    let mut sent = fake.sent.lock().unwrap();
    sent.push(request.clone());
    if sent.len() == 1 {
        return reply(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}),
        );
    }
    if sent.len() == 2 && fake.server_error {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"ok": false, "error_code": 500, "description": "Internal Server Error"}),
        );
    }
    // Chat -777 stands for real Telegram, which takes no button to a private address.
    if request["chat_id"] == json!(-777) && request.get("reply_markup").is_some() {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"ok": false, "error_code": 400, "description": "Bad Request: BUTTON_URL_INVALID"}),
        );
    }
    if request["chat_id"] == json!(-404) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}),
        );
    }
    reply(
        StatusCode::OK,
        json!({"ok": true, "result": {
            "message_id": sent.len(),
            "date": 1_700_000_000,
            "chat": {"id": request["chat_id"], "type": "supergroup", "title": "ci"},
            "text": request["text"],
        }}),
    )
}

fn start_fake() -> (FakeBotApi, String, StandIn) {
    start_fake_with(false)
}

fn start_fake_with(server_error: bool) -> (FakeBotApi, String, StandIn) {
    let fake = FakeBotApi {
        server_error,
        ..FakeBotApi::default()
    };
    let app = axum::Router::new()
        .fallback(post(send_message))
        .with_state(fake.clone());
    let server = StandIn::serve(app);
    let url = format!("http://{}/", server.addr);
    (fake, url, server)
}

fn settings(api_url: &str, chat: &str) -> Settings {
    Settings {
        extra: format!(
            "[telegram]\ntoken = \"{TOKEN}\"\nchat_id = \"{chat}\"\napi_url = \"{api_url}\"\n"
        ),
        ..Settings::default()
    }
}

fn notification_failures(env: &TestEnv) -> u64 {
    let (_, body) = env.http_get("/metrics");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("zeroci_notification_failures_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the failures counter")
}

#[test]
fn a_finished_job_is_announced_with_a_result_button_after_waiting_out_flood_control() {
    let (fake, api_url, _bot_api) = start_fake_with(true);
    let env = TestEnv::start_with(settings(&api_url, "-1001234"));
    let yaml = r#"bin_path: out/app.bin
script:
  - name: tests
    cmd: printf '<testsuite name="s"><testcase classname="c" name="&lt;bad&gt;"><failure message="expected 1 &amp; got 2">trace</failure></testcase><testcase classname="c" name="fine"/></testsuite>' > "$ZEROCI_TEST_XML"
  - mkdir -p out && echo bin > out/app.bin
  - "false"
"#;
    let repo = Repo::new(&env, "announced", &[("zeroCI.yaml", yaml)]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "failure");
    let sent = zeroci_testkit::wait_for("the message after the 429 and the 500", || {
        let sent = fake.sent.lock().unwrap();
        (sent.len() == 3).then(|| sent.clone())
    });
    assert!(
        sent[0] == sent[1] && sent[1] == sent[2],
        "the same message each time"
    );
    let message = &sent[2];
    assert_eq!(message["chat_id"], json!(-1001234));
    assert_eq!(message["parse_mode"], "HTML");
    let text = message["text"].as_str().unwrap();
    assert!(text.starts_with("❌ <b>failed</b>"), "{text}");
    assert!(
        text.contains("<b>announced</b>") && text.contains("• <code>false</code>"),
        "{text}"
    );
    assert!(
        text.contains("</code> by t\n"),
        "the committer, as the CLI read it: {text}"
    );
    assert!(
        text.contains("failed tests:\n• <code>c.&lt;bad&gt;</code>: expected 1 &amp; got 2"),
        "{text}"
    );
    let buttons = &message["reply_markup"]["inline_keyboard"][0];
    assert_eq!(buttons[0]["text"], "Result");
    assert!(
        buttons[0]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/jobs/{id}")),
        "{buttons}"
    );
    assert_eq!(buttons[1]["text"], "Artifact");
    assert!(
        buttons[1]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/jobs/{id}/artifacts/out/app.bin")),
        "{buttons}"
    );
    assert_eq!(notification_failures(&env), 0);
}

#[test]
fn a_chat_that_does_not_exist_is_a_counted_failure_and_the_job_is_untouched() {
    let (fake, api_url, _bot_api) = start_fake();
    let env = TestEnv::start_with(settings(&api_url, "-404"));
    let repo = Repo::new(&env, "unheard", &[("zeroCI.yaml", &pipeline(&["true"]))]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    // Recorded on the job once the notifier gave up (`zeroci show --json` and the page say it).
    let json = zeroci_testkit::wait_for("the refusal recorded on the job", || {
        let json = env.job(id);
        json["notification_failures"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
            .then_some(json)
    });
    assert_eq!(json["notification_failures"][0]["notifier"], "telegram");
    assert_eq!(notification_failures(&env), 1, "and counted");
    assert_eq!(
        fake.sent.lock().unwrap().len(),
        2,
        "refused for good: not retried"
    );
    assert!(
        env.controller_log_text().contains("the chat was not found"),
        "the log says what is wrong"
    );
    let shown = env.cli(&["show", &id.to_string()]).stdout_str();
    assert!(
        shown.contains("not notified: telegram: the chat was not found"),
        "{shown}"
    );
    assert_eq!(json["status"], "success", "the job itself is untouched");
    let (_, page) = env.http_get(&format!("/jobs/{id}"));
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains(
            "<dt>Not notified</dt><dd class=\"notify-failure\">telegram: the chat was not found"
        ),
        "{page}"
    );
}

#[test]
fn check_notify_sends_a_test_message_or_says_exactly_what_is_wrong() {
    let (fake, api_url, _bot_api) = start_fake();
    let env = TestEnv::start_with(settings(&api_url, "-1001234"));
    let config = env.home().join("config.toml");
    let check = || {
        std::process::Command::new(crate::harness::bin("zeroci-controller"))
            .arg("--config")
            .arg(&config)
            .arg("check-notify")
            .output()
            .unwrap()
    };
    // The first call meets flood control, waited out.
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("telegram: ok, test message sent"),
        "{stdout}"
    );
    assert!(
        fake.sent.lock().unwrap()[1]["text"]
            .as_str()
            .unwrap()
            .contains("ZeroCI can write here"),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("chat_id = \"-1001234\"", "chat_id = \"-404\"");
    std::fs::write(&config, text).unwrap();
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("telegram: FAILED: the chat was not found"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(TOKEN, "654321:wrong");
    std::fs::write(&config, text).unwrap();
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("the bot token is not valid"), "{stdout}");
}

#[test]
fn a_repository_can_send_only_failures_and_recoveries_to_its_own_chat_and_mute_branches() {
    let (fake, api_url, _bot_api) = start_fake();
    let mut env = TestEnv::start_with(settings(&api_url, "-1001234"));
    let repo = Repo::new(&env, "quiet", &[("zeroCI.yaml", &pipeline(&["true"]))]);
    // Settings for this repository, by its path (known once it exists): the controller restarts. Keyed
    // by the plain path, not `local:PATH`, which would also watch the repository and run every commit
    // a second time beside the submitted jobs.
    let config = env.home().join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[repos.\"{}\".telegram]\nnotify = \"failures-and-recoveries\"\nchat_id = \"-555\"\nmute_branches = [\"wip/*\"]\n",
        repo.path.display()
    ));
    std::fs::write(&config, text).unwrap();
    let addr = env.grpc_addr.clone();
    env.kill_controller();
    env.start_controller(&addr);
    let outcomes = [
        ("true", "success"),
        ("false", "failure"),
        ("true", "success"),
        ("true", "success"),
    ];
    for (i, (command, status)) in outcomes.iter().enumerate() {
        let counter = i.to_string();
        repo.commit(
            &[
                ("zeroCI.yaml", &pipeline(&[command])),
                ("counter", &counter),
            ],
            &format!("change {i}"),
        );
        let id = env.submit(&repo.path);
        assert_eq!(env.wait_job(id)["status"], *status);
    }
    // A muted branch's failure says nothing either.
    zeroci_testkit::git(&repo.path, &["checkout", "-q", "-b", "wip/try"]);
    repo.commit(&[("zeroCI.yaml", &pipeline(&["false"]))], "wip");
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "failure");
    // The two messages (after the first attempt's 429): the failure and the recovery, to -555.
    let sent = zeroci_testkit::wait_for("two messages", || {
        let sent = fake.sent.lock().unwrap();
        (sent.len() >= 3).then(|| sent[1..].to_vec())
    });
    let texts: Vec<&str> = sent.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].starts_with("❌ <b>failed</b> · job #2"),
        "{texts:?}"
    );
    assert!(
        texts[1].starts_with("✅ <b>passed</b> · job #3"),
        "{texts:?}"
    );
    assert!(
        sent.iter().all(|m| m["chat_id"] == serde_json::json!(-555)),
        "{sent:?}"
    );
}

#[test]
fn links_telegram_takes_no_button_for_go_into_the_text() {
    let (fake, api_url, _bot_api) = start_fake();
    let env = TestEnv::start_with(settings(&api_url, "-777"));
    let repo = Repo::new(&env, "private", &[("zeroCI.yaml", &pipeline(&["true"]))]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let last = zeroci_testkit::wait_for("the message without buttons", || {
        let sent = fake.sent.lock().unwrap();
        sent.last()
            .filter(|m| m.get("reply_markup").is_none())
            .cloned()
    });
    let text = last["text"].as_str().unwrap();
    assert!(
        text.ends_with(&format!("/jobs/{id}\">Result</a>")),
        "{text}"
    );
    assert_eq!(notification_failures(&env), 0);
}
