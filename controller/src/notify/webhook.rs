//! A generic JSON webhook (`[webhook] url`, optional `secret`): every status change of every job is
//! POSTed as JSON (the job's public fields, its steps and result link), signed like GitHub's
//! deliveries when a secret is set (`X-ZeroCI-Signature-256: sha256=<HMAC-SHA256 of the body>`), so
//! e-mail, Slack or Matrix bridges are one small receiver away. Network failures and 5xx answers are
//! retried with backoff; a 4xx is a refusal, reported at once.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::Notifier;
use crate::config::WebhookConfig;
use crate::jobs::{JobRecord, job_url};

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "X-ZeroCI-Signature-256";
/// Sends in all, the first included.
const ATTEMPTS: u32 = 4;

pub struct JsonWebhook {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<String>,
}

impl JsonWebhook {
    pub fn new(config: &WebhookConfig) -> Result<JsonWebhook, String> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| format!("[webhook] url {:?}: {e}", config.url))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent("zeroci")
            .build()
            .map_err(|e| format!("[webhook]: {e}"))?;
        Ok(JsonWebhook {
            client,
            url,
            secret: config.secret.clone(),
        })
    }
}

/// The job as the webhook receives it: what a page shows, nothing internal (no machine, lease or
/// token hash).
pub fn payload(job: &JobRecord, domain: &str) -> serde_json::Value {
    json!({
        "id": job.id,
        "status": job.status.word(),
        "repo": job.repo,
        "ref": job.ref_name,
        "commit": job.commit,
        "github_repo": job.github_repo,
        "triggered_by": job.triggered_by,
        "committer": job.committer,
        "reason": job.reason,
        "url": job_url(domain, job.id),
        "created_at_ms": job.created_at,
        "started_at_ms": job.started_at,
        "finished_at_ms": job.finished_at,
        "steps": job.steps.iter().map(|s| json!({
            "name": s.name,
            "status": s.status.to_pb().word(),
            "exit_code": s.exit_code,
            "tests": s.tests,
        })).collect::<Vec<_>>(),
    })
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex = zeroci::encoding::hex(&digest);
    format!("sha256={hex}")
}

#[async_trait]
impl Notifier for JsonWebhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn job_changed(&self, job: &JobRecord, domain: &str) -> Result<(), String> {
        let body = serde_json::to_vec(&payload(job, domain)).map_err(|e| e.to_string())?;
        let mut pause = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let mut request = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(secret) = &self.secret {
                request = request.header(SIGNATURE_HEADER, signature(secret, &body));
            }
            let problem = match request.send().await {
                Ok(answer) if answer.status().is_success() => return Ok(()),
                Ok(answer) if answer.status().is_client_error() => {
                    return Err(format!(
                        "the webhook refused the delivery: HTTP {}",
                        answer.status()
                    ));
                }
                Ok(answer) => format!("HTTP {}", answer.status()),
                // Without the URL: it may hold a credential, and this text is shown with the job.
                Err(e) => e.without_url().to_string(),
            };
            if attempt >= ATTEMPTS {
                return Err(format!(
                    "the webhook failed {attempt} times, last: {problem}"
                ));
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_githubs_scheme() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_payload_holds_what_a_page_shows_and_nothing_internal() {
        let mut job = JobRecord::new(5, crate::store::conformance::new_job("acme"), 1);
        job.machine = Some(crate::jobs::MachineRecord {
            provisioner: "local".into(),
            name: "m".into(),
            attempt: 1,
            token_sha256: Some("hash".into()),
            details: serde_json::json!({"pid": 1}),
        });
        let payload = payload(&job, "https://ci.example");
        assert_eq!(payload["url"], "https://ci.example/jobs/5");
        assert_eq!(payload["status"], "queued");
        let text = payload.to_string();
        assert!(!text.contains("hash") && !text.contains("pid"), "{text}");
    }
}
