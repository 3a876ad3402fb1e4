//! The bootstrap file: what a provisioner hands a fresh machine so its agent can enroll.
//!
//! The type lives in the shared library (`zeroci::bootstrap`), so the provisioners that write the file
//! and the agent that reads it cannot drift apart; it is re-exported here as `zeroci_agent::Bootstrap`.
//! The provisioner writes it (mode 0600, it holds a one-time token) with [`Bootstrap::write`]; the agent
//! reads it with [`Bootstrap::read`] once at start-up and deletes it after a successful enrollment,
//! since the token is spent by then. The tests below pin down the file format the agent relies on.

pub use zeroci::bootstrap::{Bootstrap, BootstrapError};

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn round_trips_with_owner_only_mode_and_the_agreed_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.json");
        let b = Bootstrap {
            controller: "127.0.0.1:7443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            token: "secret-token".into(),
            job_id: 42,
        };
        b.write(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Bootstrap::read(&path).unwrap(), b);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["controller"], "127.0.0.1:7443");
        assert_eq!(v["job_id"], 42);
        assert_eq!(v["token"], "secret-token");
        assert!(v["ca_pem"].is_string());
    }

    #[test]
    fn reads_what_a_provisioner_writes_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.json");
        let json = r#"{"controller": "https://ci.example:7443", "ca_pem": "PEM", "token": "t", "job_id": 9}"#;
        std::fs::write(&path, json).unwrap();
        let b = Bootstrap::read(&path).unwrap();
        assert_eq!(
            (b.controller.as_str(), b.job_id),
            ("https://ci.example:7443", 9)
        );
    }

    #[test]
    fn reports_missing_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.json");
        assert!(Bootstrap::read(&path).is_err());
        std::fs::write(&path, b"{\"controller\": 1}").unwrap();
        assert!(Bootstrap::read(&path).is_err());
    }
}
