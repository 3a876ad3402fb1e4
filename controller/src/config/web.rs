//! `[web]`: who may read the result pages and who may act on them (rerun, cancel).

use serde::{Deserialize, Serialize};

/// `[web]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Tokens that sign in to the pages as admin (rerun and cancel jobs).
    #[serde(default)]
    pub admin_tokens: Vec<String>,
    /// Tokens that sign in as viewer (read only).
    #[serde(default)]
    pub viewer_tokens: Vec<String>,
    /// Whether the pages, logs and artifacts can be read without signing in (default true). Badges,
    /// `/metrics` and `/healthz` are always public.
    #[serde(default = "public_by_default")]
    pub public: bool,
    /// GitHub accounts that sign in as admin through GitHub (`[github] oauth_client_id`): logins, or
    /// `#` and the numeric id (safer: a login given up can be registered by someone else).
    #[serde(default)]
    pub github_admins: Vec<String>,
    /// GitHub accounts that sign in as viewer (as `github_admins`); `"*"`: any GitHub account.
    #[serde(default)]
    pub github_viewers: Vec<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            admin_tokens: Vec::new(),
            viewer_tokens: Vec::new(),
            public: public_by_default(),
            github_admins: Vec::new(),
            github_viewers: Vec::new(),
        }
    }
}

fn public_by_default() -> bool {
    true
}

/// The shortest sign-in token accepted: guessing must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

impl WebConfig {
    /// `oauth`: whether `[github]` has an OAuth app to sign in with.
    pub(super) fn validate(&self, oauth: bool) -> Result<(), String> {
        let github_accounts = !self.github_admins.is_empty() || !self.github_viewers.is_empty();
        if oauth && !github_accounts {
            return Err(
                "[github] oauth_client_id needs [web] github_admins or github_viewers: nobody could sign in with it"
                    .into(),
            );
        }
        if github_accounts && !oauth {
            return Err(
                "[web] github_admins and github_viewers need [github] oauth_client_id and oauth_client_secret"
                    .into(),
            );
        }
        for token in self.admin_tokens.iter().chain(&self.viewer_tokens) {
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "[web] tokens must be at least {MIN_TOKEN_LEN} characters (use `openssl rand -hex 16`)"
                ));
            }
        }
        if !self.public && self.admin_tokens.is_empty() && self.viewer_tokens.is_empty() && !oauth {
            return Err(
                "[web] public = false needs admin_tokens, viewer_tokens or a GitHub OAuth app to sign in with"
                    .into(),
            );
        }
        Ok(())
    }
}

// Hand-written: the tokens are credentials.
impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("admin_tokens", &self.admin_tokens.len())
            .field("viewer_tokens", &self.viewer_tokens.len())
            .field("public", &self.public)
            .field("github_admins", &self.github_admins)
            .field("github_viewers", &self.github_viewers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tokens_and_a_private_site_nobody_can_enter_are_refused() {
        let mut web = WebConfig::default();
        assert!(web.validate(false).is_ok());
        web.admin_tokens = vec!["short".into()];
        assert!(web.validate(false).unwrap_err().contains("at least 16"));
        web.admin_tokens.clear();
        web.public = false;
        assert!(
            web.validate(false)
                .unwrap_err()
                .contains("needs admin_tokens")
        );
        web.viewer_tokens = vec!["0123456789abcdef0123".into()];
        assert!(web.validate(false).is_ok());
        assert!(!format!("{web:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn github_accounts_and_a_github_app_come_together() {
        let mut web = WebConfig {
            public: false,
            ..WebConfig::default()
        };
        assert!(web.validate(true).unwrap_err().contains("github_admins"));
        web.github_admins = vec!["octocat".into()];
        assert!(
            web.validate(true).is_ok(),
            "a private site GitHub accounts sign in to"
        );
        assert!(web.validate(false).unwrap_err().contains("oauth_client_id"));
    }
}
