//! "Sign in with GitHub" on the pages, against a stand-in for GitHub's OAuth endpoints and `GET /user`
//! on localhost: the redirect to GitHub, the state checked against the browser's cookie, the code
//! exchanged, the account's role from `[web]`, and every way it is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::harness::{Repo, Settings, StandIn, TestEnv, pipeline};

const CLIENT_ID: &str = "Iv1.app-id";
const CLIENT_SECRET: &str = "app-secret-123";

/// GitHub's token endpoint and `/user`: code `code-LOGIN` is LOGIN's, any other is refused as GitHub
/// does (200 with an error). Records the Accept header of each token request.
struct FakeOAuth {
    addr: String,
    accepts: Arc<Mutex<Vec<String>>>,
    _server: StandIn,
}

impl FakeOAuth {
    fn start() -> FakeOAuth {
        let accepts = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/login/oauth/access_token", post(token))
            .route("/user", get(user))
            .with_state(accepts.clone());
        let server = StandIn::serve(app);
        FakeOAuth {
            addr: server.addr.clone(),
            accepts,
            _server: server,
        }
    }
}

fn json_reply(status: StatusCode, value: Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn token(
    State(accepts): State<Arc<Mutex<Vec<String>>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: HashMap<String, String> = serde_json::from_slice(&body).unwrap_or_default();
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    accepts.lock().unwrap().push(accept.to_string());
    let app_ok = body.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && body.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        && body
            .get("redirect_uri")
            .is_some_and(|u| u.ends_with("/login/github/callback"));
    match body.get("code").and_then(|c| c.strip_prefix("code-")) {
        Some(login) if app_ok => json_reply(
            StatusCode::OK,
            json!({"access_token": format!("gho_{login}"), "token_type": "bearer", "scope": ""}),
        ),
        _ => json_reply(
            StatusCode::OK,
            json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."}),
        ),
    }
}

async fn user(headers: HeaderMap) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match auth.strip_prefix("Bearer gho_") {
        Some(login) => json_reply(StatusCode::OK, json!({"login": login, "id": 1})),
        None => json_reply(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Bad credentials"}),
        ),
    }
}

/// The value of the cookie `name` that a response sets.
fn set_cookie(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.strip_prefix("set-cookie: "))
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap().to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// Starts a sign-in as a browser would: the address GitHub is sent to's `state` and the cookie.
fn start_sign_in(env: &TestEnv, next: &str) -> (String, String) {
    let (code, head, _) = env.http_get_with_head(&format!("/login/github?next={next}"));
    assert_eq!(code, 303, "{head}");
    let location = header(&head, "location").unwrap();
    let fake_base = location.split("/login/oauth/authorize?").next().unwrap();
    assert!(fake_base.starts_with("http://127.0.0.1:"), "{location}");
    // (The harness reads heads in lower case.)
    assert!(
        location.contains(&format!("client_id={}", CLIENT_ID.to_lowercase())),
        "{location}"
    );
    assert!(
        location.contains("%2flogin%2fgithub%2fcallback"),
        "{location}"
    );
    let state = location
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let cookie = set_cookie(&head, "zeroci_github_signin").expect("the sign-in cookie");
    assert!(head.contains("samesite=lax"), "{head}");
    (state.to_string(), format!("zeroci_github_signin={cookie}"))
}

#[test]
fn github_accounts_sign_in_with_their_role_and_everyone_else_is_refused() {
    let fake = FakeOAuth::start();
    let env = TestEnv::start_with(Settings {
        extra: format!(
            "[github]\napi_url = \"http://{}\"\noauth_client_id = \"{CLIENT_ID}\"\noauth_client_secret = \"{CLIENT_SECRET}\"\n\
             [web]\npublic = false\ngithub_admins = [\"OctoCat\"]\ngithub_viewers = [\"hubot\"]\n",
            fake.addr
        ),
        ..Settings::default()
    });
    let repo = Repo::new(&env, "signed", &[("zeroCI.yaml", &pipeline(&["echo hi"]))]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let (_, _, form) = env.http_get_with_head("/login?next=/jobs/1");
    assert!(
        String::from_utf8(form)
            .unwrap()
            .contains("href=\"/login/github?next=%2Fjobs%2F1\">Sign in with GitHub"),
    );

    // An admin: back from GitHub, signed in, sent on to where they were going.
    let next = format!("/jobs/{id}");
    let (state, cookie) = start_sign_in(&env, &next);
    let (code, head, body) = env.http_get_sending(
        &format!("/login/github/callback?code=code-octocat&state={state}"),
        &[("Cookie", &cookie)],
    );
    assert_eq!(code, 200, "{head}");
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains(&format!("content=\"0;url={next}\"")),
        "{body}"
    );
    let session = set_cookie(&head, "zeroci_session").expect("a session");
    assert!(
        head.contains("zeroci_github_signin=; "),
        "the sign-in cookie is cleared: {head}"
    );
    let (code, _, page) =
        env.http_get_sending(&next, &[("Cookie", &format!("zeroci_session={session}"))]);
    let page = String::from_utf8(page).unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains("action=\"/jobs/1/rerun\"") && page.contains("admin"),
        "{page}"
    );
    assert_eq!(fake.accepts.lock().unwrap()[0], "application/json");

    // A viewer reads and has no forms.
    let (state, cookie) = start_sign_in(&env, "/");
    let (code, head, _) = env.http_get_sending(
        &format!("/login/github/callback?code=code-hubot&state={state}"),
        &[("Cookie", &cookie)],
    );
    assert_eq!(code, 200, "{head}");
    let viewer = set_cookie(&head, "zeroci_session").unwrap();
    let (_, _, page) =
        env.http_get_sending(&next, &[("Cookie", &format!("zeroci_session={viewer}"))]);
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("viewer") && !page.contains("/rerun"),
        "{page}"
    );

    // Refused: an account not listed, a state from another browser, no cookie, a bad code, a decline.
    let refusals = [
        (
            "code-mallory",
            true,
            true,
            403,
            "mallory may not sign in here",
        ),
        (
            "code-octocat",
            false,
            true,
            403,
            "not started in this browser",
        ),
        (
            "code-octocat",
            true,
            false,
            403,
            "not started in this browser",
        ),
        ("not-a-code", true, true, 502, "incorrect or expired"),
    ];
    for (code_param, same_state, with_cookie, status, says) in refusals {
        let (state, cookie) = start_sign_in(&env, "/");
        let state = if same_state { state } else { "0".repeat(32) };
        let cookies = if with_cookie {
            vec![("Cookie", cookie.as_str())]
        } else {
            vec![]
        };
        let (code, head, body) = env.http_get_sending(
            &format!("/login/github/callback?code={code_param}&state={state}"),
            &cookies,
        );
        let body = String::from_utf8(body).unwrap();
        assert_eq!(code, status, "{code_param}: {head}{body}");
        assert!(body.contains(says), "{code_param}: {body}");
        assert!(set_cookie(&head, "zeroci_session").is_none(), "{head}");
    }
    let (code, _, _) = env.http_get_with_head("/login/github/callback?error=access_denied&state=x");
    assert_eq!(code, 403);
}

#[test]
fn without_an_oauth_app_there_is_no_github_sign_in() {
    let env = TestEnv::start();
    let (code, _, _) = env.http_get_with_head("/login/github");
    assert_eq!(code, 404);
    let (_, _, form) = env.http_get_with_head("/login");
    assert!(
        !String::from_utf8(form)
            .unwrap()
            .contains("Sign in with GitHub")
    );
}
