//! Signing in and out, and the page forms that act on a job (rerun, cancel): admins only, each POST
//! checked against the session's CSRF token (see [`super::session`]). With `[web] public = false`,
//! [`require_reader`] keeps every page, log and artifact behind a sign-in.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Form, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::session::{Role, Sessions, safe_next};
use crate::api::session::{PeerIp, TokenRefused};
use crate::engine::Engine;
use crate::jobs::JobId;

fn now() -> i64 {
    zeroci::now_unix_ms() / 1000
}

fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// A browser's word that the request comes from another site.
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site")
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /login?next=/jobs/3`: the sign-in form (and "Sign in with GitHub" when an OAuth app is set).
pub async fn login_form(
    Extension(github): Extension<super::github_login::MaybeGitHubSignIn>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(query.get("next").map(String::as_str));
    let with_github = if github.is_some() {
        format!(
            "<p><a href=\"/login/github?next={}\">Sign in with GitHub</a></p><p>or with a token:</p>",
            percent_encoding::utf8_percent_encode(&next, percent_encoding::NON_ALPHANUMERIC)
        )
    } else {
        String::new()
    };
    let next = escape(&next);
    let failed = if query.contains_key("failed") {
        "<p><strong>That token is not valid.</strong></p>"
    } else {
        ""
    };
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Sign in · ZeroCI</title></head>\
         <body style=\"font:15px system-ui,sans-serif;max-width:420px;margin:40px auto\"><h1>Sign in to ZeroCI</h1>{failed}{with_github}\
         <form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <p><label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label></p>\
         <p><button type=\"submit\">Sign in</button></p></form></body></html>"
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// `POST /login` (`token`, `next`): a session cookie for a valid token.
pub async fn login(
    Extension(sessions): Extension<Arc<Sessions>>,
    PeerIp(peer): PeerIp,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if cross_site(&headers) {
        return (StatusCode::FORBIDDEN, "sign in from this site's own page\n").into_response();
    }
    let next = safe_next(form.get("next").map(String::as_str));
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    let role = match sessions.role_of_token_from(peer, token) {
        Ok(role) => Some(role),
        Err(TokenRefused::TooManyFailures(wait)) => {
            let text = format!(
                "too many wrong tokens from this address; try again in {}s\n",
                wait.as_secs().max(1)
            );
            return (StatusCode::TOO_MANY_REQUESTS, text).into_response();
        }
        Err(TokenRefused::Unknown) => None,
    };
    let Some(role) = role else {
        tracing::warn!(?peer, "page sign-in refused: unknown token");
        return see_other(&format!(
            "/login?failed=1&next={}",
            percent_encoding::utf8_percent_encode(&next, percent_encoding::NON_ALPHANUMERIC)
        ));
    };
    let cookie = sessions.set_cookie(&sessions.issue(role, now()));
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, next), (header::SET_COOKIE, cookie)],
    )
        .into_response()
}

/// `POST /logout`.
pub async fn logout(Extension(sessions): Extension<Arc<Sessions>>, headers: HeaderMap) -> Response {
    if cross_site(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "sign out from this site's own page\n",
        )
            .into_response();
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (header::SET_COOKIE, sessions.clear_cookie()),
        ],
    )
        .into_response()
}

/// Who may act is an admin session whose form carries its CSRF token: the refusal for anyone else.
fn refusal(
    sessions: &Sessions,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    back: &str,
) -> Option<Response> {
    let Some(session) = sessions.session(headers, now()) else {
        return Some(see_other(&format!("/login?next={back}")));
    };
    let csrf = form.get("csrf").map(String::as_str).unwrap_or_default();
    if !sessions.genuine_post(&session, headers, csrf) {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "this form did not come from this site's page; reload the page and try again\n",
            )
                .into_response(),
        );
    }
    if session.role != Role::Admin {
        return Some((StatusCode::FORBIDDEN, "only admins can do this\n").into_response());
    }
    None
}

/// `POST /jobs/{id}/rerun`: a new job with the same repository, commit and settings.
pub async fn rerun(
    State(engine): State<Arc<Engine>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Path(id): Path<JobId>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = refusal(&sessions, &headers, &form, &format!("/jobs/{id}")) {
        return refused;
    }
    match engine.rerun(id, "web admin").await {
        Ok(job) => see_other(&format!("/jobs/{}", job.id)),
        Err(error) => (StatusCode::CONFLICT, format!("{error}\n")).into_response(),
    }
}

/// `POST /jobs/{id}/cancel`.
pub async fn cancel(
    State(engine): State<Arc<Engine>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Path(id): Path<JobId>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = refusal(&sessions, &headers, &form, &format!("/jobs/{id}")) {
        return refused;
    }
    match engine
        .cancel(id, "cancelled from the web page".into())
        .await
    {
        Ok(_) => see_other(&format!("/jobs/{id}")),
        Err(error) => (StatusCode::CONFLICT, format!("{error}\n")).into_response(),
    }
}

/// With `[web] public = false`: pages, logs and artifacts only for a signed-in person.
pub async fn require_reader(
    Extension(sessions): Extension<Arc<Sessions>>,
    request: Request,
    next: Next,
) -> Response {
    if sessions.public() || sessions.session(request.headers(), now()).is_some() {
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    see_other(&format!(
        "/login?next={}",
        percent_encoding::utf8_percent_encode(&path, percent_encoding::NON_ALPHANUMERIC)
    ))
}
