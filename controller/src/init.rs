//! `zeroci-controller init`: a new installation directory with a config, a private CA, the
//! controller's certificate, an admin client certificate and a CLI profile pointing at them.

use std::path::{Path, PathBuf};

use zeroci::pki::{CertificateAuthority, LONG_VALIDITY, Role, write_private};
use zeroci::profile::Profile;

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub grpc_listen: String,
    pub http_listen: Option<String>,
    pub domain: Option<String>,
    /// Replace an existing installation (new CA: old certificates stop working).
    pub force: bool,
}

pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7701";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7702";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists; pass --force to replace it (this makes a new CA)")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] zeroci::pki::PkiError),
    #[error("invalid option: {0}")]
    Invalid(String),
}

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct Initialized {
    pub config: PathBuf,
    pub profile: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn init(options: &InitOptions) -> Result<Initialized, InitError> {
    let config_path = options.dir.join("config.toml");
    if config_path.exists() && !options.force {
        return Err(InitError::Exists(config_path));
    }
    let grpc: std::net::SocketAddr = options
        .grpc_listen
        .parse()
        .map_err(|_| InitError::Invalid(format!("--grpc-listen {:?}", options.grpc_listen)))?;
    let http_listen = options
        .http_listen
        .clone()
        .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_string());
    let domain = options
        .domain
        .clone()
        .unwrap_or_else(|| format!("http://{http_listen}"));
    let config = Config::for_init(&options.grpc_listen, Some(&http_listen), &domain);
    config.validate().map_err(InitError::Invalid)?;

    let pki = options.dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(io(&pki))?;
    let (ca, ca_pair) = CertificateAuthority::generate("ZeroCI CA")?;
    let mut names = vec!["127.0.0.1".to_string(), "::1".to_string()];
    if !grpc.ip().is_unspecified() {
        names.push(grpc.ip().to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_string());
        }
    }
    let server = ca.issue_controller(&names)?;
    let ca_cert = pki.join("ca.crt");
    write_private(&ca_cert, &ca_pair.cert_pem)?;
    // A new CA starts a new list of issued certificates.
    let registry = crate::users::UserRegistry::beside(&ca_cert);
    match std::fs::remove_file(registry.path()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(registry.path())(e));
        }
        _ => {}
    }
    let (admin, _) = registry
        .add(&ca, "admin", Role::Admin, LONG_VALIDITY)
        .map_err(|e| InitError::Invalid(e.to_string()))?;
    for (name, contents) in [
        ("ca.key", &ca_pair.key_pem),
        ("controller.crt", &server.cert_pem),
        ("controller.key", &server.key_pem),
        ("admin.crt", &admin.cert_pem),
        ("admin.key", &admin.key_pem),
    ] {
        write_private(&pki.join(name), contents)?;
    }
    let config_text = toml::to_string(&config).map_err(|e| InitError::Invalid(e.to_string()))?;
    // Owner-only: the config will hold the GitHub token, the webhook secret and repositories' secrets.
    write_private(
        &config_path,
        &format!(
            "# ZeroCI controller configuration. Every key is explained in examples/config.toml of the\n# ZeroCI sources and in its README (section Configuration).\n{config_text}"
        ),
    )?;
    let client_host = if grpc.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        grpc.ip().to_string()
    };
    let profile = Profile {
        controller: std::net::SocketAddr::new(
            client_host
                .parse()
                .map_err(|_| InitError::Invalid(client_host.clone()))?,
            grpc.port(),
        )
        .to_string(),
        ca: "pki/ca.crt".into(),
        cert: "pki/admin.crt".into(),
        key: "pki/admin.key".into(),
    };
    let profile_path = options.dir.join("cli.toml");
    std::fs::write(&profile_path, profile.to_toml()).map_err(io(&profile_path))?;
    Ok(Initialized {
        config: config_path,
        profile: profile_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_config_and_profile_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let options = InitOptions {
            dir: dir.path().join("z"),
            grpc_listen: "127.0.0.1:0".into(),
            http_listen: None,
            domain: None,
            force: false,
        };
        let done = init(&options).unwrap();
        let config = Config::load(&done.config).unwrap();
        assert!(config.tls.ca.is_file());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&done.config)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "config.toml holds secrets");
        let profile = Profile::load(&done.profile).unwrap();
        assert!(profile.cert.is_file());
        assert!(matches!(init(&options), Err(InitError::Exists(_))));
        init(&InitOptions {
            force: true,
            ..options
        })
        .unwrap();
    }
}
