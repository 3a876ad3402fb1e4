//! A fake GitHub REST API for tests (axum on 127.0.0.1:0) that answers the way GitHub does: contents as
//! JSON with base64 wrapped at 60 columns, `encoding: none` for files over 1 MiB (bytes only with the
//! raw media type), a branch endpoint, and commit statuses recorded with what was posted. Failures
//! (502s, a fixed refusal with headers) can be scripted, so retry behaviour is observable.
//!
//! Test code only: it lives with the tests, not in the controller's sources.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use percent_encoding::percent_decode_str;

use zeroci_controller::github::api::{ApiSettings, DEFAULT_STATUS_CONTEXT, GitHubApi, RetryPolicy};

pub const TOKEN: &str = "ghp_testtoken123";
pub const REPO: &str = "threefoldtech/zeroCI";
pub const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
pub const YAML: &[u8] =
    b"jobs:\n  - name: tests\n    install: apt-get update\n    script:\n      - pytest\n";

#[derive(Default)]
pub struct FakeState {
    /// (repo, path, ref) → file bytes.
    pub files: HashMap<(String, String, String), Vec<u8>>,
    /// Paths served as GitHub serves files over 1 MiB: `encoding: none`, bytes only as raw.
    pub large: Vec<String>,
    /// (repo, branch) → head SHA.
    pub branches: HashMap<(String, String), String>,
    /// The next this-many status posts answer 502.
    pub status_failures: u32,
    /// Every status post answers this, when set.
    pub status_answer: Option<(u16, Vec<(&'static str, &'static str)>)>,
    /// Every status post as `owner/name@sha` and its JSON body, the ones answered 502 included.
    pub statuses: Vec<(String, serde_json::Value)>,
    /// Every request: (raw path and query, Authorization, Accept).
    pub seen: Vec<(String, Option<String>, Option<String>)>,
    /// Branch names as the server decoded them from the path.
    pub branch_names: Vec<String>,
}

pub type Fake = Arc<Mutex<FakeState>>;

fn note(fake: &Fake, uri: &Uri, headers: &HeaderMap) {
    let h = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let pq = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    fake.lock()
        .expect("lock")
        .seen
        .push((pq, h(header::AUTHORIZATION), h(header::ACCEPT)));
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        value.to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
    )
}

async fn contents(
    State(fake): State<Fake>,
    Path((owner, name, path)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    note(&fake, &uri, &headers);
    let git_ref = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("ref="))
        .map(|r| percent_decode_str(r).decode_utf8_lossy().into_owned())
        .unwrap_or_default();
    let state = fake.lock().expect("lock");
    let repo = format!("{owner}/{name}");
    if path == "docs" {
        return json(
            StatusCode::OK,
            serde_json::json!([{"type": "file", "name": "a.md", "path": "docs/a.md", "size": 3}]),
        );
    }
    let Some(bytes) = state.files.get(&(repo, path.clone(), git_ref)) else {
        return not_found();
    };
    let raw = headers
        .get(header::ACCEPT)
        .is_some_and(|a| a == "application/vnd.github.raw");
    if state.large.contains(&path) {
        if raw {
            return (StatusCode::OK, bytes.clone()).into_response();
        }
        return json(
            StatusCode::OK,
            serde_json::json!({"type": "file", "encoding": "none", "size": bytes.len(),
                "name": path, "path": path, "content": ""}),
        );
    }
    // GitHub wraps base64 content at 60 columns, each line ending in \n.
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let wrapped: String = encoded
        .as_bytes()
        .chunks(60)
        .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({"type": "file", "encoding": "base64", "size": bytes.len(),
            "name": path, "path": path, "sha": "3d21ec53a331a6f037a91c368710b99387d012c1",
            "content": wrapped}),
    )
}

async fn branch(
    State(fake): State<Fake>,
    Path((owner, name, branch)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    note(&fake, &uri, &headers);
    let mut state = fake.lock().expect("lock");
    state.branch_names.push(branch.clone());
    match state
        .branches
        .get(&(format!("{owner}/{name}"), branch.clone()))
    {
        Some(sha) => json(
            StatusCode::OK,
            serde_json::json!({"name": branch, "commit": {"sha": sha, "url": "https://example/x"},
                "protected": false}),
        ),
        None => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "Branch not found"}),
        ),
    }
}

async fn status(
    State(fake): State<Fake>,
    Path((owner, name, sha)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    note(&fake, &uri, &headers);
    let mut state = fake.lock().expect("lock");
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    state
        .statuses
        .push((format!("{owner}/{name}@{sha}"), value.clone()));
    if state.status_failures > 0 {
        state.status_failures -= 1;
        return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response();
    }
    if let Some((code, extra)) = &state.status_answer {
        let mut response = json(
            StatusCode::from_u16(*code).expect("code"),
            serde_json::json!({"message": "Validation Failed"}),
        );
        for (k, v) in extra {
            response
                .headers_mut()
                .insert(*k, axum::http::HeaderValue::from_static(v));
        }
        return response;
    }
    json(
        StatusCode::CREATED,
        serde_json::json!({"id": 1, "state": value["state"]}),
    )
}

/// Serves the fake under `prefix` ("" for api.github.com's layout, "/api/v3" for Enterprise's) and
/// returns a client pointed at it with a fast retry schedule.
pub async fn serve(fake: &Fake, prefix: &str) -> GitHubApi {
    // The prefix is written into each route (not `nest`) so handlers see the full path GitHub would.
    let app = Router::new()
        .route(
            &format!("{prefix}/repos/{{owner}}/{{name}}/contents/{{*path}}"),
            get(contents),
        )
        .route(
            &format!("{prefix}/repos/{{owner}}/{{name}}/branches/{{branch}}"),
            get(branch),
        )
        .route(
            &format!("{prefix}/repos/{{owner}}/{{name}}/statuses/{{sha}}"),
            post(status),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    client(&format!("http://{addr}{prefix}"))
}

pub fn client(api_url: &str) -> GitHubApi {
    GitHubApi::new(&ApiSettings {
        api_url: api_url.to_string(),
        access_token: Some(TOKEN.to_string()),
        status_context: DEFAULT_STATUS_CONTEXT.to_string(),
    })
    .expect("client")
    .with_retry_policy(RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
        attempts: 4,
    })
}

pub fn fake_with_yaml() -> Fake {
    let fake = Fake::default();
    fake.lock().expect("lock").files.insert(
        (REPO.into(), "zeroCI.yaml".into(), SHA.into()),
        YAML.to_vec(),
    );
    fake
}
