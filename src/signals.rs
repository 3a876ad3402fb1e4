//! The one handling of SIGINT and SIGTERM for every long-running binary: the first signal asks for a
//! graceful stop, the second for an immediate one. Installing handlers replaces the default
//! "terminate", so the second signal must still mean something.

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// On the first SIGTERM or SIGINT: calls `on_first` with the signal's name, then cancels `graceful`.
/// On the second: cancels `force`. Fails only when the handlers cannot be installed.
pub fn watch(
    graceful: CancellationToken,
    force: CancellationToken,
    on_first: impl FnOnce(&'static str) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutdown requested (send it again to stop at once)"
        );
        on_first(name);
        graceful.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: stopping now");
        force.cancel();
    }))
}
