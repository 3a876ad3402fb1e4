//! Connecting to the controller from a profile, and turning gRPC failures into messages a user can act on.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use tonic::transport::Channel;
use zeroci::pb::control_service_client::ControlServiceClient;
use zeroci::profile::Profile;

/// A connected control-API client and the address it was connected to (for messages).
pub struct Client {
    pub rpc: ControlServiceClient<Channel>,
    pub controller: String,
    profile: Profile,
    /// The TLS diagnosis (see [`crate::diagnose`]) is tried once at most.
    diagnosed: Cell<bool>,
}

/// Loads the profile: `--profile` when given, else the default search path.
pub fn load_profile(explicit: Option<&Path>) -> anyhow::Result<Profile> {
    let path: PathBuf = match explicit {
        Some(p) => p.to_path_buf(),
        None => Profile::default_path(),
    };
    if !path.exists() {
        return Err(anyhow!(
            "no CLI profile at {}: run `zeroci-controller init` to create one (it writes \
             .zeroci/cli.toml), or pass --profile FILE",
            path.display()
        ));
    }
    Ok(Profile::load(&path)?)
}

/// An expired certificate would only get an opaque TLS alert from the controller: say what it is.
fn refuse_expired(cert_pem: &str, path: &Path) -> anyhow::Result<()> {
    let Ok(not_after) =
        zeroci::pki::first_cert_der(cert_pem).and_then(|d| zeroci::pki::not_after(&d))
    else {
        return Ok(()); // not readable here: the TLS layer explains
    };
    if not_after <= zeroci::now_unix_ms() / 1000 {
        let when =
            crate::render::human_time(not_after * 1000).unwrap_or_else(|| not_after.to_string());
        return Err(anyhow!(
            "the client certificate {} expired at {when}: ask an admin of the controller for a new one \
             (zeroci-controller user add NAME)",
            path.display()
        ));
    }
    Ok(())
}

fn read_pem(what: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

impl Client {
    /// Connects with mutual TLS as the profile's user.
    pub async fn connect(profile: &Profile) -> anyhow::Result<Client> {
        let ca = read_pem("CA certificate", &profile.ca)?;
        let cert = read_pem("client certificate", &profile.cert)?;
        refuse_expired(&cert, &profile.cert)?;
        let key = read_pem("client key", &profile.key)?;
        let url = zeroci::tls::endpoint_url(&profile.controller);
        let endpoint = Channel::from_shared(url)
            .map_err(|e| {
                anyhow!(
                    "invalid controller address {:?} in the profile: {e}",
                    profile.controller
                )
            })?
            .tls_config(zeroci::tls::client_config(&ca, Some((&cert, &key))))
            .map_err(|e| anyhow!("TLS configuration: {}", error_chain(&e)))?
            .connect_timeout(Duration::from_secs(10))
            // A controller host that vanishes without closing the connection must not leave a
            // following `run` hanging forever; pings notice it.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(|e| {
            anyhow!(
                "the controller at {} is not reachable: {}",
                profile.controller,
                error_chain(&e)
            )
        })?;
        Ok(Client {
            rpc: ControlServiceClient::new(channel),
            controller: profile.controller.clone(),
            profile: profile.clone(),
            diagnosed: Cell::new(false),
        })
    }

    /// A user-facing error for a failed RPC.
    pub fn rpc_error(&self, status: &tonic::Status) -> anyhow::Error {
        // With TLS 1.3 the controller judges our certificate after the handshake, so a refusal reaches
        // the RPC only as a closed connection; the alert naming the reason may or may not be in the
        // chain, depending on timing. Ask the controller directly, once.
        let mut detail = None;
        if is_transport_failure(status)
            && !looks_like_refused_certificate(&status_message(status, &self.controller, None))
            && !self.diagnosed.replace(true)
        {
            detail = crate::diagnose::tls_verdict(&self.profile);
        }
        anyhow!(status_message(status, &self.controller, detail.as_deref()))
    }

    /// Like [`Client::rpc_error`], but NOT_FOUND means the job does not exist.
    pub fn job_error(&self, status: &tonic::Status, job: u64) -> anyhow::Error {
        if status.code() == tonic::Code::NotFound {
            anyhow!("job {job} not found")
        } else {
            self.rpc_error(status)
        }
    }
}

/// `err` and all its sources, joined by ": ", skipping a source whose text is already included (hyper and
/// tonic often repeat their inner error in their own message).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    append_sources(&mut out, err.source());
    out
}

fn append_sources(out: &mut String, mut source: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = e.source();
    }
}

/// The message for a failed RPC. Transport-level failures carry their cause only in the source chain
/// (with TLS 1.3 a refused client certificate shows up here, at the first call, as "transport error"), so
/// the whole chain is printed then.
/// `detail` is an extra cause found by other means, appended.
pub fn status_message(status: &tonic::Status, controller: &str, detail: Option<&str>) -> String {
    use tonic::Code;
    let mut message = status.message().to_string();
    append_sources(&mut message, std::error::Error::source(status));
    if let Some(detail) = detail {
        message = format!("{message}: {detail}");
    }
    if message.is_empty() {
        message = status.code().description().to_string();
    }
    match status.code() {
        Code::Unavailable => format!("the controller at {controller} is not reachable: {message}"),
        Code::PermissionDenied => format!("permission denied: {message}"),
        Code::Unauthenticated => format!("not authenticated: {message}"),
        _ if looks_like_refused_certificate(&message) => format!(
            "{message} (the controller at {controller} refused this client certificate; check `cert` \
             and `key` in the profile)"
        ),
        _ => message,
    }
}

/// A failure of the connection rather than an answer from the controller's code.
fn is_transport_failure(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unknown | Code::Cancelled | Code::Internal | Code::Unavailable
    ) && std::error::Error::source(status).is_some()
}

fn looks_like_refused_certificate(message: &str) -> bool {
    [
        "CertificateRequired",
        "UnknownCA",
        "BadCertificate",
        "CertificateExpired",
        "CertificateRevoked",
    ]
    .iter()
    .any(|alert| message.contains(alert))
}

/// Whether a broken follow stream is worth re-requesting: the connection or the controller went away,
/// rather than the controller refusing the request.
pub fn is_retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    !matches!(
        status.code(),
        Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::InvalidArgument
            | Code::Unimplemented
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_message_test(s: &tonic::Status, controller: &str) -> String {
        status_message(s, controller, None)
    }

    #[test]
    fn unavailable_names_the_controller() {
        let s = tonic::Status::unavailable("connection refused");
        assert_eq!(
            status_message_test(&s, "127.0.0.1:7701"),
            "the controller at 127.0.0.1:7701 is not reachable: connection refused"
        );
    }

    #[test]
    fn permission_denied_and_plain_messages() {
        let s = tonic::Status::permission_denied("viewer may not submit jobs");
        assert_eq!(
            status_message_test(&s, "x"),
            "permission denied: viewer may not submit jobs"
        );
        let s = tonic::Status::invalid_argument("bad commit");
        assert_eq!(status_message_test(&s, "x"), "bad commit");
        let s = tonic::Status::internal("");
        assert!(!status_message_test(&s, "x").is_empty());
    }

    #[test]
    fn source_chain_is_shown() {
        let inner = std::io::Error::other("received fatal alert: CertificateRequired");
        let s = tonic::Status::from_error(Box::new(inner));
        let m = status_message_test(&s, "ctl:1");
        assert!(m.contains("CertificateRequired"), "{m}");
        assert!(m.contains("refused this client certificate"), "{m}");
    }

    #[test]
    fn retryable_codes() {
        assert!(is_retryable(&tonic::Status::unavailable("")));
        assert!(is_retryable(&tonic::Status::unknown("transport error")));
        assert!(is_retryable(&tonic::Status::internal("h2 protocol error")));
        assert!(!is_retryable(&tonic::Status::not_found("")));
        assert!(!is_retryable(&tonic::Status::permission_denied("")));
    }

    #[test]
    fn missing_profile_mentions_init() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_profile(Some(&dir.path().join("nope.toml")))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("zeroci-controller init"), "{err}");
        assert!(err.contains("--profile"), "{err}");
    }
}
