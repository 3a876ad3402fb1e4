//! `tracing` set-up shared by the binaries: `RUST_LOG` filters (default `info`), and
//! `ZEROCI_LOG_FORMAT=json` switches to one JSON object per line. Logs go to stderr so stdout stays free
//! for the program's own output.

use tracing_subscriber::EnvFilter;

/// Initialises the global subscriber; `default_filter` applies when `RUST_LOG` is unset.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("ZEROCI_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
