//! The agent's client certificate, kept valid for as long as its job runs.
//!
//! A TLS connection outlives the certificate it was opened with, but a reconnect (a controller
//! restart, a network blip) needs a valid one. So at two thirds of the certificate's life the agent
//! asks for a new one (`Renew`, with a fresh key, authenticated by the current certificate), and every
//! later connection uses it. A failed renewal is retried with backoff while the old one still holds.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::transport::ClientTlsConfig;
use zeroci::backoff::Backoff;
use zeroci::pb;

/// The shortest wait between two renewals, whatever the clocks say.
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);
/// How long one renewal call may take.
const RENEW_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent presents.
#[derive(Clone)]
struct Identity {
    cert_pem: String,
    key_pem: String,
    /// On this machine's monotonic clock.
    obtained_at: Instant,
    /// How long the certificate is valid for, from its own dates (so the machine's wall clock,
    /// which may be off, plays no part), the controller's backdating of `not_before` left out.
    lifetime: Duration,
    /// Unix milliseconds, as the controller said.
    not_after: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("lifetime", &self.lifetime)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Identity {
    fn new(cert_pem: String, key_pem: String, not_after: i64) -> Identity {
        let lifetime = certificate_lifetime(&cert_pem).unwrap_or_else(|| {
            // Unreadable here (the TLS layer will say why): fall back on the controller's word.
            Duration::from_millis((not_after - zeroci::now_unix_ms()).max(0) as u64)
        });
        Identity {
            cert_pem,
            key_pem,
            obtained_at: Instant::now(),
            lifetime,
            not_after,
        }
    }
}

/// `not_after − not_before` of the certificate, less the backdating every ZeroCI leaf gets.
fn certificate_lifetime(cert_pem: &str) -> Option<Duration> {
    let der = zeroci::pki::first_cert_der(cert_pem).ok()?;
    let (not_before, not_after) = zeroci::pki::validity(&der).ok()?;
    let secs = (not_after - not_before).max(0) as u64;
    Some(Duration::from_secs(secs).saturating_sub(zeroci::pki::BACKDATING))
}

/// The CA to trust and the agent's current certificate.
#[derive(Debug)]
pub struct Credentials {
    ca_pem: String,
    identity: RwLock<Identity>,
}

impl Credentials {
    pub fn new(ca_pem: String, cert_pem: String, key_pem: String, not_after_unix_ms: i64) -> Self {
        Credentials {
            ca_pem,
            identity: RwLock::new(Identity::new(cert_pem, key_pem, not_after_unix_ms)),
        }
    }

    fn current(&self) -> Identity {
        self.identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// TLS for the next connection, with the current certificate.
    pub fn tls(&self) -> ClientTlsConfig {
        let identity = self.current();
        zeroci::tls::client_config(&self.ca_pem, Some((&identity.cert_pem, &identity.key_pem)))
    }

    /// When the current certificate expires, in Unix milliseconds.
    pub fn not_after(&self) -> i64 {
        self.current().not_after
    }

    /// How long to wait before renewing: until two thirds of the current certificate's life, and
    /// never less than [`MIN_RENEW_INTERVAL`].
    fn renew_in(&self) -> Duration {
        let identity = self.current();
        let due = identity.obtained_at + identity.lifetime * 2 / 3;
        due.saturating_duration_since(Instant::now())
            .max(MIN_RENEW_INTERVAL)
    }

    /// Renews the certificate whenever it is due, until `stop`.
    pub async fn keep_renewed(self: Arc<Self>, endpoints: Vec<String>, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.renew_in()) => {}
                () = stop.cancelled() => return,
            }
            match self.renew(&endpoints).await {
                Ok(()) => {
                    backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
                    tracing::info!(not_after_unix_ms = self.not_after(), "certificate renewed");
                }
                Err(error) => {
                    let expired = zeroci::now_unix_ms() >= self.not_after();
                    tracing::warn!(%error, expired, "cannot renew the certificate; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn renew(&self, endpoints: &[String]) -> Result<(), String> {
        let (key_pem, csr_pem) = zeroci::pki::generate_csr().map_err(|e| e.to_string())?;
        let (channel, _) =
            crate::endpoints::connect_any(endpoints, 0, &self.tls(), Duration::from_secs(10))
                .await?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
        let call = client.renew(pb::RenewRequest { csr_pem });
        let renewed = tokio::time::timeout(RENEW_TIMEOUT, call)
            .await
            .map_err(|_| "the renewal call timed out".to_string())?
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) =
            Identity::new(renewed.certificate_pem, key_pem, renewed.not_after_unix_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_certificates_own_life() {
        let (ca, _) = zeroci::pki::CertificateAuthority::generate("test").unwrap();
        let pair = ca.issue_agent(1, 1, Duration::from_secs(30)).unwrap();
        // The controller's word on the expiry is a wall-clock time, and this clock may be far off:
        // the certificate's own dates decide.
        let credentials = Credentials::new("ca".into(), pair.cert_pem, pair.key_pem, 0);
        let due = credentials.renew_in();
        assert!(
            due > Duration::from_secs(18) && due <= Duration::from_secs(20),
            "{due:?}"
        );
        // Whatever the dates, renewals never come back to back.
        let unreadable = Credentials::new("ca".into(), "c".into(), "k".into(), 0);
        assert_eq!(unreadable.renew_in(), MIN_RENEW_INTERVAL);
    }
}
