//! The controllers an agent may reach. `[main] agent_endpoint` may name several, comma-separated: the
//! controllers of one service (same store, queue and CA), any of which serves the job once it holds
//! its lease. The agent dials them in turn, starting with the last one that answered, so losing a
//! controller costs one refused connection and the job goes on with another.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig};

/// The addresses in `controller` (`host:port` or URLs, comma-separated).
pub fn list(controller: &str) -> Vec<String> {
    controller
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// A channel to the first of `endpoints` that answers within `timeout`, trying them from `first` on
/// (wrapping around); with the index of the one that answered. The error names every failure.
pub async fn connect_any(
    endpoints: &[String],
    first: usize,
    tls: &ClientTlsConfig,
    timeout: Duration,
) -> Result<(Channel, usize), String> {
    if endpoints.is_empty() {
        return Err("no controller address in the bootstrap".into());
    }
    let mut failures = Vec::new();
    for offset in 0..endpoints.len() {
        let index = (first + offset) % endpoints.len();
        let address = &endpoints[index];
        let endpoint = match crate::session::endpoint(address, tls.clone()) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                failures.push(format!("{address}: {e}"));
                continue;
            }
        };
        // The connect timeout covers TCP only; this bound also covers a TLS handshake that hangs.
        match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => return Ok((channel, index)),
            Ok(Err(e)) => failures.push(format!("{address}: cannot connect: {e}")),
            Err(_) => failures.push(format!("{address}: connecting timed out")),
        }
    }
    Err(failures.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_several_addresses() {
        assert_eq!(list("127.0.0.1:7701"), ["127.0.0.1:7701"]);
        assert_eq!(list(" a:1 , b:2,,"), ["a:1", "b:2"]);
        assert!(list("").is_empty());
    }

    #[tokio::test]
    async fn the_first_controller_that_answers_is_used() {
        zeroci::install_crypto_provider();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap().to_string();
        drop(closed);
        let alive = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = alive.local_addr().unwrap().to_string();
        // Accepts TCP and never speaks TLS: enough to tell which address was dialled first.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = alive.accept().await {
                held.push(socket);
            }
        });
        let tls = ClientTlsConfig::new();
        let endpoints = vec![dead.clone(), live.clone()];
        let err = connect_any(&endpoints[..1], 0, &tls, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.contains(&dead), "{err}");
        let err = connect_any(&endpoints, 0, &tls, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            err.contains(&dead) && err.contains(&live),
            "both tried: {err}"
        );
    }
}
