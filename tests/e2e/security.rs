//! mTLS: who may call what.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig};
use zeroci::pb;
use zeroci::pki::{CertificateAuthority, LONG_VALIDITY, Role};

use crate::harness::{Repo, TestEnv};

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    zeroci::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) async fn channel(env: &TestEnv, tls: ClientTlsConfig) -> Channel {
    Channel::from_shared(format!("https://{}", env.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

fn ca_pem(env: &TestEnv) -> String {
    std::fs::read_to_string(env.home().join("pki/ca.crt")).unwrap()
}

fn our_ca(env: &TestEnv) -> CertificateAuthority {
    CertificateAuthority::load(
        &env.home().join("pki/ca.crt"),
        &env.home().join("pki/ca.key"),
    )
    .unwrap()
}

async fn list_jobs(channel: Channel) -> Result<pb::ListJobsResponse, tonic::Status> {
    let mut client = pb::control_service_client::ControlServiceClient::new(channel);
    client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .map(|r| r.into_inner())
}

#[test]
fn clients_without_a_certificate_or_with_a_foreign_one_are_refused() {
    let env = TestEnv::start();
    runtime().block_on(async {
        // No certificate at all.
        let err = list_jobs(channel(&env, zeroci::tls::client_config(&ca_pem(&env), None)).await)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

        // A certificate from another CA, even one with an admin identity.
        let (other_ca, _) = CertificateAuthority::generate("someone else").unwrap();
        let rogue = other_ca
            .issue_user("admin", Role::Admin, LONG_VALIDITY)
            .unwrap();
        let tls =
            zeroci::tls::client_config(&ca_pem(&env), Some((&rogue.cert_pem, &rogue.key_pem)));
        let result = match Channel::from_shared(format!("https://{}", env.grpc_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => list_jobs(channel).await.map(|_| ()),
            Err(_) => Err(tonic::Status::unavailable("handshake refused")),
        };
        assert!(result.is_err(), "a foreign certificate was accepted");

        // A viewer may read but not write.
        let viewer = our_ca(&env)
            .issue_user("val", Role::Viewer, LONG_VALIDITY)
            .unwrap();
        let tls =
            zeroci::tls::client_config(&ca_pem(&env), Some((&viewer.cert_pem, &viewer.key_pem)));
        let ch = channel(&env, tls).await;
        list_jobs(ch.clone()).await.expect("viewer can list");
        let mut client = pb::control_service_client::ControlServiceClient::new(ch);
        let err = client
            .submit_job(pb::SubmitJobRequest {
                repo_url: "/x".into(),
                commit: "HEAD".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    });
    // The CLI says so clearly too.
    let profile = env.home().join("rogue.toml");
    let (other_ca, _) = CertificateAuthority::generate("someone else").unwrap();
    let rogue = other_ca
        .issue_user("admin", Role::Admin, LONG_VALIDITY)
        .unwrap();
    std::fs::write(env.home().join("rogue.crt"), &rogue.cert_pem).unwrap();
    std::fs::write(env.home().join("rogue.key"), &rogue.key_pem).unwrap();
    std::fs::write(
        &profile,
        format!(
            "controller = \"{}\"\nca = \"pki/ca.crt\"\ncert = \"rogue.crt\"\nkey = \"rogue.key\"\n",
            env.grpc_addr
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::harness::bin("zeroci"))
        .arg("--profile")
        .arg(&profile)
        .arg("jobs")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
}

#[test]
fn agent_certificates_act_only_for_their_own_job() {
    let env = TestEnv::start();
    let repo = Repo::new(&env, "target", &[("zeroCI.yaml", "script:\n  - echo hi\n")]);
    let job = env.submit(&repo.path);
    assert_eq!(env.wait_job(job)["status"], "success");
    let ca = our_ca(&env);
    runtime().block_on(async {
        // A certificate for job 999 trying to speak for `job`.
        let agent = ca.issue_agent(999, 1, Duration::from_secs(600)).unwrap();
        let tls =
            zeroci::tls::client_config(&ca_pem(&env), Some((&agent.cert_pem, &agent.key_pem)));
        let ch = channel(&env, tls).await;
        let mut client = pb::agent_service_client::AgentServiceClient::new(ch.clone());
        let hello = pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
                job_id: job,
                attempt: 1,
                ..Default::default()
            })),
        };
        let err = client
            .attach(tokio_stream::iter(vec![hello]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

        // Its own job id, but a job that is over: refused.
        let agent = ca.issue_agent(job, 1, Duration::from_secs(600)).unwrap();
        let tls =
            zeroci::tls::client_config(&ca_pem(&env), Some((&agent.cert_pem, &agent.key_pem)));
        let own = channel(&env, tls).await;
        let mut client = pb::agent_service_client::AgentServiceClient::new(own.clone());
        let hello = pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
                job_id: job,
                attempt: 1,
                ..Default::default()
            })),
        };
        let err = client
            .attach(tokio_stream::iter(vec![hello]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

        // Agent certificates cannot use the control API.
        let err = list_jobs(own).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        // A made-up bootstrap token enrolls nothing.
        let mut enroll = pb::agent_service_client::AgentServiceClient::new(
            channel(&env, zeroci::tls::client_config(&ca_pem(&env), None)).await,
        );
        let (_, csr) = zeroci::pki::generate_csr().unwrap();
        let err = enroll
            .enroll(pb::EnrollRequest {
                bootstrap_token: "0".repeat(64),
                csr_pem: csr,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    });
}

#[test]
fn an_enrolment_flood_with_made_up_tokens_is_refused_cheaply_and_real_agents_still_get_in() {
    let env = TestEnv::start();
    let ca = ca_pem(&env);
    let addr = env.grpc_addr.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A guesser on the controller's own address (as a job on this host would be) floods enrolment
    // for as long as a real job runs beside it.
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            runtime().block_on(async {
                let channel = Channel::from_shared(format!("https://{addr}"))
                    .unwrap()
                    .tls_config(zeroci::tls::client_config(&ca, None))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
                let mut refusals = std::collections::BTreeMap::<String, usize>::new();
                let mut i = 0usize;
                while i < 300 || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // Well-formed guesses (a look at the jobs) and malformed ones (not even that).
                    let bootstrap_token = if i % 2 == 0 {
                        format!("{i:064x}")
                    } else {
                        "not a token".repeat(i % 7)
                    };
                    let err = client
                        .enroll(pb::EnrollRequest {
                            bootstrap_token,
                            csr_pem: String::new(),
                        })
                        .await
                        .unwrap_err();
                    *refusals.entry(format!("{:?}", err.code())).or_default() += 1;
                    i += 1;
                }
                refusals
            })
        })
    };
    let repo = Repo::new(
        &env,
        "beside-a-flood",
        &[("zeroCI.yaml", "script:\n  - echo in\n")],
    );
    let id = env.submit(&repo.path);
    assert_eq!(
        env.wait_job(id)["status"],
        "success",
        "its agent got in during the flood"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let refusals = flood.join().unwrap();
    let total: usize = refusals.values().sum();
    let limited = refusals.get("ResourceExhausted").copied().unwrap_or(0);
    assert!(
        limited * 10 >= total * 8,
        "after a short burst the address is refused without a look at any job: {refusals:?}"
    );
    let refused = ["Unauthenticated", "PermissionDenied"]
        .iter()
        .map(|code| refusals.get(*code).copied().unwrap_or(0))
        .sum::<usize>();
    assert_eq!(
        refused + limited,
        total,
        "nothing but refusals: {refusals:?}"
    );
}

/// `zeroci-controller --config … user ARGS` of this installation.
fn user_command(env: &TestEnv, args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::harness::bin("zeroci-controller"))
        .arg("--config")
        .arg(env.home().join("config.toml"))
        .arg("user")
        .args(args)
        .output()
        .expect("run zeroci-controller user")
}

#[test]
fn issued_users_act_within_their_role_and_are_refused_once_revoked_or_expired() {
    let env = TestEnv::start();
    let out = env.dir.path().join("users");
    let out_arg = out.to_str().unwrap();
    let added = user_command(
        &env,
        &[
            "add",
            "val",
            "--out",
            out_arg,
            "--controller",
            &env.grpc_addr,
        ],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let val = out.join("val.toml");
    let listed = env.cli_as(&val, &["jobs"], None);
    assert_eq!(listed.code, 0, "a viewer reads: {}", listed.stderr);
    let cancel = env.cli_as(&val, &["cancel", "1"], None);
    assert_ne!(cancel.code, 0);
    assert!(cancel.stderr.contains("viewer"), "{}", cancel.stderr);

    let list = user_command(&env, &["list"]);
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(list.contains("admin\tadmin\tvalid"), "{list}");
    assert!(list.contains("val\tviewer\tvalid"), "{list}");

    // Revoked while the controller runs: refused from the next call on, no restart.
    let revoked = user_command(&env, &["revoke", "val"]);
    assert!(revoked.status.success());
    let refusal = zeroci_testkit::wait_for("the revoked certificate refused", || {
        let out = env.cli_as(&val, &["jobs"], None);
        (out.code != 0).then_some(out.stderr)
    });
    assert!(refusal.contains("revoked"), "{refusal}");
    assert!(
        String::from_utf8_lossy(&user_command(&env, &["list"]).stdout)
            .contains("val\tviewer\trevoked")
    );
    assert_eq!(env.cli(&["jobs"]).code, 0, "the admin is untouched");

    // A certificate past its expiry: the CLI says so, and the controller refuses it anyway.
    let short = our_ca(&env)
        .issue_user("brief", Role::Admin, Duration::from_secs(1))
        .unwrap();
    std::fs::write(out.join("brief.crt"), &short.cert_pem).unwrap();
    std::fs::write(out.join("brief.key"), &short.key_pem).unwrap();
    let profile = std::fs::read_to_string(&val)
        .unwrap()
        .replace("val.crt", "brief.crt")
        .replace("val.key", "brief.key");
    let brief = out.join("brief.toml");
    std::fs::write(&brief, profile).unwrap();
    let expired = zeroci_testkit::wait_for("the short certificate expired", || {
        let out = env.cli_as(&brief, &["jobs"], None);
        (out.code != 0).then_some(out.stderr)
    });
    assert!(expired.contains("expired"), "{expired}");
    // The controller's TLS layer refuses it too (a client that does not check, such as this one).
    let runtime = runtime();
    let tls_refusal = zeroci_testkit::wait_for("the expired certificate refused by TLS", || {
        runtime.block_on(async {
            let tls =
                zeroci::tls::client_config(&ca_pem(&env), Some((&short.cert_pem, &short.key_pem)));
            let channel = Channel::from_shared(format!("https://{}", env.grpc_addr))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await;
            match channel {
                Err(e) => Some(format!("{e:?}")),
                Ok(channel) => list_jobs(channel).await.err().map(|e| format!("{e:?}")),
            }
        })
    });
    // TLS 1.3 refuses after the handshake: the client sees the connection closed, not the reason.
    assert!(!tls_refusal.is_empty());
}
