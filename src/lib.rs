//! ZeroCI's shared library: what the controller, the agent, the CLI and the end-to-end tests all need.
//!
//! - [`pb`]: the generated gRPC code for `proto/zeroci/v1` (agent and control APIs).
//! - [`backoff`]: the one retry pacing (capped exponential, full jitter).
//! - [`bootstrap`]: the file a provisioner leaves for the agent.
//! - [`signals`]: the one SIGINT/SIGTERM handling of the binaries.
//! - [`pki`]: the certificate authority, certificates for controller, users and agents, and reading an
//!   identity back out of a peer certificate.
//! - [`tls`]: tonic TLS configurations built from PEM files.
//! - [`pipeline`]: the `zeroCI.yaml` parser, shared so the CLI and the controller say the same thing.
//! - [`profile`]: the CLI profile file.
//! - [`resources`]: what one machine may use (CPUs, memory, processes).
//! - [`telemetry`]: `tracing` set-up for the binaries.
//! - [`process`]: process-group helpers used by the agent and the local provisioner.
//! - [`words`]: the words for the control API's status and kind enums.

pub mod backoff;
pub mod bootstrap;
pub mod cron;
pub mod encoding;
pub mod labels;
pub mod pipeline;
pub mod pki;
pub mod process;
pub mod profile;
pub mod resources;
pub mod sandbox;
pub mod signals;
pub mod spawn;
pub mod telemetry;
pub mod tls;
pub mod words;

/// Generated protobuf and gRPC code for package `zeroci.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("zeroci.v1");
}

/// The TLS server name every controller certificate carries; clients verify against it so the same
/// certificate works whatever address the controller is reached on.
pub const CONTROLLER_SERVER_NAME: &str = "zeroci-controller";

/// Current wall-clock time in Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Installs ring as the process-wide rustls crypto provider. Call once at start-up of every binary and
/// test; calling it again is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
