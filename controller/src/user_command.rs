//! `zeroci-controller user add|list|revoke`: CLI certificates of this installation.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use zeroci::pki::{CertificateAuthority, Role, write_private};
use zeroci::profile::Profile;
use zeroci_controller::config::Config;
use zeroci_controller::users::UserRegistry;

#[derive(Subcommand)]
pub enum UserAction {
    /// Issue a client certificate and write NAME.crt, NAME.key, ca.crt and a CLI profile NAME.toml
    /// into --out (use it with `zeroci --profile NAME.toml`).
    Add {
        name: String,
        /// `viewer` (read-only) or `admin`.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Directory the files go to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The controller address written into the profile (default: from [main] grpc_listen).
        #[arg(long)]
        controller: Option<String>,
    },
    /// List the issued certificates: user, role, state, expiry and fingerprint.
    List,
    /// Revoke every certificate of a user, or the one whose fingerprint starts with the given hex (at
    /// least 12 characters). A running controller refuses it from its next call on.
    Revoke { who: String },
}

pub fn run(config: &Config, action: UserAction) -> anyhow::Result<ExitCode> {
    let registry = UserRegistry::beside(&config.tls.ca);
    match action {
        UserAction::Add {
            name,
            role,
            days,
            out,
            controller,
        } => {
            let role = Role::parse(&role)
                .with_context(|| format!("--role must be viewer or admin, got {role:?}"))?;
            anyhow::ensure!(
                (1..=36_500).contains(&days),
                "--days must be between 1 and 36500"
            );
            let ca = CertificateAuthority::load(&config.tls.ca, &config.tls.ca_key)?;
            let (pair, issued) =
                registry.add(&ca, &name, role, Duration::from_secs(days * 86_400))?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            write_private(&out.join(format!("{name}.crt")), &pair.cert_pem)?;
            write_private(&out.join(format!("{name}.key")), &pair.key_pem)?;
            std::fs::write(out.join("ca.crt"), ca.cert_pem())
                .with_context(|| format!("cannot write {}", out.join("ca.crt").display()))?;
            let profile = Profile {
                controller: controller.unwrap_or_else(|| client_address(config)),
                ca: "ca.crt".into(),
                cert: format!("{name}.crt").into(),
                key: format!("{name}.key").into(),
            };
            let profile_path = out.join(format!("{name}.toml"));
            std::fs::write(&profile_path, profile.to_toml())
                .with_context(|| format!("cannot write {}", profile_path.display()))?;
            println!(
                "issued a {} certificate for {name}, valid until {} (fingerprint {})\nprofile: {}",
                issued.role,
                date(issued.not_after),
                issued.fingerprint,
                shown(&profile_path)
            );
        }
        UserAction::List => {
            let now = zeroci::now_unix_ms() / 1000;
            println!("USER\tROLE\tSTATE\tEXPIRES\tFINGERPRINT");
            for cert in registry.load()? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    cert.name,
                    cert.role,
                    cert.state(now),
                    date(cert.not_after),
                    &cert.fingerprint[..16]
                );
            }
        }
        UserAction::Revoke { who } => {
            let revoked = registry.revoke(&who)?;
            if revoked.is_empty() {
                println!("{who}: already revoked");
            }
            for cert in revoked {
                println!(
                    "revoked {} ({}, fingerprint {})",
                    cert.name,
                    cert.role,
                    &cert.fingerprint[..16]
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The address a CLI on this host dials: `grpc_listen`, with an unspecified IP made loopback.
fn client_address(config: &Config) -> String {
    match config.main.grpc_listen.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        _ => config.main.grpc_listen.clone(),
    }
}

fn date(unix_secs: i64) -> String {
    zeroci_controller::api::pages::clock(unix_secs.saturating_mul(1000))
}

fn shown(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
