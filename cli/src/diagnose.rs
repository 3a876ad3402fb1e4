//! Finding out why the controller dropped a connection. With TLS 1.3 the server checks the client
//! certificate after the handshake has completed from the client's point of view, and its alert
//! (`UnknownCA`, `CertificateRequired`, ...) often never reaches the failed RPC, which just sees the
//! connection close. A plain TLS connection made the same way, reading the server's first answer, gets
//! the alert itself.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use zeroci::profile::Profile;

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS-level reason the controller gives for refusing us, if any (None when it accepts us, or when
/// it cannot be asked).
pub fn tls_verdict(profile: &Profile) -> Option<String> {
    let config = client_config(profile)?;
    let name = ServerName::try_from(zeroci::CONTROLLER_SERVER_NAME).ok()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let addr = socket_addr(&profile.controller)?
        .to_socket_addrs()
        .ok()?
        .next()?;
    let mut socket = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    socket.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    socket.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let mut tls = rustls::Stream::new(&mut conn, &mut socket);
    // The HTTP/2 preface completes the handshake; the server answers with its SETTINGS or an alert.
    if let Err(e) = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
        return tls_error(&e);
    }
    let mut first_byte = [0u8; 1];
    match tls.read_exact(&mut first_byte) {
        Err(e) => tls_error(&e),
        Ok(()) => None,
    }
}

/// Only TLS errors say something about certificates; a timeout or reset says nothing new.
fn tls_error(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?;
    inner
        .downcast_ref::<rustls::Error>()
        .map(ToString::to_string)
}

fn client_config(profile: &Profile) -> Option<rustls::ClientConfig> {
    let ca = std::fs::read(&profile.ca).ok()?;
    let cert = std::fs::read(&profile.cert).ok()?;
    let key = std::fs::read(&profile.key).ok()?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&ca) {
        roots.add(der.ok()?).ok()?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<_, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(&key).ok()?;
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(config)
}

/// `host:port` from the profile's controller address (`host:port` or an `https://` URL); port 443 when
/// none is given, as for the gRPC connection itself.
pub fn socket_addr(controller: &str) -> Option<String> {
    let rest = controller
        .split_once("://")
        .map_or(controller, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        // [v6]:port
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:443")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            socket_addr("127.0.0.1:7701").as_deref(),
            Some("127.0.0.1:7701")
        );
        assert_eq!(
            socket_addr("https://ci.example.com").as_deref(),
            Some("ci.example.com:443")
        );
        assert_eq!(
            socket_addr("https://ci.example.com:8443/").as_deref(),
            Some("ci.example.com:8443")
        );
        assert_eq!(socket_addr("[::1]:7701").as_deref(), Some("[::1]:7701"));
        assert_eq!(socket_addr("https://[::1]").as_deref(), Some("[::1]:443"));
        assert_eq!(socket_addr("https://"), None);
    }
}
