//! The fake controller and the harness of the component tests: an in-process `AgentService` over
//! mutual TLS that enrolls the agent, hands it a job for a git repository made by the test, answers the
//! checkout with steps, stores events exactly once by sequence number and acknowledges them; plus
//! [`run_agent`], which starts it and the real agent binary and waits for the agent to exit.
//!
//! Concurrency: each `Attach` stream is served by its own task; what the fake sees is kept behind one
//! mutex and read by the test after the agent exited.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use zeroci::pb::agent_service_server::{AgentService, AgentServiceServer};
use zeroci::pb::{
    Ack, AgentEvent, AgentMessage, Assignment, ControllerMessage, EnrollRequest, EnrollResponse,
    Hello, RunSteps, Step, StepKind, Welcome, agent_event::Kind as Ev, agent_message::Kind as Msg,
    controller_message::Kind as Cmd,
};
use zeroci::pki::{CertificateAuthority, Identity};
use zeroci_agent::Bootstrap;

pub const JOB_ID: u64 = 7;
pub const TOKEN: &str = "one-time-token";
pub const PIPELINE: &[u8] = b"steps:\n  - name: build\n    run: make\n";

/// What the fake has seen; the test reads it after the agent exits.
#[derive(Default, Debug)]
pub struct Seen {
    /// Events stored exactly once, in sequence order.
    pub stored: Vec<AgentEvent>,
    /// Highest acknowledged sequence number.
    pub acked: u64,
    /// Every event received, duplicates included.
    pub received: Vec<AgentEvent>,
    pub hellos: Vec<Hello>,
    pub heartbeats: usize,
    /// `GoingAway` reasons received.
    pub going_away: Vec<String>,
    /// Protocol violations the fake noticed.
    pub violations: Vec<String>,
    /// The steps were decided (sent after `CheckedOut`).
    pub steps_decided: bool,
    /// The one stream drop of the reconnect case happened.
    pub dropped: bool,
}

struct Fake {
    ca: CertificateAuthority,
    assignment: Assignment,
    case: Case,
    /// The agent's process id, for `Trigger::Sigterm`.
    agent_pid: AtomicU32,
    seen: Arc<Mutex<Seen>>,
}

/// What the fake does differently from a plain, well-behaved controller.
#[derive(Debug, Clone, Default)]
pub struct Case {
    /// The token the agent presents (the fake accepts only `TOKEN`).
    pub token: Option<&'static str>,
    /// Stop acknowledging at the first output of this step, then drop the stream at the next heartbeat.
    pub drop_at_step: Option<u32>,
    /// With `drop_at_step`: instead of dropping the stream, go silent on it (no acks, no heartbeats).
    pub silent: bool,
    /// The job's commit is reachable only from `refs/pull/1/head` (forces a fetch after the clone).
    pub off_branch: bool,
    /// Refuse every `Attach` as a stale attempt.
    pub fence: bool,
    /// Steps to send instead of [`job_steps`].
    pub steps: Option<RunSteps>,
    /// When an output event carries exactly these bytes, do this (once).
    pub on_output: Option<(&'static [u8], Trigger)>,
    /// Connect the agent to a port nobody listens on.
    pub unreachable: bool,
    /// Run the agent in a sandbox (`zeroci-agent sandbox`), as a controller's `local` machines do.
    pub sandbox: Option<SandboxCase>,
}

/// How the sandbox of a [`Case`] is built.
#[derive(Debug, Clone, Default)]
pub struct SandboxCase {
    /// The host user that starts the keeper (and that root inside the sandbox is): not root, as under
    /// a controller that does not run as root.
    pub keeper_uid: u32,
    /// Host paths shown read-only besides the system's.
    pub read_only: Vec<PathBuf>,
    /// Host paths hidden.
    pub hidden: Vec<PathBuf>,
}

/// Output bytes per (step, stream) from the stored events.
pub fn outputs(stored: &[AgentEvent]) -> std::collections::BTreeMap<(u32, i32), Vec<u8>> {
    let mut out = std::collections::BTreeMap::<(u32, i32), Vec<u8>>::new();
    for e in stored {
        if let Some(Ev::Output(o)) = &e.kind {
            out.entry((o.step, o.stream))
                .or_default()
                .extend_from_slice(&o.data);
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// Send `Cancel` with a one-second grace period.
    Cancel,
    /// SIGTERM the agent process.
    Sigterm,
}

/// The gRPC face of the fake (each stream's task holds its own `Arc`).
struct FakeService(Arc<Fake>);

#[tonic::async_trait]
impl AgentService for FakeService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let request = request.into_inner();
        if request.bootstrap_token != TOKEN {
            return Err(Status::permission_denied("unknown bootstrap token"));
        }
        let (certificate_pem, not_after_unix_ms) = self
            .0
            .ca
            .sign_agent_csr(&request.csr_pem, JOB_ID, 1, Duration::from_secs(3600))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(EnrollResponse {
            certificate_pem,
            job_id: JOB_ID,
            attempt: 1,
            not_after_unix_ms,
        }))
    }

    async fn renew(
        &self,
        _request: Request<zeroci::pb::RenewRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        Err(Status::unimplemented(
            "the fake controller's certificates outlive its tests",
        ))
    }

    type FetchArtifactStream = ReceiverStream<Result<zeroci::pb::ArtifactData, Status>>;

    async fn fetch_artifact(
        &self,
        _request: Request<zeroci::pb::FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        Err(Status::not_found("the fake controller keeps no artifacts"))
    }

    type AttachStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        if self.0.case.fence {
            return Err(Status::failed_precondition("attempt 1 is stale"));
        }
        let identity = Identity::from_der(certs[0].as_ref())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        if identity
            != (Identity::Agent {
                job_id: JOB_ID,
                attempt: 1,
            })
        {
            return Err(Status::permission_denied(format!(
                "not this job's agent: {identity:?}"
            )));
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.0.clone().serve(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Tx = mpsc::Sender<Result<ControllerMessage, Status>>;

async fn say(tx: &Tx, kind: Cmd) {
    let _ = tx.send(Ok(ControllerMessage { kind: Some(kind) })).await;
}

impl Fake {
    async fn serve(self: Arc<Self>, mut inbound: Streaming<AgentMessage>, tx: Tx) {
        let hello = match inbound.message().await {
            Ok(Some(AgentMessage {
                kind: Some(Msg::Hello(hello)),
            })) => hello,
            other => {
                self.violation(format!("first message is not Hello: {other:?}"));
                let _ = tx
                    .send(Err(Status::invalid_argument("expected Hello")))
                    .await;
                return;
            }
        };
        let welcome = {
            let mut seen = self.seen.lock().unwrap();
            seen.hellos.push(hello.clone());
            Welcome {
                acked_seq: seen.acked,
                assignment: (!hello.has_assignment).then(|| self.assignment.clone()),
                heartbeat_interval_ms: 300,
                run_steps: seen.steps_decided.then(|| self.steps()),
            }
        };
        say(&tx, Cmd::Welcome(welcome)).await;
        let mut holding_acks = false;
        while let Ok(Some(message)) = inbound.message().await {
            match message.kind {
                Some(Msg::Event(event)) => {
                    let seq = event.seq;
                    let (ack, checked_out) = self.store(event);
                    self.maybe_trigger(&tx, seq).await;
                    let first_output_of_drop_step =
                        !self.seen.lock().unwrap().dropped
                            && self.case.drop_at_step.is_some_and(|step| {
                                self.seen.lock().unwrap().stored.get(seq as usize - 1).is_some_and(
                                |e| matches!(&e.kind, Some(Ev::Output(o)) if o.step == step),
                            )
                            });
                    holding_acks |= first_output_of_drop_step;
                    if checked_out {
                        self.seen.lock().unwrap().steps_decided = true;
                        say(&tx, Cmd::RunSteps(self.steps())).await;
                    }
                    if !holding_acks && let Some(seq) = ack {
                        self.seen.lock().unwrap().acked = seq;
                        say(&tx, Cmd::Ack(Ack { seq })).await;
                    }
                }
                Some(Msg::Heartbeat(_)) => {
                    self.seen.lock().unwrap().heartbeats += 1;
                    if holding_acks && self.case.silent {
                        // Say nothing at all on this stream from now on; the agent must notice.
                        self.seen.lock().unwrap().dropped = true;
                        continue;
                    }
                    if holding_acks {
                        // The command is still printing, yet heartbeats keep coming: drop the stream now,
                        // with events stored but unacknowledged.
                        self.seen.lock().unwrap().dropped = true;
                        let _ = tx
                            .send(Err(Status::unavailable("fake controller drops the stream")))
                            .await;
                        return;
                    }
                    say(
                        &tx,
                        Cmd::Heartbeat(zeroci::pb::Heartbeat {
                            at_unix_ms: zeroci::now_unix_ms(),
                        }),
                    )
                    .await;
                }
                Some(Msg::GoingAway(g)) => self.seen.lock().unwrap().going_away.push(g.reason),
                other => self.violation(format!("unexpected message {other:?}")),
            }
        }
    }

    /// Stores an event exactly once; returns the sequence number to acknowledge and whether it was a new
    /// `CheckedOut`.
    fn store(&self, event: AgentEvent) -> (Option<u64>, bool) {
        let mut seen = self.seen.lock().unwrap();
        seen.received.push(event.clone());
        let next = seen.stored.len() as u64 + 1;
        if event.seq < next {
            let original = &seen.stored[event.seq as usize - 1];
            if original.kind != event.kind {
                let v = format!("resent event {} differs from the original", event.seq);
                seen.violations.push(v);
            }
            return (Some(event.seq.max(seen.acked)), false);
        }
        if event.seq > next {
            seen.violations
                .push(format!("gap: expected seq {next}, got {}", event.seq));
            return (None, false);
        }
        let checked_out = matches!(event.kind, Some(Ev::CheckedOut(_)));
        seen.stored.push(event);
        (Some(next), checked_out)
    }

    fn steps(&self) -> RunSteps {
        self.case.steps.clone().unwrap_or_else(job_steps)
    }

    /// Fires the case's trigger when the stored event `seq` is the output it waits for.
    async fn maybe_trigger(&self, tx: &Tx, seq: u64) {
        let Some((bytes, trigger)) = self.case.on_output else {
            return;
        };
        let hit = {
            let seen = self.seen.lock().unwrap();
            let is_hit =
                |e: &AgentEvent| matches!(&e.kind, Some(Ev::Output(o)) if &o.data[..] == bytes);
            let first = seen.stored.iter().find(|e| is_hit(e)).map(|e| e.seq);
            first == Some(seq) && seen.received.iter().filter(|e| e.seq == seq).count() == 1
        };
        if !hit {
            return;
        }
        match trigger {
            Trigger::Cancel => {
                let cancel = zeroci::pb::Cancel {
                    reason: "cancelled by the test".into(),
                    grace_secs: 1,
                };
                say(tx, Cmd::Cancel(cancel)).await;
            }
            Trigger::Sigterm => {
                let pid = self.agent_pid.load(Ordering::SeqCst) as i32;
                assert!(pid > 0, "agent pid not recorded");
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }

    fn violation(&self, what: String) {
        self.seen.lock().unwrap().violations.push(what);
    }
}

use zeroci_testkit::git;

/// A repository with a `zeroCI.yaml`; returns the commit the job should run. With `off_branch`, the
/// commit is only reachable from `refs/pull/1/head`, so the agent must fetch it after cloning.
pub fn make_repo(dir: &Path, off_branch: bool) -> String {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README"), "hello\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "first"]);
    if off_branch {
        git(dir, &["checkout", "-q", "-b", "pr"]);
    }
    std::fs::write(dir.join("zeroCI.yaml"), PIPELINE).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "pipeline"]);
    let sha = git(dir, &["rev-parse", "HEAD"]);
    if off_branch {
        git(dir, &["update-ref", "refs/pull/1/head", &sha]);
        git(dir, &["checkout", "-q", "main"]);
        git(dir, &["branch", "-q", "-D", "pr"]);
    }
    sha
}

pub fn step(index: u32, name: &str, kind: StepKind, script: &str) -> Step {
    Step {
        index,
        name: name.into(),
        kind: kind as i32,
        script: script.into(),
        ..Default::default()
    }
}

pub fn job_steps() -> RunSteps {
    RunSteps {
        bin_path: String::new(),
        artifacts: Vec::new(),
        steps: vec![
            step(
                1,
                "install",
                StepKind::Install,
                r#"printf 'installing\n'; printf 'env:%s|%s|%s|%s' "$CI" "$ZEROCI_JOB_ID" "$ZEROCI_STEP" "$ZEROCI_REPO" >&2"#,
            ),
            step(
                2,
                "test",
                StepKind::Script,
                r#"for i in 1 2 3 4 5 6; do echo "line $i"; sleep 0.2; done; printf 'no newline'; exit 3"#,
            ),
            step(
                3,
                "after",
                StepKind::Script,
                r#"printf '\000\001\377binary\r\n'; printf '%s' "$ZEROCI_COMMIT" >&2"#,
            ),
        ],
    }
}

pub struct Run {
    pub seen: Arc<Mutex<Seen>>,
    pub exit_code: Option<i32>,
    pub bootstrap: PathBuf,
    pub log: String,
    pub commit: String,
    /// Keeps the files alive until the test is done with them.
    _dir: tempfile::TempDir,
}

/// Starts the fake and the agent binary and waits for the agent to exit.
pub async fn run_agent(case: Case) -> Run {
    let off_branch = case.off_branch;
    zeroci::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let commit = make_repo(&repo, off_branch);
    let repo_url = if off_branch {
        format!("file://{}", repo.display())
    } else {
        repo.display().to_string()
    };

    let (ca, ca_pair) = CertificateAuthority::generate("test CA").unwrap();
    let server_pair = ca.issue_controller(&["127.0.0.1".into()]).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = Arc::new(Fake {
        ca,
        assignment: Assignment {
            job_id: JOB_ID,
            attempt: 1,
            repo_url,
            commit: commit.clone(),
            repo_name: "demo".into(),
            branch: "main".into(),
            ..Default::default()
        },
        case: case.clone(),
        agent_pid: AtomicU32::new(0),
        seen: seen.clone(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = zeroci::tls::server_config(
        &ca_pair.cert_pem,
        &server_pair.cert_pem,
        &server_pair.key_pem,
    );
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(AgentServiceServer::new(FakeService(fake.clone())))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
    let server = tokio::spawn(server);

    let controller = if case.unreachable {
        // Bound and dropped: nothing listens there any more.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        closed.local_addr().unwrap().to_string()
    } else {
        addr.to_string()
    };
    let bootstrap = dir.path().join("bootstrap.json");
    let token = case.token.unwrap_or(TOKEN).to_string();
    let handover = Bootstrap {
        controller,
        ca_pem: ca_pair.cert_pem.clone(),
        token,
        job_id: JOB_ID,
    };
    handover.write(&bootstrap).unwrap();
    let log_path = dir.path().join("agent.log");
    let work = dir.path().join("work");
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_zeroci-agent"));
    agent
        .env("RUST_LOG", "info,zeroci_agent=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true);
    // Kept open until the agent started: its read end becomes the agent's descriptor 3.
    let mut spec_pipe = None;
    match &case.sandbox {
        None => {
            agent
                .args(["run", "--bootstrap"])
                .arg(&bootstrap)
                .arg("--workdir")
                .arg(&work)
                .args(["--give-up-after", if case.unreachable { "1" } else { "30" }]);
        }
        Some(sandbox) => {
            use std::os::unix::fs::{PermissionsExt, chown};
            let uid = sandbox.keeper_uid;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::create_dir(&work).unwrap();
            chown(&work, Some(uid), Some(uid)).unwrap();
            let mut read_only = zeroci::sandbox::default_read_only_paths();
            read_only.extend(sandbox.read_only.iter().cloned());
            let spec = zeroci::sandbox::SandboxSpec {
                bootstrap: handover,
                job_dir: work.clone(),
                uid: None,
                gid: None,
                read_only,
                hidden: sandbox.hidden.clone(),
                sources: vec![repo.clone()],
                network: zeroci::sandbox::StepNetwork::Host,
                hostname: "sandboxed".into(),
                give_up_after_secs: 30,
            };
            let (reader, mut writer) = zeroci::process::pipe().unwrap();
            std::io::Write::write_all(&mut writer, &spec.to_json()).unwrap();
            drop(writer);
            let fd = std::os::fd::AsRawFd::as_raw_fd(&reader);
            agent.args(["sandbox", "--spec-fd", "3"]).uid(uid).gid(uid);
            // SAFETY: dup2 is async-signal-safe; nothing else runs between fork and exec.
            unsafe { agent.pre_exec(move || zeroci::process::inherit_fd(fd, 3)) };
            spec_pipe = Some(reader);
        }
    }
    let mut agent = agent.spawn().unwrap();
    drop(spec_pipe);
    fake.agent_pid.store(agent.id().unwrap(), Ordering::SeqCst);
    let status = tokio::time::timeout(Duration::from_secs(90), agent.wait()).await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = status
        .unwrap_or_else(|_| panic!("agent did not exit; its log:\n{log}"))
        .unwrap();
    let _ = stop_tx.send(true);
    let _ = server.await;
    Run {
        seen,
        exit_code: status.code(),
        bootstrap,
        log,
        commit,
        _dir: dir,
    }
}
