//! `[db]` and `[queue]`: the store and the queue backends, with the URIs that may carry passwords
//! kept out of `Debug`.

use serde::{Deserialize, Serialize};

/// `[db]`: where jobs, logs, reports and artifacts are kept. A new backend is one more variant here and
/// one line in `store::Stores::open`.
/// (Variants are structs, even empty ones: serde refuses unknown keys only in those.)
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum DbConfig {
    /// Files under `[main] state_dir` (the default).
    Embedded {},
    /// The controller's memory: nothing survives a restart (tests, benchmarks, throw-away runs).
    Memory {},
    /// MongoDB, shared by every controller of a service: `uri`, or the original ZeroCI's `host` and
    /// `port`; the database `name` (default `zeroci`); `retention_days`: finished runs are deleted
    /// with their logs, reports and artifacts that many days on (default: kept).
    Mongodb {
        uri: Option<String>,
        name: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        retention_days: Option<u32>,
    },
}

/// `[queue]`: where queued jobs wait for a worker. One variant per backend; a new backend is one more
/// variant and one line in `queue::build`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueConfig {
    /// Inside this controller (the default): enough for one controller, since the store keeps every
    /// queued job and a restart queues them again.
    #[serde(rename = "in-process")]
    InProcess {},
    /// A Redis stream with a consumer group, shared by every controller of a service: `url`
    /// (`redis://[:password@]host:port/db`), the stream's key (default `zeroci:jobs`).
    Redis { url: String, stream: Option<String> },
}

// Hand-written, as the URIs may carry passwords.
impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbConfig::Embedded {} => f.write_str("Embedded"),
            DbConfig::Memory {} => f.write_str("Memory"),
            DbConfig::Mongodb {
                name,
                retention_days,
                ..
            } => {
                let uri = self
                    .mongodb()
                    .map(|(uri, _)| crate::store::mongo::redact_uri(&uri));
                f.debug_struct("Mongodb")
                    .field("uri", &uri)
                    .field("name", name)
                    .field("retention_days", retention_days)
                    .finish()
            }
        }
    }
}

impl std::fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueConfig::InProcess {} => f.write_str("InProcess"),
            QueueConfig::Redis { url, stream } => f
                .debug_struct("Redis")
                .field("url", &crate::queue::redis::redact_url(url))
                .field("stream", stream)
                .finish(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig::InProcess {}
    }
}

impl DbConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if let DbConfig::Mongodb {
            retention_days: Some(days),
            ..
        } = self
            && !(1..=36_500).contains(days)
        {
            return Err(format!(
                "[db] retention_days must be between 1 and 36500 (leave it out to keep runs), got {days}"
            ));
        }
        Ok(())
    }

    /// For `mongodb`: the connection URI and the database name.
    pub fn mongodb(&self) -> Option<(String, String)> {
        let DbConfig::Mongodb {
            uri,
            name,
            host,
            port,
            ..
        } = self
        else {
            return None;
        };
        let uri = uri.clone().unwrap_or_else(|| {
            format!(
                "mongodb://{}:{}/",
                host.as_deref().unwrap_or("localhost"),
                port.unwrap_or(27017)
            )
        });
        Some((uri, name.clone().unwrap_or_else(|| "zeroci".into())))
    }
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig::Embedded {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_zerocis_db_host_and_port_still_work() {
        let db: DbConfig =
            toml::from_str("backend = \"mongodb\"\nhost = \"db\"\nport = 27018\n").unwrap();
        assert_eq!(
            db.mongodb().unwrap(),
            ("mongodb://db:27018/".into(), "zeroci".into())
        );
    }

    #[test]
    fn a_retention_of_zero_days_is_refused() {
        let db: DbConfig = toml::from_str("backend = \"mongodb\"\nretention_days = 0\n").unwrap();
        assert!(db.validate().unwrap_err().contains("retention_days"));
    }
}
