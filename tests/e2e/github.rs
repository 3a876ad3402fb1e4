//! GitHub webhooks against a stand-in GitHub API on localhost: signed deliveries built here, the
//! pipeline file served from a real local repository, commit statuses recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use crate::harness::{Repo, Settings, StandIn, TestEnv};

const SECRET: &str = "webhook-s3cret";

/// The fake GitHub: serves contents from a local repository, records statuses.
struct FakeGitHub {
    addr: String,
    statuses: Arc<Mutex<Vec<(String, Value)>>>,
    repo: Arc<Mutex<std::path::PathBuf>>,
    /// While set, the contents API answers 503 (an outage of GitHub's API, not of its git service).
    outage: Arc<AtomicBool>,
    _server: StandIn,
}

#[derive(Clone)]
struct Shared {
    repo: Arc<Mutex<std::path::PathBuf>>,
    outage: Arc<AtomicBool>,
    statuses: Arc<Mutex<Vec<(String, Value)>>>,
}

impl FakeGitHub {
    fn start() -> FakeGitHub {
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let repo = Arc::new(Mutex::new(std::path::PathBuf::new()));
        let outage = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            repo: repo.clone(),
            outage: outage.clone(),
            statuses: statuses.clone(),
        };
        let app = axum::Router::new()
            .route("/repos/{owner}/{repo}/contents/{*path}", get(contents))
            .route("/repos/{owner}/{repo}/statuses/{sha}", post(status))
            .route("/repos/{owner}/{repo}/branches/{branch}", get(branch))
            // Git's "dumb HTTP" protocol: plain files of the repository, so the agent can clone.
            .route("/acme/widget.git/{*path}", get(git_file))
            .with_state(shared);
        let server = StandIn::serve(app);
        FakeGitHub {
            addr: server.addr.clone(),
            statuses,
            repo,
            outage,
            _server: server,
        }
    }

    /// The repository whose files the contents API serves.
    fn serve(&self, repo: &Repo) {
        *self.repo.lock().unwrap() = repo.path.clone();
    }

    fn statuses_for(&self, sha: &str) -> Vec<Value> {
        self.statuses
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == sha)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn contents(
    State(shared): State<Shared>,
    Path((_owner, _repo, path)): Path<(String, String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if shared.outage.load(Ordering::SeqCst) {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            r#"{"message":"Service Unavailable"}"#,
        )
            .into_response();
    }
    let rev = query.get("ref").cloned().unwrap_or_else(|| "HEAD".into());
    let repo = shared.repo.lock().unwrap().clone();
    let out = std::process::Command::new("git")
        .current_dir(&repo)
        .args(["show", &format!("{rev}:{path}")])
        .output()
        .unwrap();
    if !out.status.success() {
        return (
            axum::http::StatusCode::NOT_FOUND,
            r#"{"message":"Not Found"}"#,
        )
            .into_response();
    }
    let body = json!({
        "type": "file", "name": path, "path": path, "size": out.stdout.len(), "encoding": "base64",
        "content": base64::engine::general_purpose::STANDARD.encode(&out.stdout), "sha": "0",
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn branch(
    State(shared): State<Shared>,
    Path((_owner, _repo, branch)): Path<(String, String, String)>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let repo = shared.repo.lock().unwrap().clone();
    let out = std::process::Command::new("git")
        .current_dir(&repo)
        .args(["rev-parse", "--verify", &branch])
        .output()
        .unwrap();
    if !out.status.success() {
        return (
            axum::http::StatusCode::NOT_FOUND,
            r#"{"message":"Branch not found"}"#,
        )
            .into_response();
    }
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let body = json!({ "name": branch, "commit": { "sha": sha } });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn git_file(
    State(shared): State<Shared>,
    Path(path): Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let repo = shared.repo.lock().unwrap().clone();
    if path.contains("..") {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    }
    match std::fs::read(repo.join(".git").join(&path)) {
        Ok(bytes) => bytes.into_response(),
        Err(_) => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

async fn status(
    State(shared): State<Shared>,
    Path((_owner, _repo, sha)): Path<(String, String, String)>,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    shared.statuses.lock().unwrap().push((sha, value));
    (
        axum::http::StatusCode::CREATED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

fn settings(fake: &FakeGitHub, extra: &str) -> Settings {
    Settings {
        extra: format!(
            "[github]\nrepos = [\"acme/widget\"]\nwebhook_secret = \"{SECRET}\"\napi_url = \"http://{}\"\naccess_token = \"tok-123456\"\nmax_body_bytes = 65536\n{extra}",
            fake.addr
        ),
        ..Settings::default()
    }
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn push_payload(repo: &Repo, branch: &str, after: &str) -> Vec<u8> {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000001",
        "after": after,
        "deleted": after.chars().all(|c| c == '0'),
        "repository": { "full_name": "acme/widget", "clone_url": repo.path_str() },
        "pusher": { "name": "octocat" },
        "head_commit": { "message": "change", "author": { "name": "Octo Cat" } },
    })
    .to_string()
    .into_bytes()
}

/// POSTs a delivery to the controller; returns the status code and the JSON answer.
fn deliver(
    env: &TestEnv,
    event: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<String>,
) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&env.http_addr).unwrap();
    let mut head = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: ci\r\nConnection: close\r\nContent-Type: application/json\r\nX-GitHub-Event: {event}\r\nX-GitHub-Delivery: {delivery}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(signature) = signature {
        head.push_str(&format!("X-Hub-Signature-256: {signature}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A refused oversized body may close the connection before it is all sent.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b.trim()).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

fn jobs(env: &TestEnv) -> Vec<Value> {
    env.cli(&["jobs", "--json", "--limit", "100"])
        .json()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn signed_push_runs_the_commit_and_sets_pending_then_success_statuses() {
    let fake = FakeGitHub::start();
    let secret = "[repos.\"Acme/Widget\"]\nsecrets = { DEPLOY_KEY = \"deploy-123456\" }\n";
    let env = TestEnv::start_with(settings(&fake, secret));
    let yaml = "script:\n  - echo \"built $ZEROCI_BRANCH${DEPLOY_KEY:+ with-secret}\"\n";
    let repo = Repo::new(&env, "widget", &[("zeroCI.yaml", yaml)]);
    fake.serve(&repo);
    let sha = repo.commit(&[("a", "1")], "work on a branch with slashes");
    let body = push_payload(&repo, "feature/x/y", &sha);
    let (status, answer) = deliver(&env, "push", "d-1", &body, Some(sign(&body)));
    assert_eq!(status, 202, "{answer}");
    let id = answer["job"].as_u64().unwrap();
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    assert_eq!(job["repo"], "acme/widget");
    assert_eq!(job["ref"], "feature/x/y");
    assert_eq!(job["committer"], "Octo Cat", "the head commit's author");
    assert_eq!(env.raw_log(id, None), b"built feature/x/y with-secret\n");
    // Statuses are sent in order by one task; wait for the final one to land.
    let statuses = zeroci_testkit::wait_for("the pending and final statuses", || {
        let statuses = fake.statuses_for(&sha);
        (statuses.len() >= 2).then_some(statuses)
    });
    assert_eq!(statuses[0]["state"], "pending");
    assert_eq!(statuses[1]["state"], "success");
    assert_eq!(statuses[1]["context"], "continuous-integration/ZeroCI");
    assert!(
        statuses[1]["target_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/jobs/{id}"))
    );
    // A pull request from a fork: the head commit is tested, the status goes to the base repository.
    let pr_sha = repo.commit(&[("pr", "1")], "pull request work");
    let pr = json!({
        "action": "synchronize", "number": 7,
        "pull_request": {
            "number": 7,
            "head": { "sha": pr_sha, "ref": "fix/typo", "repo": { "full_name": "fork/widget", "clone_url": repo.path_str() } },
            "base": { "ref": "main", "repo": { "full_name": "acme/widget", "clone_url": repo.path_str() } },
        },
        "repository": { "full_name": "acme/widget", "clone_url": repo.path_str() },
        "sender": { "login": "contributor" },
    })
    .to_string();
    let (status, answer) = deliver(
        &env,
        "pull_request",
        "pr-1",
        pr.as_bytes(),
        Some(sign(pr.as_bytes())),
    );
    assert_eq!(status, 202, "{answer}");
    let pr_job = env.wait_job(answer["job"].as_u64().unwrap());
    assert_eq!(pr_job["commit"], pr_sha.as_str());
    assert_eq!(pr_job["ref"], "fix/typo");
    assert!(
        pr_job["triggered_by"]
            .as_str()
            .unwrap()
            .contains("pull_request by contributor"),
        "{pr_job:#}"
    );
    // A fork's code never sees the repository's secrets (nor the token).
    let pr_id = pr_job["id"].as_u64().unwrap();
    assert_eq!(env.raw_log(pr_id, None), b"built fix/typo\n");
    let closed = pr.replace("synchronize", "closed");
    let (status, answer) = deliver(
        &env,
        "pull_request",
        "pr-2",
        closed.as_bytes(),
        Some(sign(closed.as_bytes())),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer["ignored"].is_string());
    // The same delivery again starts nothing.
    let (status, answer) = deliver(&env, "push", "d-1", &body, Some(sign(&body)));
    assert_eq!(status, 200);
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("handled already"),
        "{answer}"
    );
    // Nor does the same signed body replayed under a new delivery id, or under none.
    for replayed_as in ["d-replayed", ""] {
        let (status, answer) = deliver(&env, "push", replayed_as, &body, Some(sign(&body)));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["ignored"], "a delivery with this very body was handled already",
            "{answer}"
        );
    }
    assert_eq!(jobs(&env).len(), 2);
}

#[test]
fn bad_missing_oversized_unknown_ping_deleted_and_filtered_deliveries_start_nothing() {
    let fake = FakeGitHub::start();
    let env = TestEnv::start_with(settings(&fake, ""));
    let yaml = "script:\n  - echo hi\nrun_on:\n  push: {branches: [main]}\n";
    let repo = Repo::new(&env, "widget", &[("zeroCI.yaml", yaml)]);
    fake.serve(&repo);
    let sha = repo.commit(&[("b", "1")], "b");
    let body = push_payload(&repo, "main", &sha);

    assert_eq!(
        deliver(&env, "push", "x1", &body, Some("sha256=00".into())).0,
        401
    );
    let mut forged = body.clone();
    forged[10] ^= 1;
    assert_eq!(
        deliver(&env, "push", "x2", &forged, Some(sign(&body))).0,
        401
    );
    assert_eq!(deliver(&env, "push", "x3", &body, None).0, 401);
    let huge = vec![b' '; 100_000];
    assert_eq!(deliver(&env, "push", "x4", &huge, Some(sign(&huge))).0, 413);

    let ping = json!({"zen": "Keep it logically awesome.", "hook_id": 1, "repository": {"full_name": "acme/widget"}}).to_string();
    let (status, answer) = deliver(
        &env,
        "ping",
        "x5",
        ping.as_bytes(),
        Some(sign(ping.as_bytes())),
    );
    assert_eq!((status, answer["message"].as_str()), (200, Some("pong")));

    let other = String::from_utf8(body.clone())
        .unwrap()
        .replace("acme/widget", "evil/repo");
    let (status, answer) = deliver(
        &env,
        "push",
        "x6",
        other.as_bytes(),
        Some(sign(other.as_bytes())),
    );
    assert_eq!(status, 200);
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{answer}"
    );

    let deleted = push_payload(&repo, "main", "0000000000000000000000000000000000000000");
    let (status, answer) = deliver(&env, "push", "x7", &deleted, Some(sign(&deleted)));
    assert_eq!(status, 200);
    assert!(
        answer["ignored"].as_str().unwrap().contains("deleted"),
        "{answer}"
    );

    // run_on allows pushes to main only.
    let elsewhere = push_payload(&repo, "develop", &sha);
    let (status, answer) = deliver(&env, "push", "x8", &elsewhere, Some(sign(&elsewhere)));
    assert_eq!(status, 200);
    assert!(
        answer["ignored"].as_str().unwrap().contains("run_on"),
        "{answer}"
    );
    assert!(jobs(&env).is_empty());

    let (status, _) = deliver(&env, "push", "x9", &body, Some(sign(&body)));
    assert_eq!(status, 202);
    assert_eq!(jobs(&env).len(), 1);
}

#[test]
fn a_burst_of_twenty_pushes_tests_every_commit() {
    let fake = FakeGitHub::start();
    let env = TestEnv::start_with(Settings {
        workers: 3,
        ..settings(&fake, "")
    });
    let repo = Repo::new(
        &env,
        "widget",
        &[("zeroCI.yaml", "script:\n  - cat counter\n")],
    );
    fake.serve(&repo);
    let mut commits = Vec::new();
    for n in 0..20 {
        let sha = repo.commit(&[("counter", &n.to_string())], "burst");
        let body = push_payload(&repo, "main", &sha);
        let (status, answer) = deliver(
            &env,
            "push",
            &format!("burst-{n}"),
            &body,
            Some(sign(&body)),
        );
        assert_eq!(status, 202, "{answer}");
        commits.push((answer["job"].as_u64().unwrap(), sha, n));
    }
    for (id, sha, n) in commits {
        let job = env.wait_job(id);
        assert_eq!(job["status"], "success", "job {id}: {job}");
        assert_eq!(job["commit"], sha);
        // The step alone: a clone retried after a concurrent push leaves a note in the checkout log.
        assert_eq!(
            env.raw_log(id, Some("cat counter")),
            n.to_string().into_bytes()
        );
    }
}

#[test]
fn with_coalescing_a_newer_commit_supersedes_the_queued_ones_visibly() {
    let fake = FakeGitHub::start();
    let extra = "[repos.\"acme/widget\"]\ncoalesce = [\"main\"]\n";
    let env = TestEnv::start_with(Settings {
        workers: 1,
        ..settings(&fake, extra)
    });
    // The gate lives in the repository's .git: a sandboxed job sees the repository it clones from,
    // nothing else of the host.
    let repo = Repo::new(&env, "widget", &[("README", "widget")]);
    let open = repo.path.join(".git/gate-open");
    let script = format!(
        "script:\n  - while [ ! -e {} ]; do sleep 0.02; done; cat counter\n",
        open.display()
    );
    repo.commit(&[("zeroCI.yaml", &script)], "pipeline");
    fake.serve(&repo);
    let mut ids = Vec::new();
    for n in 0..5 {
        let sha = repo.commit(&[("counter", &n.to_string())], "burst");
        let body = push_payload(&repo, "main", &sha);
        let (status, answer) = deliver(&env, "push", &format!("c-{n}"), &body, Some(sign(&body)));
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["job"].as_u64().unwrap());
        if n == 0 {
            // Let the first job take the only worker before the others arrive.
            zeroci_testkit::wait_for("the first job to leave the queue", || {
                (env.job(ids[0])["status"] != "queued").then_some(())
            });
        }
    }
    std::fs::write(&open, "").unwrap();
    assert_eq!(env.wait_job(ids[0])["status"], "success");
    // Each queued commit gave way to the next one, the last one ran.
    for pair in ids[1..].windows(2) {
        let job = env.wait_job(pair[0]);
        assert_eq!(job["status"], "cancelled", "{job:#}");
        assert!(
            job["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("superseded by job {}", pair[1])),
            "{job:#}"
        );
    }
    assert_eq!(env.wait_job(ids[4])["status"], "success");
    assert_eq!(env.raw_log(ids[4], None), b"4");
}

#[test]
fn a_manual_run_of_a_configured_repository_tests_the_branch_head_from_github() {
    let fake = FakeGitHub::start();
    let env = TestEnv::start_with(settings(&fake, ""));
    let repo = Repo::new(
        &env,
        "widget",
        &[("zeroCI.yaml", "script:\n  - git rev-parse HEAD\n")],
    );
    let sha = repo.commit(&[("n", "1")], "head of release/1.x");
    let out = std::process::Command::new("git")
        .current_dir(&repo.path)
        .args(["branch", "release/1.x"])
        .output()
        .unwrap();
    assert!(out.status.success());
    repo.commit(&[("n", "2")], "main moves on");
    let out = std::process::Command::new("git")
        .current_dir(&repo.path)
        .args(["update-server-info"])
        .output()
        .unwrap();
    assert!(out.status.success());
    fake.serve(&repo);
    let out = env.cli(&["run", "--repo", "acme/widget", "--branch", "release/1.x"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_str(), format!("{sha}\n"));
    let job = env.cli(&["jobs", "--json"]).json()[0].clone();
    assert_eq!(job["repo"], "acme/widget");
    assert_eq!(job["ref"], "release/1.x");
    // Unknown repositories are refused with a clear message.
    let out = env.cli(&["run", "--repo", "evil/repo", "--branch", "main"]);
    assert_eq!(out.code, 4);
    assert!(
        out.stderr.contains("not in [github] repos"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_fork_pull_request_is_refused_by_unisolated_machines() {
    let fake = FakeGitHub::start();
    let env = TestEnv::start_with(settings(
        &fake,
        "[provisioner.local]\nisolation = \"none\"\n",
    ));
    let repo = Repo::new(
        &env,
        "widget",
        &[("zeroCI.yaml", "script:\n  - echo ran\n")],
    );
    fake.serve(&repo);
    let sha = repo.commit(&[("pr", "1")], "pull request work");
    let pr = json!({
        "action": "opened", "number": 8,
        "pull_request": {
            "number": 8,
            "head": { "sha": sha, "ref": "evil", "repo": { "full_name": "fork/widget", "clone_url": repo.path_str() } },
            "base": { "ref": "main", "repo": { "full_name": "acme/widget", "clone_url": repo.path_str() } },
        },
        "repository": { "full_name": "acme/widget", "clone_url": repo.path_str() },
        "sender": { "login": "stranger" },
    })
    .to_string();
    let (status, answer) = deliver(
        &env,
        "pull_request",
        "pr-fork",
        pr.as_bytes(),
        Some(sign(pr.as_bytes())),
    );
    assert_eq!(status, 202, "{answer}");
    let job = env.wait_job(answer["job"].as_u64().unwrap());
    assert_eq!(job["status"], "error", "{job:#}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("never runs unisolated"),
        "{job:#}"
    );
    assert!(
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"] != "echo ran")
    );
}

#[test]
fn a_push_that_run_on_filters_out_still_registers_and_removes_its_branch_schedule() {
    let fake = FakeGitHub::start();
    let env = TestEnv::start_with(settings(&fake, ""));
    let nightly = "script:\n  - echo nightly\nrun_on:\n  push: {branches: [main]}\n  schedule: {branch: nightly, cron: \"0 3 * * *\"}\n";
    let repo = Repo::new(&env, "widget", &[("zeroCI.yaml", nightly)]);
    fake.serve(&repo);
    let sha = repo.commit(&[("a", "1")], "on the nightly branch");
    let body = push_payload(&repo, "nightly", &sha);
    let (status, answer) = deliver(&env, "push", "d-n1", &body, Some(sign(&body)));
    assert_eq!(status, 200, "run_on.push has only main: {answer}");
    let shown = env.cli(&["schedule", "show", "acme/widget@nightly", "--json"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let schedule = shown.json();
    assert_eq!(schedule["origin"], "run_on");
    assert_eq!(schedule["cron"], "0 3 * * *");
    assert!(jobs(&env).is_empty(), "the push itself started nothing");

    let sha = repo.commit(
        &[(
            "zeroCI.yaml",
            "script:\n  - echo nightly\nrun_on:\n  push: {branches: [main]}\n",
        )],
        "no more nights",
    );
    let body = push_payload(&repo, "nightly", &sha);
    let (status, _) = deliver(&env, "push", "d-n2", &body, Some(sign(&body)));
    assert_eq!(status, 200);
    let gone = env.cli(&["schedule", "show", "acme/widget@nightly"]);
    assert!(gone.stderr.contains("no schedule named"), "{}", gone.stderr);
}

#[test]
fn deliveries_while_the_api_is_down_are_accepted_and_run_on_is_applied_at_the_checkout() {
    let fake = FakeGitHub::start();
    let env = TestEnv::start_with(settings(&fake, ""));
    let yaml = "script:\n  - echo tested\nrun_on:\n  push: {branches: [main]}\n";
    let repo = Repo::new(&env, "widget", &[("zeroCI.yaml", yaml)]);
    fake.serve(&repo);
    fake.outage.store(true, Ordering::SeqCst);

    // run_on takes pushes to main: accepted although the file could not be read, and tested.
    let main_sha = repo.commit(&[("a", "1")], "on main");
    let body = push_payload(&repo, "main", &main_sha);
    let (status, answer) = deliver(&env, "push", "down-1", &body, Some(sign(&body)));
    assert_eq!(status, 202, "{answer}");
    assert!(
        answer["note"]
            .as_str()
            .unwrap()
            .contains("run_on is checked at the checkout")
    );
    let job = env.wait_job(answer["job"].as_u64().unwrap());
    assert_eq!(job["status"], "success", "{job:#}");

    // A push to another branch: accepted, then ends visibly skipped by the same rule the trigger
    // would have applied; nothing ran, and the commit's pending status ends.
    let dev_sha = repo.commit(&[("b", "2")], "on dev");
    let body = push_payload(&repo, "dev", &dev_sha);
    let (status, answer) = deliver(&env, "push", "down-2", &body, Some(sign(&body)));
    assert_eq!(status, 202, "{answer}");
    let id = answer["job"].as_u64().unwrap();
    let job = env.wait_job(id);
    assert_eq!(job["status"], "skipped", "{job:#}");
    assert_eq!(job["reason"], "run_on.push.branches does not include dev");
    let names: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["checkout"], "nothing but the checkout: {job:#}");
    let shown = env.cli(&["show", &id.to_string()]);
    assert_eq!(
        shown.code, 0,
        "a skipped job is not a failure: {}",
        shown.stderr
    );
    assert!(
        shown.stdout_str().contains("skipped"),
        "{}",
        shown.stdout_str()
    );

    // The API is back: the same rule is applied at the door again.
    fake.outage.store(false, Ordering::SeqCst);
    let body = push_payload(&repo, "dev", &repo.commit(&[("c", "3")], "dev again"));
    let (status, answer) = deliver(&env, "push", "down-3", &body, Some(sign(&body)));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(jobs(&env).len(), 2);
    // Statuses go out in order: once a later job's final status is there, the skipped commit's
    // would be too. It has none, as a push filtered out at the door has none (a skipped job must
    // not turn a required check green).
    let later = repo.commit(&[("d", "4")], "main again");
    let body = push_payload(&repo, "main", &later);
    let (status, answer) = deliver(&env, "push", "down-4", &body, Some(sign(&body)));
    assert_eq!(status, 202, "{answer}");
    env.wait_job(answer["job"].as_u64().unwrap());
    zeroci_testkit::wait_for("the later commit's final status", || {
        (fake.statuses_for(&later).len() >= 2).then_some(())
    });
    assert!(
        fake.statuses_for(&dev_sha).is_empty(),
        "{:?}",
        fake.statuses_for(&dev_sha)
    );
}
