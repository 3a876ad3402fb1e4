//! `[telegram]`, `[webhook]` and each repository's `[repos."x".telegram]`: where results are sent.

use serde::{Deserialize, Serialize};

use super::redacted;

/// `[repos."x".telegram]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoTelegram {
    /// Which results are sent (default all).
    #[serde(default)]
    pub notify: NotifyOn,
    /// Another chat for this repository's results.
    pub chat_id: Option<String>,
    /// Branches whose results are not sent: names, `*` matching any run of characters
    /// (`dependabot/*`).
    #[serde(default)]
    pub mute_branches: Vec<String>,
}

/// Which results a repository sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyOn {
    /// Every finished job.
    #[default]
    All,
    /// Jobs that did not pass (failed, errored, cancelled).
    Failures,
    /// Jobs that did not pass, and the first pass after those of the same branch.
    FailuresAndRecoveries,
    /// Nothing.
    None,
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob_matches(rest, &tail[i..]))
        }
    }
}

/// `[webhook]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where every job change is POSTed as JSON.
    pub url: String,
    /// Signs each delivery (`X-ZeroCI-Signature-256: sha256=<HMAC-SHA256 of the body>`).
    pub secret: Option<String>,
}

// Hand-written: the secret is a credential (and a URL may carry one too).
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &crate::store::mongo::redact_uri(&self.url))
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

/// `[telegram]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot's token (from @BotFather).
    pub token: String,
    /// Where results go: a group's id (`-1001234567890`) or `@channel`.
    pub chat_id: String,
    /// The Bot API (default Telegram's; a self-hosted Bot API server, or a stand-in in tests).
    pub api_url: Option<String>,
}

// Hand-written: the token is a credential.
impl std::fmt::Debug for TelegramConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramConfig")
            .field("token", &"<set>")
            .field("chat_id", &self.chat_id)
            .field("api_url", &self.api_url)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_patterns_match_with_stars() {
        assert!(glob_matches("wip/*", "wip/try"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("release-*-rc", "release-1.2-rc"));
        assert!(!glob_matches("wip/*", "main"));
        assert!(!glob_matches("main", "main2"));
        assert!(glob_matches("dépendances/*", "dépendances/x"));
    }
}
