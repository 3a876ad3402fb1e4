//! Telegram: one message per finished job to `[telegram] chat_id` (a group id or `@channel`), as the
//! original ZeroCI sent: status icon and word, repository, branch, the commit (linked for GitHub), what
//! triggered it, the failed steps with their test counts and the reason, and an inline **Result**
//! button to the job's page. Text from jobs is escaped for Telegram's HTML; reasons were masked when
//! the job stored them.
//!
//! Sends go through teloxide (rustls) to `api_url` (Telegram's, a self-hosted Bot API, or a stand-in
//! in tests). Flood control (429 `retry_after`) is waited out, network failures retried with backoff;
//! what Telegram refuses for good (a bad token, an unknown chat, a bot not in the group) comes back at
//! once as an error that says so. [`super::Notifications`] keeps one chat's messages in order and
//! bounds every call, so a slow Telegram never delays a job.

use std::time::Duration;

use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use teloxide::prelude::*;
use teloxide::types::{InlineKeyboardButton, InlineKeyboardMarkup, ParseMode, Recipient};
use teloxide::{ApiError, RequestError};

use std::sync::Arc;

use super::Notifier;
use crate::config::{Config, NotifyOn, TelegramConfig, glob_matches};
use crate::jobs::{JobRecord, JobStatus, StepStatus, job_url};
use crate::store::{JobFilter, JobStore, Stores};

/// What a path segment of an artifact's link keeps as is: the unreserved marks.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Sends after a network failure, the first included.
const ATTEMPTS: u32 = 4;
/// The longest flood-control wait honoured; a longer one is a failure (the call limit would end it).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(20);

pub struct Telegram {
    bot: Bot,
    chat: Recipient,
    /// Per-repository settings (`[repos."x".telegram]`) and the store to tell a recovery, when the
    /// notifier serves jobs; `None` for `check-notify`.
    routing: Option<(Arc<Config>, Stores)>,
}

impl Telegram {
    /// The notifier of a running controller: `[telegram]` plus each repository's settings.
    pub fn for_jobs(config: Arc<Config>, stores: Stores) -> Result<Telegram, String> {
        let settings = config
            .telegram
            .as_ref()
            .ok_or_else(|| "[telegram] is not configured".to_string())?;
        let mut telegram = Telegram::new(settings)?;
        for (name, repo) in &config.repos {
            if let Some(chat) = &repo.telegram.chat_id {
                recipient(chat).map_err(|e| format!("[repos.{name:?}.telegram] {e}"))?;
            }
        }
        telegram.routing = Some((config, stores));
        Ok(telegram)
    }

    pub fn new(config: &TelegramConfig) -> Result<Telegram, String> {
        let mut bot = Bot::new(&config.token);
        if let Some(api_url) = &config.api_url {
            let url = reqwest::Url::parse(api_url)
                .map_err(|e| format!("[telegram] api_url {api_url:?}: {e}"))?;
            bot = bot.set_api_url(url);
        }
        Ok(Telegram {
            bot,
            chat: recipient(&config.chat_id)?,
            routing: None,
        })
    }

    /// Where this job's result goes, if anywhere: its repository's chat (or the default one), unless
    /// its branch is muted or its outcome is not one the repository wants.
    async fn destination(&self, job: &JobRecord) -> Result<Option<Recipient>, String> {
        let Some((config, stores)) = &self.routing else {
            return Ok(Some(self.chat.clone()));
        };
        let Some(repo) = config.repo(&job.repo, &job.repo_url) else {
            return Ok(Some(self.chat.clone()));
        };
        let settings = &repo.telegram;
        if settings
            .mute_branches
            .iter()
            .any(|pattern| glob_matches(pattern, &job.ref_name))
        {
            return Ok(None);
        }
        let passed = job.status == JobStatus::Success;
        let wanted = match settings.notify {
            NotifyOn::All => true,
            NotifyOn::None => false,
            NotifyOn::Failures => !passed,
            NotifyOn::FailuresAndRecoveries => {
                !passed || previous_failed(stores.jobs.as_ref(), job).await?
            }
        };
        if !wanted {
            return Ok(None);
        }
        match &settings.chat_id {
            Some(chat) => recipient(chat).map(Some),
            None => Ok(Some(self.chat.clone())),
        }
    }

    /// Sends one message with its buttons to the default chat.
    pub async fn send(&self, text: &str, buttons: &[(String, String)]) -> Result<(), String> {
        self.send_to(&self.chat, text, buttons).await
    }

    /// Sends one message with its buttons: flood control waited out, network failures retried.
    async fn send_to(
        &self,
        chat: &Recipient,
        text: &str,
        buttons: &[(String, String)],
    ) -> Result<(), String> {
        let mut row: Vec<InlineKeyboardButton> = buttons
            .iter()
            .filter_map(|(label, url)| {
                reqwest::Url::parse(url)
                    .ok()
                    .map(|url| InlineKeyboardButton::url(label.clone(), url))
            })
            .collect();
        let mut text = text.to_string();
        let mut pause = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let mut request = self
                .bot
                .send_message(chat.clone(), &text)
                .parse_mode(ParseMode::Html);
            if !row.is_empty() {
                request = request.reply_markup(InlineKeyboardMarkup::new([row.clone()]));
            }
            match request.await {
                Ok(_) => return Ok(()),
                // Telegram takes no button to a private address (a controller at http://127.0.0.1):
                // the links go into the text instead.
                Err(RequestError::Api(ApiError::ButtonUrlInvalid)) if !row.is_empty() => {
                    row.clear();
                    for (label, url) in buttons {
                        text.push_str(&format!(
                            "\n<a href=\"{}\">{}</a>",
                            escape(url),
                            escape(label)
                        ));
                    }
                }
                Err(RequestError::RetryAfter(wait)) if wait.duration() <= MAX_RETRY_AFTER => {
                    tracing::info!(seconds = wait.seconds(), "Telegram asks to wait");
                    tokio::time::sleep(wait.duration()).await;
                }
                Err(e) if attempt < ATTEMPTS && transient(&e) => {
                    tracing::info!(error = %e, attempt, "Telegram unreachable; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(explain(&e)),
            }
        }
    }
}

/// How many failed test cases a message names.
const FAILED_TESTS_SHOWN: usize = 5;

/// `\nfailed tests:\n• <code>class.name</code>: message` for the first failed or errored cases.
fn failed_tests(reports: &[zeroci::pb::StepTestReport]) -> String {
    let failed: Vec<&zeroci::pb::TestCase> = reports
        .iter()
        .flat_map(|r| &r.cases)
        .filter(|c| c.status == "failed" || c.status == "error")
        .collect();
    if failed.is_empty() {
        return String::new();
    }
    let mut text = String::from("\nfailed tests:");
    for case in failed.iter().take(FAILED_TESTS_SHOWN) {
        let name = if case.classname.is_empty() {
            case.name.clone()
        } else {
            format!("{}.{}", case.classname, case.name)
        };
        let message: String = case.message.chars().take(200).collect();
        text.push_str(&format!("\n• <code>{}</code>", escape(&name)));
        if !message.is_empty() {
            text.push_str(&format!(": {}", escape(&message)));
        }
    }
    if failed.len() > FAILED_TESTS_SHOWN {
        text.push_str(&format!(
            "\n… and {} more",
            failed.len() - FAILED_TESTS_SHOWN
        ));
    }
    text
}

/// Whether the branch's previous finished job did not pass (this one passing is then a recovery).
async fn previous_failed(jobs: &dyn JobStore, job: &JobRecord) -> Result<bool, String> {
    let earlier = jobs
        .list(&JobFilter {
            repo: Some(job.repo.clone()),
            branch: Some(job.ref_name.clone()),
            before: Some(job.id),
            limit: 20,
            ..JobFilter::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    // A skipped job tested nothing: the result before it is the one that counts.
    Ok(earlier
        .iter()
        .find(|j| j.status.is_final() && j.status != JobStatus::Skipped)
        .is_some_and(|j| j.status != JobStatus::Success))
}

/// Whether a failure may pass by itself: the network, Telegram's own server errors (5xx, which the
/// Bot API reports only by their description), or an answer that is not the API's (a proxy's page).
fn transient(error: &RequestError) -> bool {
    match error {
        RequestError::Network(_) | RequestError::InvalidJson { .. } => true,
        RequestError::Api(ApiError::Unknown(description)) => [
            "Internal Server Error",
            "Bad Gateway",
            "Service Unavailable",
            "Gateway Timeout",
        ]
        .iter()
        .any(|server_error| description.contains(server_error)),
        _ => false,
    }
}

/// What to tell an operator about a refusal: the problem in words, then Telegram's own.
pub fn explain(error: &RequestError) -> String {
    let hint = match error {
        RequestError::Api(ApiError::InvalidToken) => {
            "the bot token is not valid ([telegram] token, from @BotFather)"
        }
        RequestError::Api(ApiError::ChatNotFound) => {
            "the chat was not found ([telegram] chat_id: a group id like -1001234567890, or @channel; the bot must be a member)"
        }
        RequestError::Api(ApiError::BotKicked | ApiError::BotKickedFromSupergroup) => {
            "the bot is not in the group any more: add it again"
        }
        RequestError::Api(ApiError::NotEnoughRightsToPostMessages) => {
            "the bot may not post in this chat: give it the right to"
        }
        RequestError::Network(_) => "Telegram (or [telegram] api_url) cannot be reached",
        _ => "Telegram refused the message",
    };
    format!("{hint}: {error}")
}

/// `-100123` as a chat id, `@name` as a channel.
fn recipient(chat_id: &str) -> Result<Recipient, String> {
    if chat_id.starts_with('@') && chat_id.len() > 1 {
        return Ok(Recipient::ChannelUsername(chat_id.to_string()));
    }
    chat_id
        .parse::<i64>()
        .map(|id| Recipient::Id(ChatId(id)))
        .map_err(|_| {
            format!("[telegram] chat_id must be a chat's number or @channel, got {chat_id:?}")
        })
}

/// Text for Telegram's HTML parse mode: `&`, `<`, `>` and `"` escaped.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The message for a finished job and its buttons (label, URL); `None` for a job not finished.
pub fn message(job: &JobRecord, domain: &str) -> Option<(String, Vec<(String, String)>)> {
    let (icon, word) = match job.status {
        JobStatus::Success => ("✅", "passed"),
        JobStatus::Failure => ("❌", "failed"),
        JobStatus::Error => ("⚠️", "errored"),
        JobStatus::Cancelled => ("⛔", "cancelled"),
        // A skipped job tested nothing: not worth a message.
        JobStatus::Queued | JobStatus::Provisioning | JobStatus::Running | JobStatus::Skipped => {
            return None;
        }
    };
    let short: String = job.commit.chars().take(7).collect();
    let commit = match &job.github_repo {
        Some(repo) => format!(
            "<a href=\"https://github.com/{}/commit/{}\">{}</a>",
            escape(repo),
            escape(&job.commit),
            escape(&short)
        ),
        None => format!("<code>{}</code>", escape(&short)),
    };
    let mut lines = vec![
        format!("{icon} <b>{word}</b> · job #{}", job.id),
        format!(
            "<b>{}</b> on <code>{}</code> at {commit}{}",
            escape(&job.repo),
            escape(&job.ref_name),
            job.committer
                .as_ref()
                .map(|name| format!(" by {}", escape(name)))
                .unwrap_or_default()
        ),
        format!("triggered by {}", escape(&job.triggered_by)),
    ];
    let failed: Vec<String> = job
        .steps
        .iter()
        .filter(|s| matches!(s.status, StepStatus::Failure | StepStatus::Error))
        .map(|s| {
            let tests = s
                .tests
                .as_ref()
                .filter(|t| t.failed + t.errors > 0)
                .map(|t| format!(" ({} of {} tests failed)", t.failed + t.errors, t.total))
                .unwrap_or_default();
            format!("• <code>{}</code>{tests}", escape(&s.name))
        })
        .collect();
    if !failed.is_empty() {
        lines.push("failed steps:".into());
        lines.extend(failed.into_iter().take(10));
    }
    if !job.reason.is_empty() {
        lines.push(format!("<i>{}</i>", escape(&job.reason)));
    }
    let mut buttons = vec![("Result".to_string(), job_url(domain, job.id))];
    if let Some(artifact) = job.artifacts.iter().rev().find(|a| a.error.is_empty()) {
        let path: String = artifact
            .name
            .split('/')
            .map(|part| utf8_percent_encode(part, SEGMENT).to_string())
            .collect::<Vec<_>>()
            .join("/");
        buttons.push((
            "Artifact".to_string(),
            format!("{}/artifacts/{path}", job_url(domain, job.id)),
        ));
    }
    Some((lines.join("\n"), buttons))
}

#[async_trait]
impl Notifier for Telegram {
    fn name(&self) -> &'static str {
        "telegram"
    }

    async fn job_changed(&self, job: &JobRecord, domain: &str) -> Result<(), String> {
        let Some((mut text, buttons)) = message(job, domain) else {
            return Ok(()); // only results are news
        };
        let Some(chat) = self.destination(job).await? else {
            return Ok(());
        };
        if let Some((_, stores)) = &self.routing
            && job.status == JobStatus::Failure
        {
            // The first failed tests, when the steps sent reports (a report that cannot be read
            // only costs the message its list).
            let reports = crate::engine::reports::reports_of(
                stores.logs.as_ref(),
                stores.reports.as_ref(),
                job,
                None,
            )
            .await
            .unwrap_or_default();
            text.push_str(&failed_tests(&reports));
        }
        self.send_to(&chat, &text, &buttons).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{StepKind, StepRecord, TestTotals};

    fn job(status: JobStatus) -> JobRecord {
        let mut job = JobRecord::new(42, crate::store::conformance::new_job("<b>repo</b>"), 1_000);
        job.status = status;
        job.commit = "0123456789abcdef".into();
        job.ref_name = "feature/<x>".into();
        job
    }

    #[test]
    fn each_final_status_has_its_icon_word_and_a_result_button() {
        for (status, expected) in [
            (JobStatus::Success, "✅ <b>passed</b>"),
            (JobStatus::Failure, "❌ <b>failed</b>"),
            (JobStatus::Error, "⚠️ <b>errored</b>"),
            (JobStatus::Cancelled, "⛔ <b>cancelled</b>"),
        ] {
            let (text, buttons) = message(&job(status), "https://ci.example").unwrap();
            assert!(text.starts_with(expected), "{text}");
            assert_eq!(
                buttons,
                [(
                    "Result".to_string(),
                    "https://ci.example/jobs/42".to_string()
                )]
            );
        }
        assert!(message(&job(JobStatus::Running), "https://ci.example").is_none());
    }

    #[test]
    fn hostile_names_are_escaped_and_failed_steps_listed_with_their_tests() {
        let mut failed = job(JobStatus::Failure);
        failed.github_repo = Some("acme/widget".into());
        failed.steps.push(StepRecord {
            name: "pytest <script>alert(1)</script>".into(),
            kind: StepKind::Script,
            status: StepStatus::Failure,
            tests: Some(TestTotals {
                total: 10,
                failed: 2,
                errors: 1,
                ..TestTotals::default()
            }),
            ..crate::engine::apply::checkout_step()
        });
        failed.reason = "exit 1 & more".into();
        failed.committer = Some("Mallory <evil@example.com>".into());
        let (text, _) = message(&failed, "https://ci.example").unwrap();
        assert!(
            text.contains("</a> by Mallory &lt;evil@example.com&gt;\n"),
            "{text}"
        );
        assert!(
            !text.contains("<script>") && !text.contains("<b>repo</b>"),
            "{text}"
        );
        assert!(text.contains("&lt;b&gt;repo&lt;/b&gt;"), "{text}");
        assert!(text.contains("<code>feature/&lt;x&gt;</code>"), "{text}");
        assert!(
            text.contains(
                "<a href=\"https://github.com/acme/widget/commit/0123456789abcdef\">0123456</a>"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "• <code>pytest &lt;script&gt;alert(1)&lt;/script&gt;</code> (3 of 10 tests failed)"
            ),
            "{text}"
        );
        assert!(text.contains("<i>exit 1 &amp; more</i>"), "{text}");
    }

    #[test]
    fn chats_are_ids_or_channels() {
        assert!(matches!(
            recipient("-1001234"),
            Ok(Recipient::Id(ChatId(-1001234)))
        ));
        assert!(matches!(
            recipient("@zeroci"),
            Ok(Recipient::ChannelUsername(_))
        ));
        assert!(recipient("zeroci").unwrap_err().contains("chat_id"));
    }
}
