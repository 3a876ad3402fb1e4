//! tonic TLS configurations. The controller requires a certificate from our CA on every RPC except the
//! agent's `Enroll`, so the TLS layer makes client certificates optional (a certificate that is presented
//! must still chain to our CA) and the services check the peer identity per call.

use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

use crate::CONTROLLER_SERVER_NAME;

/// The controller's server-side TLS: its certificate, and our CA for client certificates.
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem))
        .client_auth_optional(true)
}

/// A client's TLS: trust only our CA, verify the controller by [`CONTROLLER_SERVER_NAME`], and present
/// `identity` (certificate and key PEM) when given.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(CONTROLLER_SERVER_NAME);
    match identity {
        Some((cert, key)) => config.identity(TlsIdentity::from_pem(cert, key)),
        None => config,
    }
}

/// Turns `host:port` or a URL into the `https://...` endpoint tonic expects.
pub fn endpoint_url(address: &str) -> String {
    if address.starts_with("https://") || address.starts_with("http://") {
        address.replacen("http://", "https://", 1)
    } else {
        format!("https://{address}")
    }
}
