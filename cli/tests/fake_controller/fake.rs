//! The fake controller: a scripted `ControlService` behind real mutual TLS, and the PKI and profile to
//! reach it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use zeroci::pb::{self, control_service_server as server, log_event};
use zeroci::pki::{CertPair, CertificateAuthority, Role};

pub const JOB: u64 = 7;

#[derive(Default)]
pub struct State {
    pub submitted: Vec<pb::SubmitJobRequest>,
    final_status: String,
    /// The job's whole log, ending with `JobDone`.
    events: Vec<pb::LogEvent>,
    /// Pause between events while streaming.
    delay: Duration,
    pub stream_calls: usize,
}

#[derive(Clone, Default)]
pub struct Fake(Arc<Mutex<State>>);

impl Fake {
    pub fn new(final_status: &str, events: Vec<pb::LogEvent>, delay: Duration) -> Fake {
        // Stored events carry their cursors, as the controller's do; `JobDone` is not stored.
        let mut events: Vec<pb::LogEvent> = events
            .into_iter()
            .enumerate()
            .map(|(i, mut event)| {
                event.cursor = Some(pb::LogCursor {
                    attempt: 1,
                    seq: i as u64 + 1,
                });
                event
            })
            .collect();
        events.push(pb::LogEvent {
            cursor: None,
            kind: Some(log_event::Kind::JobDone(job(final_status))),
        });
        Fake(Arc::new(Mutex::new(State {
            final_status: final_status.into(),
            events,
            delay,
            ..State::default()
        })))
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

pub fn job(status: &str) -> pb::Job {
    pb::Job {
        id: JOB,
        status: pb::JobStatus::from_word(status).expect("a job status") as i32,
        repo: "demo".into(),
        repo_url: "/src/demo".into(),
        ref_name: "main".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        url: format!("http://ci.test/jobs/{JOB}"),
        created_at_unix_ms: 1_700_000_000_000,
        started_at_unix_ms: 1_700_000_001_000,
        finished_at_unix_ms: 1_700_000_004_200,
        steps: vec![step("success", Some(0))],
        reason: String::new(),
        attempt: 1,
        triggered_by: "admin".into(),
        artifacts: Vec::new(),
        ..Default::default()
    }
}

pub fn step(status: &str, exit_code: Option<i32>) -> pb::StepInfo {
    pb::StepInfo {
        index: 0,
        name: "build".into(),
        kind: pb::StepKind::Script as i32,
        status: pb::StepStatus::from_word(status).expect("a step status") as i32,
        exit_code,
        started_at_unix_ms: 1_700_000_001_000,
        finished_at_unix_ms: if exit_code.is_some() {
            1_700_000_002_500
        } else {
            0
        },
        script: "make".into(),
        message: String::new(),
        ..Default::default()
    }
}

pub fn started() -> pb::LogEvent {
    pb::LogEvent {
        cursor: None,
        kind: Some(log_event::Kind::StepStarted(step("running", None))),
    }
}

pub fn finished(exit: i32) -> pb::LogEvent {
    let status = if exit == 0 { "success" } else { "failure" };
    pb::LogEvent {
        cursor: None,
        kind: Some(log_event::Kind::StepFinished(step(status, Some(exit)))),
    }
}

pub fn output(bytes: &[u8]) -> pb::LogEvent {
    pb::LogEvent {
        cursor: None,
        kind: Some(log_event::Kind::Output(pb::LogOutput {
            step: 0,
            stream: pb::OutputStream::Stdout as i32,
            data: bytes.to_vec().into(),
        })),
    }
}

#[tonic::async_trait]
impl server::ControlService for Fake {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        self.state().submitted.push(request.into_inner());
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(pb::Job {
                status: pb::JobStatus::Queued as i32,
                finished_at_unix_ms: 0,
                ..job("queued")
            }),
        }))
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let status = self.state().final_status.clone();
        Ok(Response::new(pb::ListJobsResponse {
            jobs: vec![job(&status)],
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        if request.get_ref().id != JOB {
            return Err(Status::not_found("no such job"));
        }
        Ok(Response::new(job(&self.state().final_status)))
    }

    async fn get_test_report(
        &self,
        _request: Request<pb::GetTestReportRequest>,
    ) -> Result<Response<pb::GetTestReportResponse>, Status> {
        Ok(Response::new(pb::GetTestReportResponse::default()))
    }

    async fn rerun_job(
        &self,
        _request: Request<pb::RerunJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        Err(Status::unimplemented("the fake controller does not rerun"))
    }

    async fn add_schedule(
        &self,
        _request: Request<pb::AddScheduleRequest>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        Err(Status::unimplemented(
            "the fake controller has no schedules",
        ))
    }

    async fn list_schedules(
        &self,
        _request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        Err(Status::unimplemented(
            "the fake controller has no schedules",
        ))
    }

    async fn get_schedule(
        &self,
        _request: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        Err(Status::unimplemented(
            "the fake controller has no schedules",
        ))
    }

    async fn remove_schedule(
        &self,
        _request: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::RemoveScheduleResponse>, Status> {
        Err(Status::unimplemented(
            "the fake controller has no schedules",
        ))
    }

    async fn pause_schedule(
        &self,
        _request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        Err(Status::unimplemented(
            "the fake controller has no schedules",
        ))
    }

    async fn run_schedule(
        &self,
        _request: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        Err(Status::unimplemented(
            "the fake controller has no schedules",
        ))
    }

    async fn create_join_token(
        &self,
        _request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        Err(Status::unimplemented("the fake controller has no pool"))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        Err(Status::unimplemented("the fake controller has no pool"))
    }

    async fn revoke_join_token(
        &self,
        _request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenInfo>, Status> {
        Err(Status::unimplemented("the fake controller has no pool"))
    }

    type DownloadArtifactStream = ReceiverStream<Result<pb::ArtifactData, Status>>;

    async fn download_artifact(
        &self,
        _request: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        Err(Status::not_found("the fake controller keeps no artifacts"))
    }

    type StreamLogsStream = ReceiverStream<Result<pb::LogEvent, Status>>;

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        if request.get_ref().id != JOB {
            return Err(Status::not_found("no such job"));
        }
        let after = request.get_ref().after.map(|c| (c.attempt, c.seq));
        let (events, delay) = {
            let mut state = self.state();
            state.stream_calls += 1;
            // Resuming: only what follows the cursor asked for.
            let events: Vec<pb::LogEvent> = state
                .events
                .iter()
                .filter(|e| {
                    e.cursor
                        .is_none_or(|c| after.is_none_or(|a| (c.attempt, c.seq) > a))
                })
                .cloned()
                .collect();
            (events, state.delay)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        if request.get_ref().id != JOB {
            return Err(Status::not_found("no such job"));
        }
        Ok(Response::new(job("cancelled")))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Ok(Response::new(pb::ListAgentsResponse {
            agents: vec![pb::AgentInfo {
                job_id: JOB,
                attempt: 1,
                address: "127.0.0.1:5555".into(),
                hostname: "sandbox-7".into(),
                version: "0.1.0".into(),
                last_seen_unix_ms: zeroci::now_unix_ms(),
                connected_at_unix_ms: zeroci::now_unix_ms() - 120_000,
            }],
            pool_hosts: vec![pb::PoolHostInfo {
                name: "rack-1".into(),
                labels: vec!["linux".into(), "gpu".into()],
                capacity: 4,
                machines: vec!["job-7-1".into()],
                isolated: true,
                token_name: "rack".into(),
                connected_at_unix_ms: zeroci::now_unix_ms() - 60_000,
                last_seen_unix_ms: zeroci::now_unix_ms(),
                ..Default::default()
            }],
        }))
    }
}

/// A CA, the controller's certificate, and a profile for a user of that CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca_pem: String,
    server: CertPair,
}

impl Pki {
    fn new() -> Pki {
        zeroci::install_crypto_provider();
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let server = ca.issue_controller(&[]).unwrap();
        let user = ca
            .issue_user("admin", Role::Admin, Duration::from_secs(3600))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("admin.crt"), &user.cert_pem).unwrap();
        std::fs::write(dir.path().join("admin.key"), &user.key_pem).unwrap();
        Pki {
            ca_pem: ca.cert_pem().to_string(),
            server,
            dir,
        }
    }

    /// A profile for `addr`, with a certificate from this CA or (`foreign`) from another one.
    pub fn profile(&self, addr: &str, foreign: bool) -> PathBuf {
        let (cert, key) = if foreign {
            let (other, _) = CertificateAuthority::generate("other CA").unwrap();
            let user = other
                .issue_user("mallory", Role::Admin, Duration::from_secs(3600))
                .unwrap();
            std::fs::write(self.dir.path().join("other.crt"), &user.cert_pem).unwrap();
            std::fs::write(self.dir.path().join("other.key"), &user.key_pem).unwrap();
            ("other.crt", "other.key")
        } else {
            ("admin.crt", "admin.key")
        };
        let path = self
            .dir
            .path()
            .join(if foreign { "foreign.toml" } else { "cli.toml" });
        let text = format!(
            "controller = \"{addr}\"\nca = \"ca.crt\"\ncert = \"{cert}\"\nkey = \"{key}\"\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Serves `fake` on `listener` from a runtime of its own, so that stopping it drops every
    /// connection at once, as a controller process that dies would.
    pub fn serve(&self, fake: Fake, listener: std::net::TcpListener) -> Running {
        let tls =
            zeroci::tls::server_config(&self.ca_pem, &self.server.cert_pem, &self.server.key_pem);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.spawn(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = TcpListener::from_std(listener).unwrap();
                let _ = tonic::transport::Server::builder()
                    .tls_config(tls)
                    .unwrap()
                    .add_service(server::ControlServiceServer::new(fake))
                    .serve_with_incoming(TcpListenerStream::new(listener))
                    .await;
            });
            // Returns when the sender is dropped.
            let _ = stopped.recv();
            runtime.shutdown_background();
        });
        Running {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A fake controller serving; stopped when dropped.
pub struct Running {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A running fake controller and a profile pointing at it.
pub struct Setup {
    pub pki: Pki,
    pub fake: Fake,
    pub profile: PathBuf,
    pub addr: String,
    pub server: Running,
}

pub async fn setup(fake: Fake) -> Setup {
    let pki = Pki::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let profile = pki.profile(&addr, false);
    let server = pki.serve(fake.clone(), listener);
    Setup {
        pki,
        fake,
        profile,
        addr,
        server,
    }
}
