//! Bad input over gRPC from an authenticated client and from anyone: oversized and malformed messages
//! get a clear refusal, and the controller goes on serving.

use tonic::transport::Channel;
use zeroci::pb;

use crate::harness::{Repo, TestEnv};
use crate::security::{channel, runtime};

/// A channel as the admin of `env` (its profile's certificate).
async fn admin_channel(env: &TestEnv) -> Channel {
    let read = |name: &str| std::fs::read_to_string(env.home().join("pki").join(name)).unwrap();
    let tls = zeroci::tls::client_config(
        &read("ca.crt"),
        Some((&read("admin.crt"), &read("admin.key"))),
    );
    channel(env, tls).await
}

/// Not an `EnrollRequest`: field 1 is a number where a string is expected.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongShape {
    #[prost(uint64, tag = "1")]
    token: u64,
    #[prost(bytes = "vec", tag = "2")]
    junk: Vec<u8>,
}

#[test]
fn oversized_and_malformed_grpc_messages_are_refused_and_the_controller_serves_on() {
    let env = TestEnv::start();
    runtime().block_on(async {
        let channel = admin_channel(&env).await;
        let mut control = pb::control_service_client::ControlServiceClient::new(channel.clone())
            .max_encoding_message_size(64 << 20);
        // 5 MiB in one field: past the 4 MiB every service accepts.
        let oversized = control
            .submit_job(pb::SubmitJobRequest {
                repo_url: "x".repeat(5 << 20),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                oversized.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{oversized:?}"
        );
        // Bytes that are not the message the method takes.
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let malformed = grpc
            .unary::<WrongShape, pb::EnrollResponse, _>(
                tonic::Request::new(WrongShape {
                    token: 7,
                    junk: vec![0xff; 100],
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/zeroci.v1.AgentService/Enroll",
                ),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                malformed.code(),
                tonic::Code::Internal | tonic::Code::InvalidArgument
            ),
            "{malformed:?}"
        );
        // A submission whose fields are nonsense: refused with a reason, nothing queued.
        let nonsense = control
            .submit_job(pb::SubmitJobRequest {
                repo_url: "\0not a path".into(),
                commit: "-x".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            nonsense.code(),
            tonic::Code::InvalidArgument,
            "{nonsense:?}"
        );
        let listed = control
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.jobs.is_empty(), "{listed:?}");
    });
    // Still serving real work.
    let repo = Repo::new(
        &env,
        "after",
        &[("zeroCI.yaml", "script:\n  - echo fine\n")],
    );
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
}

#[test]
fn a_command_printing_ten_gigabytes_is_cut_at_the_limit_and_the_rest_stays_on_its_machine() {
    let env = TestEnv::start_with(crate::harness::Settings {
        extra: "[limits]\nmax_log_bytes = 1048576\n".into(),
        ..Default::default()
    });
    let yaml = "script:\n  - head -c 10000000000 /dev/zero\n  - echo done > ../after\n";
    let repo = Repo::new(&env, "flood", &[("zeroCI.yaml", yaml)]);
    let id = env.submit(&repo.path);
    let job = env.wait_job(id);
    assert_eq!(job["status"], "success", "{job:#}");
    let (stored, note) = env.log_cut_at_limit(id);
    assert_eq!(stored.len(), 1 << 20);
    assert!(stored.bytes().all(|b| b == 0));
    assert!(note.contains("max_log_bytes"), "{note}");
    // Once told the output is full, the agent kept the rest on its machine: the controller received
    // a small part of the 10 GB (its own count of output bytes agents sent), and its memory stayed
    // small.
    let (_, metrics) = env.http_get("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    let received: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("zeroci_agent_output_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no output counter in {metrics}"));
    assert!(
        (1 << 20..1 << 30).contains(&received),
        "the controller received {received} bytes"
    );
    let peak_kib = env.controller_peak_rss_kib();
    assert!(peak_kib < 300 * 1024, "controller peak RSS {peak_kib} KiB");
    let steps = job["steps"].as_array().unwrap();
    assert_eq!(
        steps.last().unwrap()["status"],
        "success",
        "later steps ran"
    );
}
