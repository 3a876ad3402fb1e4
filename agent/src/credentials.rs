//! The agent's client certificate, kept valid for as long as its job runs.
//!
//! A TLS connection outlives the certificate it was opened with, but a reconnect (a controller
//! restart, a network blip) needs a valid one. So at two thirds of the certificate's life the agent
//! asks for a new one (`Renew`, with a fresh key, authenticated by the current certificate), and every
//! later connection uses it. A failed renewal is retried with backoff while the old one still holds.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::ClientTlsConfig;
use zeroci::backoff::Backoff;
use zeroci::pb;

/// What the agent presents.
#[derive(Clone)]
struct Identity {
    cert_pem: String,
    key_pem: String,
    /// Unix milliseconds.
    obtained_at: i64,
    /// Unix milliseconds.
    not_after: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("obtained_at", &self.obtained_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
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
            identity: RwLock::new(Identity {
                cert_pem,
                key_pem,
                obtained_at: zeroci::now_unix_ms(),
                not_after: not_after_unix_ms,
            }),
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

    /// How long to wait before renewing: until two thirds of the current certificate's life.
    fn renew_in(&self) -> Duration {
        let identity = self.current();
        let life = (identity.not_after - identity.obtained_at).max(0);
        let at = identity.obtained_at + life * 2 / 3;
        Duration::from_millis((at - zeroci::now_unix_ms()).max(0) as u64)
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
        let renewed = pb::agent_service_client::AgentServiceClient::new(channel)
            .renew(pb::RenewRequest { csr_pem })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) = Identity {
            cert_pem: renewed.certificate_pem,
            key_pem,
            obtained_at: zeroci::now_unix_ms(),
            not_after: renewed.not_after_unix_ms,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_certificates_life() {
        let now = zeroci::now_unix_ms();
        let credentials = Credentials::new("ca".into(), "c".into(), "k".into(), now + 30_000);
        let due = credentials.renew_in();
        assert!(
            due > Duration::from_millis(19_000) && due <= Duration::from_millis(20_000),
            "{due:?}"
        );
        let expired = Credentials::new("ca".into(), "c".into(), "k".into(), now - 1);
        assert_eq!(expired.renew_in(), Duration::ZERO);
    }
}
