//! "Sign in with GitHub" for the pages, when `[github] oauth_client_id` and `oauth_client_secret` name
//! an OAuth app: `GET /login/github` sends the browser to GitHub with a fresh `state` remembered in a
//! signed cookie; `GET /login/github/callback` checks that state against the cookie, asks GitHub who
//! approved ([`OAuthApp::account_of`]) and signs them in with the role `[web] github_admins` /
//! `github_viewers` gives them. An account in neither list is refused and told so.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::actions::escape;
use super::session::{Sessions, safe_next};
use crate::github::oauth::OAuthApp;

/// The OAuth app and the address GitHub sends the browser back to.
pub struct GitHubSignIn {
    app: OAuthApp,
    /// `<domain>/login/github/callback`: registered as the app's callback URL.
    redirect_uri: String,
}

/// What the router carries: `None` when no OAuth app is configured.
pub type MaybeGitHubSignIn = Option<Arc<GitHubSignIn>>;

impl GitHubSignIn {
    pub fn new(app: OAuthApp, domain: &str) -> GitHubSignIn {
        GitHubSignIn {
            app,
            redirect_uri: format!("{}/login/github/callback", domain.trim_end_matches('/')),
        }
    }
}

fn now() -> i64 {
    zeroci::now_unix_ms() / 1000
}

/// A short page saying why the sign-in did not happen, with the way back.
fn refused(status: StatusCode, why: &str) -> Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in · ZeroCI</title></head>\
         <body style=\"font:15px system-ui,sans-serif;max-width:420px;margin:40px auto\"><h1>Not signed in</h1>\
         <p>{}</p><p><a href=\"/login\">Sign in again</a></p></body></html>",
        escape(why)
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

/// `GET /login/github?next=/jobs/3`.
pub async fn start(
    Extension(sessions): Extension<Arc<Sessions>>,
    Extension(github): Extension<MaybeGitHubSignIn>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(github) = github else {
        return (StatusCode::NOT_FOUND, "GitHub sign-in is not configured\n").into_response();
    };
    let next = safe_next(query.get("next").map(String::as_str));
    let (state, cookie) = sessions.github_sign_in_start(&next, now());
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::LOCATION,
                github.app.authorize_url(&github.redirect_uri, &state),
            ),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

/// `GET /login/github/callback?code=…&state=…` (or `?error=access_denied` when the person declined).
pub async fn callback(
    Extension(sessions): Extension<Arc<Sessions>>,
    Extension(github): Extension<MaybeGitHubSignIn>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(github) = github else {
        return (StatusCode::NOT_FOUND, "GitHub sign-in is not configured\n").into_response();
    };
    if query.contains_key("error") {
        return refused(StatusCode::FORBIDDEN, "GitHub did not confirm the sign-in.");
    }
    let (Some(code), Some(state)) = (query.get("code"), query.get("state")) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "The answer from GitHub was incomplete.",
        );
    };
    let Some(next) = sessions.github_sign_in_finish(&headers, state, now()) else {
        tracing::warn!("GitHub sign-in refused: its state does not match this browser's");
        return refused(
            StatusCode::FORBIDDEN,
            "This sign-in was not started in this browser, or took longer than ten minutes.",
        );
    };
    let (login, id) = match github.app.account_of(code, &github.redirect_uri).await {
        Ok(account) => account,
        Err(error) => {
            tracing::warn!(%error, "GitHub sign-in failed");
            return refused(
                StatusCode::BAD_GATEWAY,
                &format!("GitHub could not confirm who you are: {error}"),
            );
        }
    };
    let Some(role) = sessions.role_of_github_account(&login, id) else {
        tracing::warn!(
            login,
            "GitHub sign-in refused: the account is not listed in [web]"
        );
        return refused(
            StatusCode::FORBIDDEN,
            &format!(
                "The GitHub account {login} may not sign in here. An administrator can add it to [web] github_admins or github_viewers."
            ),
        );
    };
    tracing::info!(login, ?role, "signed in with GitHub");
    let session = sessions.set_cookie(&sessions.issue(role, now()));
    // A page that moves on by itself rather than a redirect: the browser came from GitHub, and a
    // redirect in that same navigation would not yet send the new, same-site-only session cookie.
    let (escaped, login) = (escape(&next), escape(&login));
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={escaped}\"><title>Signed in · ZeroCI</title></head>\
         <body><p>Signed in as {login}. <a href=\"{escaped}\">Continue</a></p></body></html>"
    );
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
    for cookie in [session, sessions.github_sign_in_clear()] {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}
