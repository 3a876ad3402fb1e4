//! Who someone is on GitHub, through a GitHub OAuth app's web flow: the pages send the browser to
//! GitHub's authorize page, GitHub sends it back with a one-time code, and here the code becomes an
//! access token (the app's id and secret) and the token the account's login (`GET /user`). No scope is
//! asked for: a login is public. The token is used once and dropped.
//!
//! The endpoints follow `api_url` like the rest of the client: `https://github.com/login/oauth/…` and
//! `https://api.github.com/user` by default, the Enterprise host's otherwise, a fake server in tests.

use std::fmt;

use percent_encoding::utf8_percent_encode;
use serde::Deserialize;

use super::api::{ApiSettings, COMPONENT, GitHubError, RetryPolicy, web_base};
use super::exchange::{self, Method, parse_json};

/// An OAuth app's credentials and where GitHub is.
pub struct OAuthApp {
    client_id: String,
    client_secret: String,
    /// `https://github.com`: the authorize page and the token exchange.
    web: octocrab::Octocrab,
    web_base: String,
    api_url: String,
    backoff: RetryPolicy,
}

impl fmt::Debug for OAuthApp {
    // Hand-written so that the secret never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthApp")
            .field("client_id", &self.client_id)
            .field("web_base", &self.web_base)
            .finish_non_exhaustive()
    }
}

impl OAuthApp {
    /// Must be called inside a Tokio runtime (see [`super::GitHubApi::new`]).
    pub fn new(
        settings: &ApiSettings,
        client_id: &str,
        client_secret: &str,
    ) -> Result<OAuthApp, GitHubError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(GitHubError::NoRuntime);
        }
        let web_base = web_base(&settings.api_url)?;
        // The token endpoint answers JSON only when asked to (form encoding otherwise).
        let web = exchange::client(&web_base, None, Some("application/json"))?;
        Ok(OAuthApp {
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            web,
            web_base,
            api_url: settings.api_url.trim_end_matches('/').to_string(),
            backoff: RetryPolicy::default(),
        })
    }

    /// Replaces the retry schedule (tests use a millisecond base).
    pub fn with_retry_policy(mut self, backoff: RetryPolicy) -> Self {
        self.backoff = backoff;
        self
    }

    /// GitHub's page that asks the person to let this app know who they are; it comes back to
    /// `redirect_uri` with `code` and `state`.
    pub fn authorize_url(&self, redirect_uri: &str, state: &str) -> String {
        let encode = |s: &str| utf8_percent_encode(s, COMPONENT).to_string();
        format!(
            "{}/login/oauth/authorize?client_id={}&redirect_uri={}&state={}&allow_signup=false",
            self.web_base,
            encode(&self.client_id),
            encode(redirect_uri),
            encode(state)
        )
    }

    /// The account that approved the sign-in and got `code`: its login and its numeric id (which,
    /// unlike a login, is never given to another account).
    pub async fn account_of(
        &self,
        code: &str,
        redirect_uri: &str,
    ) -> Result<(String, u64), GitHubError> {
        #[derive(Deserialize)]
        struct Token {
            access_token: Option<String>,
            /// GitHub answers 200 with an error for a bad or used code (`bad_verification_code`).
            error: Option<String>,
            error_description: Option<String>,
        }
        #[derive(Deserialize)]
        struct User {
            login: String,
            id: u64,
        }
        let body = serde_json::json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "code": code,
            "redirect_uri": redirect_uri,
        });
        let what = "the sign-in code";
        // Once: a code works a single time, so a retry after a lost answer could only be refused.
        let once = RetryPolicy {
            attempts: 1,
            ..self.backoff
        };
        let reply = exchange::request(
            &self.web,
            once,
            "/login/oauth/access_token",
            &Method::Post { body: &body },
            64 * 1024,
        )
        .await?;
        let token: Token = parse_json(&reply, what)?;
        let access_token = match (token.access_token, token.error) {
            (Some(token), None) if !token.is_empty() => token,
            (_, error) => {
                return Err(GitHubError::Status {
                    what: what.to_string(),
                    status: reply.status.as_u16(),
                    message: token
                        .error_description
                        .or(error)
                        .unwrap_or_else(|| "no access token in the answer".into()),
                });
            }
        };
        let api = exchange::client(&self.api_url, Some(&access_token), None)?;
        let reply = exchange::request(
            &api,
            self.backoff,
            "/user",
            &Method::Get {
                accept: super::api::JSON_MEDIA_TYPE,
            },
            256 * 1024,
        )
        .await?;
        let user: User = parse_json(&reply, "the signed-in account")?;
        Ok((user.login, user.id))
    }
}
