//! Enrollment: trade the one-time bootstrap token and a fresh key's CSR for a client certificate.
//!
//! The key never leaves the machine. Transient failures (controller not up yet, network) are retried
//! with backoff until the give-up deadline; a refusal of the token is final.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use zeroci::pb::EnrollRequest;
use zeroci::pb::agent_service_client::AgentServiceClient;

use crate::backoff::Backoff;
use crate::bootstrap::Bootstrap;
use crate::session::endpoint;

/// Upper bound for one enrollment call, dialing included.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one controller address may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What enrollment yields: the agent's identity for one job attempt.
#[derive(Clone)]
pub struct Enrolled {
    pub cert_pem: String,
    pub key_pem: String,
    pub job_id: u64,
    pub attempt: u32,
    pub not_after_unix_ms: i64,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("job_id", &self.job_id)
            .field("attempt", &self.attempt)
            .field("not_after_unix_ms", &self.not_after_unix_ms)
            .finish_non_exhaustive()
    }
}

/// Why enrollment failed for good.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("enrollment refused: {0}")]
    Refused(String),
    #[error("gave up enrolling after {elapsed:?}: {last_error}")]
    GaveUp {
        elapsed: Duration,
        last_error: String,
    },
    #[error("cannot create a key: {0}")]
    Key(#[from] zeroci::pki::PkiError),
    #[error("bad controller address: {0}")]
    BadAddress(String),
    #[error(
        "controller issued a certificate for job {got}, but this machine is for job {expected}"
    )]
    WrongJob { expected: u64, got: u64 },
}

/// Enrolls, retrying transient failures until `deadline`. With several controllers, each is asked in
/// turn: only the one that made the machine knows its token, so a refusal is final only when every
/// controller refused.
pub async fn enroll(
    bootstrap: &Bootstrap,
    deadline: Instant,
    backoff: &mut Backoff,
) -> Result<Enrolled, EnrollError> {
    let started = Instant::now();
    let (key_pem, csr_pem) = zeroci::pki::generate_csr()?;
    let endpoints = crate::endpoints::list(&bootstrap.controller);
    if endpoints.is_empty() {
        return Err(EnrollError::BadAddress("no controller address".into()));
    }
    loop {
        let mut refusals = Vec::new();
        let mut last_error = None;
        for address in &endpoints {
            let call = call(bootstrap, address, &csr_pem);
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(response)) => {
                    if response.job_id != bootstrap.job_id {
                        return Err(EnrollError::WrongJob {
                            expected: bootstrap.job_id,
                            got: response.job_id,
                        });
                    }
                    tracing::info!(job_id = %response.job_id, attempt = response.attempt, "enrolled");
                    return Ok(Enrolled {
                        cert_pem: response.certificate_pem,
                        key_pem,
                        job_id: response.job_id,
                        attempt: response.attempt,
                        not_after_unix_ms: response.not_after_unix_ms,
                    });
                }
                Ok(Err(CallError::Refused(why))) => refusals.push(why),
                // One malformed address among several must not stop the others.
                Ok(Err(CallError::BadAddress(why))) if endpoints.len() == 1 => {
                    return Err(EnrollError::BadAddress(why));
                }
                Ok(Err(CallError::BadAddress(why))) => refusals.push(why),
                Ok(Err(CallError::Transient(why))) => {
                    last_error = Some(format!("{address}: {why}"))
                }
                Err(_) => last_error = Some(format!("{address}: enrollment call timed out")),
            }
        }
        let Some(last_error) = last_error else {
            return Err(EnrollError::Refused(refusals.join("; ")));
        };
        tracing::warn!(job_id = %bootstrap.job_id, error = %last_error, "enrollment failed; retrying");
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            return Err(EnrollError::GaveUp {
                elapsed: started.elapsed(),
                last_error,
            });
        }
        backoff.sleep(delay).await;
    }
}

enum CallError {
    Refused(String),
    BadAddress(String),
    Transient(String),
}

async fn call(
    bootstrap: &Bootstrap,
    address: &str,
    csr_pem: &str,
) -> Result<zeroci::pb::EnrollResponse, CallError> {
    let tls = zeroci::tls::client_config(&bootstrap.ca_pem, None);
    // A malformed address never gets better.
    let endpoint =
        endpoint(address, tls).map_err(|e| CallError::BadAddress(format!("{address:?}: {e}")))?;
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| CallError::Transient("connecting timed out".into()))?
        .map_err(|e| CallError::Transient(format!("cannot connect: {e}")))?;
    let request = EnrollRequest {
        bootstrap_token: bootstrap.token.clone(),
        csr_pem: csr_pem.to_string(),
    };
    match AgentServiceClient::new(channel).enroll(request).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => {
            let why = format!("{:?}: {}", status.code(), status.message());
            match status.code() {
                Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument => {
                    Err(CallError::Refused(why))
                }
                _ => Err(CallError::Transient(why)),
            }
        }
    }
}
