//! `[github]`: webhooks, the API client's settings, and the OAuth app pages sign in with.

use serde::{Deserialize, Serialize};

use super::redacted;

/// `[github]`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubConfig {
    /// Token for the contents API, commit statuses and cloning private repositories.
    pub access_token: Option<String>,
    /// Repositories (`owner/name`) whose webhooks start jobs.
    #[serde(default)]
    pub repos: Vec<String>,
    /// The secret configured on the webhooks; deliveries are checked against it (HMAC-SHA256).
    pub webhook_secret: Option<String>,
    /// `https://api.github.com` (default) or `https://HOST/api/v3` for GitHub Enterprise.
    pub api_url: Option<String>,
    /// The commit status context (default `continuous-integration/ZeroCI`).
    pub status_context: Option<String>,
    /// Larger webhook bodies are refused with 413 (default 25 MiB, GitHub's own cap).
    pub max_body_bytes: Option<usize>,
    /// A GitHub OAuth app's client id: with `oauth_client_secret`, the pages offer "Sign in with
    /// GitHub" (roles from `[web] github_admins` / `github_viewers`). The app's callback URL is
    /// `<domain>/login/github/callback`.
    pub oauth_client_id: Option<String>,
    /// That OAuth app's client secret.
    pub oauth_client_secret: Option<String>,
}

impl std::fmt::Debug for GitHubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubConfig")
            .field("access_token", &redacted(&self.access_token))
            .field("repos", &self.repos)
            .field("webhook_secret", &redacted(&self.webhook_secret))
            .field("api_url", &self.api_url)
            .field("status_context", &self.status_context)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("oauth_client_id", &self.oauth_client_id)
            .field("oauth_client_secret", &redacted(&self.oauth_client_secret))
            .finish_non_exhaustive()
    }
}

impl GitHubConfig {
    /// The OAuth app (client id, secret) pages sign in with, when one is configured.
    pub fn oauth(&self) -> Option<(&str, &str)> {
        Some((
            self.oauth_client_id.as_deref().filter(|s| !s.is_empty())?,
            self.oauth_client_secret
                .as_deref()
                .filter(|s| !s.is_empty())?,
        ))
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        for repo in &self.repos {
            let mut parts = repo.split('/');
            let valid = matches!((parts.next(), parts.next(), parts.next()), (Some(o), Some(n), None) if !o.is_empty() && !n.is_empty());
            if !valid {
                return Err(format!("[github] repos: {repo:?} is not owner/name"));
            }
        }
        if self.oauth_client_id.is_some() != self.oauth_client_secret.is_some() {
            return Err(
                "[github] oauth_client_id and oauth_client_secret go together (a GitHub OAuth app's pair)"
                    .into(),
            );
        }
        if self.webhook_secret.as_deref().is_some_and(|s| s.len() < 8) {
            return Err("[github] webhook_secret must be at least 8 characters".into());
        }
        if let Some(url) = &self.api_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "[github] api_url must be an http(s) URL, got {url:?}"
            ));
        }
        Ok(())
    }
}
