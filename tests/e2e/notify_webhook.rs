//! The generic JSON webhook notifier against a receiver on localhost: every status change of a job
//! arrives as JSON, in order, signed with the configured secret; a receiver that fails once (503) gets
//! the delivery again.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::Value;

use crate::harness::{Repo, Settings, StandIn, TestEnv, pipeline};

const SECRET: &str = "webhook-notify-secret";

type Received = Arc<Mutex<Vec<(String, Value)>>>;

async fn receive(
    State((received, calls)): State<(Received, Arc<Mutex<u32>>)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let mut calls = calls.lock().unwrap();
    *calls += 1;
    if *calls == 1 {
        return StatusCode::SERVICE_UNAVAILABLE; // once: the notifier tries again
    }
    let signature = headers
        .get("x-zeroci-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let verdict = if signature == format!("sha256={expected}") {
        "signed".to_string()
    } else {
        format!("bad signature {signature:?}")
    };
    received
        .lock()
        .unwrap()
        .push((verdict, serde_json::from_slice(&body).unwrap()));
    StatusCode::NO_CONTENT
}

#[test]
fn every_change_of_a_job_arrives_signed_and_in_order() {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state((received.clone(), Arc::new(Mutex::new(0))));
    let receiver = StandIn::serve(app);
    let addr = &receiver.addr;
    let env = TestEnv::start_with(Settings {
        extra: format!("[webhook]\nurl = \"http://{addr}/hook\"\nsecret = \"{SECRET}\"\n"),
        ..Settings::default()
    });
    let repo = Repo::new(&env, "hooked", &[("zeroCI.yaml", &pipeline(&["echo hi"]))]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let received = zeroci_testkit::wait_for("the final status at the receiver", || {
        let received = received.lock().unwrap();
        received
            .last()
            .is_some_and(|(_, job)| job["status"] == "success")
            .then(|| received.clone())
    });
    let statuses: Vec<&str> = received
        .iter()
        .map(|(_, job)| job["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"queued"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"success"), "{statuses:?}");
    assert!(
        received.iter().all(|(verdict, _)| verdict == "signed"),
        "{received:?}"
    );
    let last = &received.last().unwrap().1;
    assert_eq!(last["repo"], "hooked");
    assert_eq!(last["committer"], "t", "the commit's author");
    assert!(
        last["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/jobs/{id}"))
    );
    assert_eq!(last["steps"][1]["exit_code"], 0);
}
