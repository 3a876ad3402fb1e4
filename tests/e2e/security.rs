//! mTLS: who may call what.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig};
use zeroci::pb;
use zeroci::pki::{CertificateAuthority, LONG_VALIDITY, Role};

use crate::harness::{Repo, TestEnv};

fn runtime() -> tokio::runtime::Runtime {
    zeroci::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn channel(env: &TestEnv, tls: ClientTlsConfig) -> Channel {
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
