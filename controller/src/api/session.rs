//! Signing in to the pages: a token from `[web]` (admin or viewer) exchanged once for a session cookie,
//! and the forms that act (rerun, cancel) protected against cross-site requests.
//!
//! The cookie is `role.expiry.nonce.mac`, signed with HMAC-SHA256 under a key kept in the state
//! directory (0600; made on first use), so sessions survive a restart and no server-side session table
//! exists. It is `HttpOnly` and `SameSite=Strict`, `Secure` when the domain is https. Each form carries
//! a CSRF token derived from the session (HMAC of it under the same key), and a POST is refused unless
//! it carries the right one; a browser's `Sec-Fetch-Site: cross-site` is refused as well.

use std::path::Path;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::api::rate_limit::{FailureLimiter, SIGN_IN};
use crate::config::WebConfig;
use zeroci::encoding::{constant_time_eq, hex, unhex};

/// The cookie's name.
pub const COOKIE: &str = "zeroci_session";
/// How long a sign-in lasts.
const SESSION_SECS: i64 = 7 * 24 * 3600;
/// The cookie that carries a GitHub sign-in across the trip to GitHub and back.
pub const OAUTH_COOKIE: &str = "zeroci_github_signin";
/// How long that trip may take.
const OAUTH_SECS: i64 = 600;

/// What a signed-in person may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Admin,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    fn from_word(word: &str) -> Option<Role> {
        match word {
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The signing key and the sign-in tokens.
pub struct Sessions {
    key: [u8; 32],
    web: WebConfig,
    secure: bool,
    /// Wrong sign-in and API tokens, counted per address: after a burst a guesser gets 429, while a
    /// right token always works.
    token_failures: FailureLimiter,
}

/// Why a token gives no role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefused {
    /// Not one of the configured tokens.
    Unknown,
    /// Too many wrong tokens from this address: not even compared; try again after this long.
    TooManyFailures(std::time::Duration),
}

/// The client's address, when the HTTP server was started with connect info (the controller's is).
pub struct PeerIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let connected = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(PeerIp(connected.map(|c| c.0.ip())))
    }
}

impl Sessions {
    /// Loads (or makes) the key in `state_dir/web-session.key`.
    pub fn open(state_dir: &Path, web: &WebConfig, domain: &str) -> std::io::Result<Sessions> {
        let path = state_dir.join("web-session.key");
        let key = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                key
            }
            _ => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let key: [u8; 32] = rand::random();
                std::fs::create_dir_all(state_dir)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)?;
                file.write_all(&key)?;
                file.sync_all()?;
                key
            }
        };
        // Sessions hold while the tokens they came from are configured: changing the tokens (a leaked
        // one removed) ends every session.
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        // The same for the GitHub accounts: removing one ends its sessions.
        let lists = [
            &web.admin_tokens,
            &web.viewer_tokens,
            &web.github_admins,
            &web.github_viewers,
        ];
        for list in lists {
            let mut entries: Vec<&String> = list.iter().collect();
            entries.sort();
            for entry in entries {
                mac.update(entry.as_bytes());
                mac.update(b"\0");
            }
            mac.update(b"\x01");
        }
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        Ok(Sessions {
            key,
            web: web.clone(),
            secure: domain.starts_with("https://"),
            token_failures: FailureLimiter::new(SIGN_IN),
        })
    }

    /// As [`open`](Sessions::open) with a key of this process only (sessions end with it), for a state
    /// directory that cannot hold the key.
    pub fn ephemeral(web: &WebConfig, domain: &str) -> Sessions {
        Sessions {
            key: rand::random(),
            web: web.clone(),
            secure: domain.starts_with("https://"),
            token_failures: FailureLimiter::new(SIGN_IN),
        }
    }

    /// Whether pages can be read without signing in.
    pub fn public(&self) -> bool {
        self.web.public
    }

    fn mac(&self, text: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(text.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The role a token presented from `peer` gives; wrong tokens count against the address, and an
    /// address with too many gets `TooManyFailures` instead of `Unknown`.
    pub fn role_of_token_from(
        &self,
        peer: Option<std::net::IpAddr>,
        token: &str,
    ) -> Result<Role, TokenRefused> {
        // A right token always works (comparing against the few configured ones is cheap), so a
        // guesser behind the same address (a proxy, a job on this host) cannot lock anyone out.
        if let Some(role) = self.role_of_token(token) {
            return Ok(role);
        }
        let now = std::time::Instant::now();
        self.token_failures
            .check(peer, now)
            .map_err(TokenRefused::TooManyFailures)?;
        self.token_failures.failed(peer, now);
        Err(TokenRefused::Unknown)
    }

    /// The role a sign-in token gives, compared in constant time.
    pub fn role_of_token(&self, token: &str) -> Option<Role> {
        let matches = |tokens: &[String]| {
            tokens
                .iter()
                .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
        };
        if matches(&self.web.admin_tokens) {
            Some(Role::Admin)
        } else if matches(&self.web.viewer_tokens) {
            Some(Role::Viewer)
        } else {
            None
        }
    }

    /// The role a GitHub account signs in with (`[web] github_admins`, `github_viewers`): an entry is
    /// a login (compared without case, as on GitHub) or `#` and the account's numeric id, which
    /// survives a rename and is never reused (a login given up can be taken by someone else).
    pub fn role_of_github_account(&self, login: &str, id: u64) -> Option<Role> {
        let listed = |entries: &[String]| {
            entries.iter().any(|entry| match entry.strip_prefix('#') {
                Some(number) => number.parse() == Ok(id),
                None => entry.eq_ignore_ascii_case(login),
            })
        };
        if listed(&self.web.github_admins) {
            Some(Role::Admin)
        } else if listed(&self.web.github_viewers)
            || self.web.github_viewers.iter().any(|l| l == "*")
        {
            Some(Role::Viewer)
        } else {
            None
        }
    }

    /// A new session's cookie value for `role`, valid from `now` (Unix seconds).
    pub fn issue(&self, role: Role, now: i64) -> String {
        let nonce: [u8; 12] = rand::random();
        let body = format!("{}.{}.{}", role.word(), now + SESSION_SECS, hex(&nonce));
        format!("{body}.{}", self.mac(&body))
    }

    /// The `Set-Cookie` value that signs in with `value`.
    pub fn set_cookie(&self, value: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}"
        )
    }

    /// The `Set-Cookie` value that signs out.
    pub fn clear_cookie(&self) -> String {
        format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }

    /// Starts a GitHub sign-in: the `state` to send GitHub and the `Set-Cookie` that remembers it and
    /// where to go afterwards. `SameSite=Lax`, unlike the session: the browser must send it on the
    /// navigation back from GitHub, another site.
    pub fn github_sign_in_start(&self, next: &str, now: i64) -> (String, String) {
        let state = hex(&rand::random::<[u8; 16]>());
        let body = format!("{state}.{}.{}", now + OAUTH_SECS, hex(next.as_bytes()));
        let value = format!("{body}.{}", self.mac(&format!("github:{body}")));
        let secure = if self.secure { "; Secure" } else { "" };
        let cookie = format!(
            "{OAUTH_COOKIE}={value}; Path=/login/github; HttpOnly; SameSite=Lax; Max-Age={OAUTH_SECS}{secure}"
        );
        (state, cookie)
    }

    /// Where to go after a GitHub sign-in that came back with `state`: `None` unless the request
    /// carries the cookie [`github_sign_in_start`](Sessions::github_sign_in_start) set for that very
    /// state, unexpired (a sign-in someone else started cannot be finished in this browser).
    pub fn github_sign_in_finish(
        &self,
        headers: &HeaderMap,
        state: &str,
        now: i64,
    ) -> Option<String> {
        let value = cookie(headers, OAUTH_COOKIE)?;
        let (body, mac) = value.rsplit_once('.')?;
        if !constant_time_eq(
            self.mac(&format!("github:{body}")).as_bytes(),
            mac.as_bytes(),
        ) {
            return None;
        }
        let mut parts = body.split('.');
        let expected = parts.next()?;
        let expires: i64 = parts.next()?.parse().ok()?;
        let next = unhex(parts.next()?)?;
        (constant_time_eq(expected.as_bytes(), state.as_bytes()) && expires > now)
            .then(|| safe_next(String::from_utf8(next).ok().as_deref()))
    }

    /// The `Set-Cookie` value that forgets a GitHub sign-in in progress.
    pub fn github_sign_in_clear(&self) -> String {
        format!("{OAUTH_COOKIE}=; Path=/login/github; HttpOnly; SameSite=Lax; Max-Age=0")
    }

    /// The session in the request's cookie, if it is genuine and not expired at `now`.
    pub fn session(&self, headers: &HeaderMap, now: i64) -> Option<Session> {
        let value = cookie(headers, COOKIE)?;
        let (body, mac) = value.rsplit_once('.')?;
        if !constant_time_eq(self.mac(body).as_bytes(), mac.as_bytes()) {
            return None;
        }
        let mut parts = body.split('.');
        let role = Role::from_word(parts.next()?)?;
        let expires: i64 = parts.next()?.parse().ok()?;
        (expires > now).then(|| Session {
            role,
            csrf: self.mac(&format!("csrf:{value}"))[..32].to_string(),
        })
    }

    /// Whether a form POST is the person's own: the right CSRF token, not sent from another site.
    pub fn genuine_post(&self, session: &Session, headers: &HeaderMap, csrf: &str) -> bool {
        let cross_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|site| site == "cross-site");
        !cross_site && constant_time_eq(session.csrf.as_bytes(), csrf.as_bytes())
    }
}

/// A signed-in person.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    /// What this session's forms must carry.
    pub csrf: String,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// Where to go after signing in: a path of this site, never another one (`//evil.example`).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        // Browsers drop tabs and line breaks from URLs (`/\t/evil` is `//evil`): only plain path
        // characters pass.
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && path.bytes().all(|b| b > 0x20 && b < 0x7f && b != b'\\') =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(dir: &Path) -> Sessions {
        let web = WebConfig {
            admin_tokens: vec!["admin-token-0123456789".into()],
            viewer_tokens: vec!["viewer-token-0123456789".into()],
            public: false,
            github_admins: vec!["OctoCat".into()],
            github_viewers: vec!["hubot".into(), "#583231".into()],
        };
        Sessions::open(dir, &web, "https://ci.example").unwrap_or_else(|e| panic!("{e}"))
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("other=1; {COOKIE}={value}")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        headers
    }

    #[test]
    fn a_signed_session_is_accepted_until_it_expires_and_a_forged_one_never() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = sessions(dir.path());
        assert_eq!(s.role_of_token("admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(
            s.role_of_token("viewer-token-0123456789"),
            Some(Role::Viewer)
        );
        assert_eq!(s.role_of_token("admin-token-012345678"), None);
        let value = s.issue(Role::Viewer, 1_000);
        let session = s
            .session(&with_cookie(&value), 2_000)
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(session.role, Role::Viewer);
        assert!(
            s.session(&with_cookie(&value), 1_000 + SESSION_SECS)
                .is_none(),
            "expired"
        );
        let forged = value.replacen("viewer", "admin", 1);
        assert!(
            s.session(&with_cookie(&forged), 2_000).is_none(),
            "forged role"
        );
        // The same key after a restart: the session holds.
        let again = sessions(dir.path());
        assert!(again.session(&with_cookie(&value), 2_000).is_some());
        // Changing the tokens (a leaked one removed) ends every session.
        let fewer = WebConfig {
            admin_tokens: vec![],
            viewer_tokens: vec!["viewer-token-0123456789".into()],
            public: false,
            ..WebConfig::default()
        };
        let revoked = Sessions::open(dir.path(), &fewer, "https://ci.example")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(revoked.session(&with_cookie(&value), 2_000).is_none());
        assert!(
            s.set_cookie(&value).contains("HttpOnly; SameSite=Strict")
                && s.set_cookie(&value).ends_with("; Secure")
        );
    }

    #[test]
    fn guessing_tokens_from_one_address_is_slowed_and_right_tokens_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let s = sessions(dir.path());
        let guesser = Some(std::net::IpAddr::from([192, 0, 2, 7]));
        let other = Some(std::net::IpAddr::from([192, 0, 2, 8]));
        for _ in 0..10 {
            assert_eq!(
                s.role_of_token_from(guesser, "wrong-token-0123456789"),
                Err(TokenRefused::Unknown)
            );
        }
        assert!(matches!(
            s.role_of_token_from(guesser, "wrong-token-0123456789"),
            Err(TokenRefused::TooManyFailures(_))
        ));
        // A right token still works from the guessing address (a proxy shares it with everyone).
        assert_eq!(
            s.role_of_token_from(guesser, "admin-token-0123456789"),
            Ok(Role::Admin)
        );
        assert_eq!(
            s.role_of_token_from(other, "admin-token-0123456789"),
            Ok(Role::Admin)
        );
    }

    #[test]
    fn posts_need_the_sessions_csrf_token_and_not_come_from_another_site() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = sessions(dir.path());
        let value = s.issue(Role::Admin, 0);
        let headers = with_cookie(&value);
        let session = s.session(&headers, 1).unwrap_or_else(|| panic!("accepted"));
        assert!(s.genuine_post(&session, &headers, &session.csrf));
        assert!(!s.genuine_post(&session, &headers, "wrong"));
        let mut cross = headers.clone();
        cross.insert(
            "sec-fetch-site",
            "cross-site".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(!s.genuine_post(&session, &cross, &session.csrf));
        // Another session's token does not fit.
        let other = s
            .session(&with_cookie(&s.issue(Role::Admin, 0)), 1)
            .unwrap_or_else(|| panic!("accepted"));
        assert!(!s.genuine_post(&session, &headers, &other.csrf));
    }

    #[test]
    fn only_paths_of_this_site_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/jobs/3")), "/jobs/3");
        for bad in [
            "//evil.example/x",
            "https://evil.example",
            "/\\evil",
            "",
            "/\t/evil.example",
            "/\n/evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    fn with_named_cookie(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("{name}={value}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn a_github_sign_in_finishes_only_in_the_browser_that_started_it_and_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = sessions(dir.path());
        let (state, set_cookie) = sessions.github_sign_in_start("/jobs/3?line=5", 1_000);
        assert!(set_cookie.contains("SameSite=Lax") && set_cookie.contains("Secure"));
        let value = set_cookie
            .strip_prefix(&format!("{OAUTH_COOKIE}="))
            .and_then(|rest| rest.split(';').next())
            .unwrap();
        let headers = with_named_cookie(OAUTH_COOKIE, value);
        assert_eq!(
            sessions
                .github_sign_in_finish(&headers, &state, 1_100)
                .as_deref(),
            Some("/jobs/3?line=5")
        );
        // Another state (a sign-in started by someone else), too late, no cookie, a forged one.
        assert_eq!(
            sessions.github_sign_in_finish(&headers, "0123", 1_100),
            None
        );
        assert_eq!(
            sessions.github_sign_in_finish(&headers, &state, 1_000 + OAUTH_SECS),
            None
        );
        assert_eq!(
            sessions.github_sign_in_finish(&HeaderMap::new(), &state, 1_100),
            None
        );
        let forged = value.replacen(&state, &"0".repeat(state.len()), 1);
        let headers = with_named_cookie(OAUTH_COOKIE, &forged);
        assert_eq!(
            sessions.github_sign_in_finish(&headers, &"0".repeat(state.len()), 1_100),
            None
        );
        // Where to go is this site's own path, whatever was asked for.
        let (state, set_cookie) = sessions.github_sign_in_start("//evil.example", 1_000);
        let value = set_cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1;
        let headers = with_named_cookie(OAUTH_COOKIE, value);
        assert_eq!(
            sessions
                .github_sign_in_finish(&headers, &state, 1_001)
                .as_deref(),
            Some("/")
        );
    }

    #[test]
    fn github_accounts_get_their_listed_role_and_nobody_else_any() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = sessions(dir.path());
        assert_eq!(
            sessions.role_of_github_account("octocat", 1),
            Some(Role::Admin)
        );
        assert_eq!(
            sessions.role_of_github_account("HUBOT", 2),
            Some(Role::Viewer)
        );
        assert_eq!(sessions.role_of_github_account("mallory", 3), None);
        // By id: whatever the login is now.
        assert_eq!(
            sessions.role_of_github_account("renamed", 583231),
            Some(Role::Viewer)
        );
    }
}
