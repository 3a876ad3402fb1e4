//! What the engine tests run on: the in-memory store (optionally failing on purpose), a scripted
//! provisioner that makes no process, and an in-process agent that speaks to the engine's API
//! directly. No binary is spawned and no port is bound.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroci::pb;
use zeroci::pb::agent_event::Kind as EventKind;
use zeroci::pki::{CertificateAuthority, Identity};
use zeroci::resources::Resources;
use zeroci_controller::config::Config;
use zeroci_controller::engine::{ActiveJob, Engine, EngineParts};
use zeroci_controller::jobs::{JobId, JobRecord, MachineRecord, NewJob, NotificationFailure};
use zeroci_controller::notify::Notifications;
use zeroci_controller::provisioner::pool::tokens::JoinToken;
use zeroci_controller::provisioner::{MachineLedger, MachineRequest, ProvisionError, Provisioner};
use zeroci_controller::queue::InProcessQueue;
use zeroci_controller::schedules::Schedule;
use zeroci_controller::store::memory::MemoryStore;
use zeroci_controller::store::{
    ArtifactPiece, ArtifactStore, ByteStream, JobFilter, JobStore, JoinTokenStore, LogCursor,
    LogEvent, LogStore, LogStream, Payloads, ReportStore, ScheduleStore, StoreError, Stores,
};

/// A provisioner that makes nothing: it records what it was asked, can fail on purpose, and hands each
/// request to the test so an in-process agent can take the machine's place.
#[derive(Default)]
pub struct ScriptedProvisioner {
    pub created: Mutex<Vec<String>>,
    pub destroyed: Mutex<HashSet<String>>,
    /// The next this many creates fail with a retryable error.
    pub fail_next: AtomicU32,
    /// Every machine is in use: creates answer `NoCapacity` while this is set.
    pub full: std::sync::atomic::AtomicBool,
    /// Each `limit` call: the machine and what it was limited to.
    pub limited: Mutex<Vec<(String, Resources)>>,
    requests: Mutex<Option<mpsc::UnboundedSender<MachineRequest>>>,
}

impl ScriptedProvisioner {
    pub fn requests(&self) -> mpsc::UnboundedReceiver<MachineRequest> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.requests.lock().unwrap() = Some(tx);
        rx
    }

    pub fn created(&self) -> Vec<String> {
        self.created.lock().unwrap().clone()
    }

    pub fn destroyed(&self) -> HashSet<String> {
        self.destroyed.lock().unwrap().clone()
    }
}

#[async_trait]
impl Provisioner for ScriptedProvisioner {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    async fn create(
        &self,
        request: &MachineRequest,
        ledger: &dyn MachineLedger,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, ProvisionError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(ProvisionError::NoCapacity {
                kind: "scripted",
                message: "all scripted machines are in use".into(),
            });
        }
        ledger.record(serde_json::json!({ "made": false })).await?;
        self.created.lock().unwrap().push(request.name.clone());
        if cancel.is_cancelled() {
            return Err(ProvisionError::Cancelled {
                name: request.name.clone(),
            });
        }
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(ProvisionError::Start {
                name: request.name.clone(),
                message: "scripted failure".into(),
                retryable: true,
            });
        }
        if let Some(tx) = self.requests.lock().unwrap().as_ref() {
            let _ = tx.send(request.clone());
        }
        Ok(serde_json::json!({ "made": true }))
    }

    async fn limit(
        &self,
        machine: &MachineRecord,
        resources: &Resources,
    ) -> Result<Vec<String>, ProvisionError> {
        self.limited
            .lock()
            .unwrap()
            .push((machine.name.clone(), *resources));
        Ok(vec!["limits not enforced here: cpu (scripted)".into()])
    }

    async fn destroy(&self, machine: &MachineRecord) -> Result<(), ProvisionError> {
        self.destroyed.lock().unwrap().insert(machine.name.clone());
        Ok(())
    }
}

/// The in-memory store with a switch that makes log appends fail (a full disk, a database down).
#[derive(Default)]
pub struct FailingStore {
    pub inner: MemoryStore,
    pub fail_logs: AtomicBool,
}

#[async_trait]
impl JobStore for FailingStore {
    async fn create(&self, new: NewJob, now_ms: i64) -> Result<JobRecord, StoreError> {
        self.inner.create(new, now_ms).await
    }
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn put(&self, job: &mut JobRecord) -> Result<(), StoreError> {
        self.inner.put(job).await
    }
    async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        self.inner.list(filter).await
    }
    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.inner.unfinished().await
    }
    async fn with_machines(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.inner.with_machines().await
    }
    async fn claim_delivery(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.claim_delivery(id).await
    }
    async fn release_delivery(&self, id: &str) -> Result<(), StoreError> {
        self.inner.release_delivery(id).await
    }
    async fn put_notification_failure(
        &self,
        id: JobId,
        failure: NotificationFailure,
    ) -> Result<(), StoreError> {
        self.inner.put_notification_failure(id, failure).await
    }
    async fn clear_notification_failure(
        &self,
        id: JobId,
        notifier: &str,
    ) -> Result<(), StoreError> {
        self.inner.clear_notification_failure(id, notifier).await
    }
    async fn notification_failures(
        &self,
        id: JobId,
    ) -> Result<Vec<NotificationFailure>, StoreError> {
        self.inner.notification_failures(id).await
    }
}

#[async_trait]
impl LogStore for FailingStore {
    async fn append(&self, job: JobId, events: Vec<LogEvent>) -> Result<(), StoreError> {
        if self.fail_logs.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                path: format!("jobs/{job}/log"),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
            });
        }
        self.inner.append(job, events).await
    }
    fn read(&self, job: JobId, after: LogCursor, payloads: Payloads) -> LogStream {
        self.inner.read(job, after, payloads)
    }
    async fn close(&self, job: JobId) {
        self.inner.close(job).await
    }
}

#[async_trait]
impl ScheduleStore for FailingStore {
    async fn put_schedule(&self, schedule: &mut Schedule) -> Result<(), StoreError> {
        self.inner.put_schedule(schedule).await
    }
    async fn get_schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        self.inner.get_schedule(name).await
    }
    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        self.inner.schedules().await
    }
    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_schedule(name).await
    }
}

#[async_trait]
impl JoinTokenStore for FailingStore {
    async fn add_join_token(&self, token: &JoinToken) -> Result<bool, StoreError> {
        self.inner.add_join_token(token).await
    }
    async fn join_token(&self, id: &str) -> Result<Option<JoinToken>, StoreError> {
        self.inner.join_token(id).await
    }
    async fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError> {
        self.inner.join_tokens().await
    }
    async fn remove_join_token(&self, name: &str) -> Result<Option<JoinToken>, StoreError> {
        self.inner.remove_join_token(name).await
    }
}

#[async_trait]
impl ReportStore for FailingStore {
    async fn put_report(&self, job: JobId, at: LogCursor, xml: Bytes) -> Result<(), StoreError> {
        self.inner.put_report(job, at, xml).await
    }
    async fn report(&self, job: JobId, at: LogCursor) -> Result<Option<Bytes>, StoreError> {
        self.inner.report(job, at).await
    }
}

#[async_trait]
impl ArtifactStore for FailingStore {
    async fn put_pieces(&self, job: JobId, pieces: Vec<ArtifactPiece>) -> Result<(), StoreError> {
        self.inner.put_pieces(job, pieces).await
    }
    fn read_artifact(&self, job: JobId, attempt: u32, name: &str) -> ByteStream {
        self.inner.read_artifact(job, attempt, name)
    }
}

/// Timeouts short enough for tests: an agent is lost after 2 s, a lease lasts 3 s, a failing store
/// ends the job after 1 s.
pub fn test_config(controller_id: &str) -> Config {
    let mut config = Config::for_init("127.0.0.1:0", None, "http://ci.test");
    config.main.workers = 4;
    config.main.lost_agent_timeout = 2;
    config.main.heartbeat_interval_ms = 200;
    config.main.provision_timeout = 30;
    config.main.lease_secs = 3;
    config.main.store_failure_timeout = 1;
    config.main.shutdown_grace = 0;
    config.main.controller_id = Some(controller_id.into());
    config
}

/// One engine (a controller without its front doors) running on the given store.
pub struct Controller {
    pub engine: Arc<Engine>,
    pub provisioner: Arc<ScriptedProvisioner>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl Controller {
    pub async fn start(config: Config, stores: Stores) -> Controller {
        zeroci::install_crypto_provider();
        let provisioner = Arc::new(ScriptedProvisioner::default());
        let (ca, _) = CertificateAuthority::generate("test").expect("a CA");
        let shutdown = CancellationToken::new();
        let engine = Engine::new(EngineParts {
            config: Arc::new(config),
            stores,
            queue: Arc::new(InProcessQueue::default()),
            provisioner: provisioner.clone(),
            ca,
            agent_endpoint: "127.0.0.1:1".into(),
            shutdown: shutdown.clone(),
            github: None,
            notifications: Notifications::none(),
        });
        let tracker = TaskTracker::new();
        engine.recover(&tracker).await.expect("recovery");
        engine.start_workers(&tracker);
        tokio::spawn(engine.clone().take_over_expired(tracker.clone()));
        Controller {
            engine,
            provisioner,
            shutdown,
            tracker,
        }
    }

    /// Stops taking jobs and waits for the workers (running jobs are left to the next start).
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(zeroci_testkit::patience(), self.tracker.wait())
            .await
            .expect("workers stop");
    }

    pub async fn submit(&self) -> JobId {
        let new = NewJob {
            repo: "demo".into(),
            repo_url: "/src/demo".into(),
            ref_name: "main".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            triggered_by: "test".into(),
            step_timeout_secs: 0,
            github_repo: None,
            untrusted: false,
            supersede: false,
            ..Default::default()
        };
        self.engine.submit(new).await.expect("submitted").id
    }

    /// Submits a job and plays its agent once its machine is asked for: the job id, the machine
    /// request and the attached agent.
    pub async fn run_job(&self) -> (JobId, MachineRequest, FakeAgent) {
        let mut requests = self.provisioner.requests();
        let id = self.submit().await;
        let request = requests.recv().await.expect("a machine request");
        let agent = FakeAgent::attach(&self.engine, id, request.attempt).await;
        (id, request, agent)
    }

    pub async fn record(&self, id: JobId) -> JobRecord {
        self.engine.jobs.get(id).await.unwrap().expect("job exists")
    }

    /// Waits for the job's final status.
    pub async fn finished(&self, id: JobId) -> JobRecord {
        zeroci_testkit::eventually("the job's final status", || async {
            let record = self.record(id).await;
            record.status.is_final().then_some(record)
        })
        .await
    }
}

/// An agent inside the test: attached to the engine as the real one is, sending events by hand.
pub struct FakeAgent {
    pub active: Arc<ActiveJob>,
    pub rx: mpsc::Receiver<Result<pb::ControllerMessage, tonic::Status>>,
    next_seq: u64,
}

impl FakeAgent {
    pub async fn attach(engine: &Engine, job_id: JobId, attempt: u32) -> FakeAgent {
        let (tx, rx) = mpsc::channel(64);
        let hello = pb::Hello {
            job_id,
            attempt,
            agent_version: "test".into(),
            has_assignment: false,
            last_seq: 0,
            hostname: "test".into(),
        };
        let active = engine
            .attach(
                Identity::Agent { job_id, attempt },
                hello,
                tx,
                "test".into(),
                1,
                CancellationToken::new(),
            )
            .await
            .expect("attached");
        FakeAgent {
            active,
            rx,
            next_seq: 1,
        }
    }

    /// Numbers events from the next sequence number on.
    pub fn events(&mut self, kinds: Vec<EventKind>) -> Vec<pb::AgentEvent> {
        kinds
            .into_iter()
            .map(|kind| {
                let seq = self.next_seq;
                self.next_seq += 1;
                event(seq, kind)
            })
            .collect()
    }
}

pub fn event(seq: u64, kind: EventKind) -> pb::AgentEvent {
    pb::AgentEvent {
        seq,
        at_unix_ms: 1_700_000_000_000 + seq as i64,
        kind: Some(kind),
    }
}

pub fn checked_out(script: &str) -> EventKind {
    checked_out_file(&format!("script:\n  - {script}\n"))
}

/// A checkout that found `zeroCI.yaml` with this text.
pub fn checked_out_file(pipeline: &str) -> EventKind {
    EventKind::CheckedOut(pb::CheckedOut {
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        has_pipeline_file: true,
        pipeline_file: pipeline.as_bytes().to_vec().into(),
        pipeline_file_too_large: false,
    })
}

pub fn started(step: u32) -> EventKind {
    EventKind::StepStarted(pb::StepStarted { step })
}

pub fn exited(step: u32, exit_code: i32) -> EventKind {
    EventKind::StepExited(pb::StepExited {
        step,
        exit_code,
        ..Default::default()
    })
}

pub fn output(step: u32, text: &str) -> EventKind {
    EventKind::Output(pb::Output {
        step,
        stream: pb::OutputStream::Stdout as i32,
        data: text.as_bytes().to_vec().into(),
    })
}

pub fn finished() -> EventKind {
    EventKind::Finished(pb::Finished {})
}

/// A whole successful run of a one-step job that prints `text`.
pub fn whole_run(text: &str) -> Vec<EventKind> {
    vec![
        started(0),
        exited(0, 0),
        checked_out("echo"),
        started(1),
        output(1, text),
        exited(1, 0),
        finished(),
    ]
}

/// The job's output as stored, in order.
pub async fn stored_output(engine: &Engine, id: JobId) -> (Vec<u8>, Vec<u64>) {
    let events = zeroci_controller::store::collect_log(engine.logs.read(
        id,
        LogCursor::START,
        Payloads::All,
    ))
    .await
    .unwrap();
    let bytes = events
        .iter()
        .filter(|e| e.kind == zeroci_controller::store::EventKind::Output)
        .flat_map(|e| e.payload.to_vec())
        .collect();
    let seqs = events.iter().map(|e| e.agent_seq).collect();
    (bytes, seqs)
}
