//! TLS for the grid's `wss://` endpoints (relay, chain): the web's roots (webpki), ring as the
//! crypto provider (no other is built), so every connection behaves alike, also on a host without a
//! system certificate store.

use std::sync::Arc;

/// A client configuration with the webpki roots and the ring provider.
pub(crate) fn client_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            // ring supports the default versions; this only keeps the function total.
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}
