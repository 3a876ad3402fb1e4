//! The worker side of the engine: taking queued jobs, claiming them, provisioning a machine per
//! pipeline job, supervising it (lease renewal, lost agent, failing store, cancel deadline, shutdown
//! drain) and destroying it afterwards.

use super::*;
use crate::jobs::{Lease, MachineRecord};
use crate::provisioner::{MachineLedger, MachineRequest, ProvisionError};
use crate::queue::Delivery;
use tracing::Instrument;

/// Machines asked for at most this many times when the provisioner says trying again may help.
const PROVISION_TRIES: u32 = 3;
/// The longest pause between asks while every machine is in use (well within any lease).
const CAPACITY_POLL_CAP: Duration = Duration::from_secs(5);

/// Records a machine's progress in its job's record, for the provisioner.
struct JobLedger<'a> {
    engine: &'a Engine,
    active: &'a ActiveJob,
}

#[async_trait::async_trait]
impl MachineLedger for JobLedger<'_> {
    async fn record(&self, details: serde_json::Value) -> Result<(), ProvisionError> {
        let mut state = self.active.state.lock().await;
        let name = match state.record.machine.as_mut() {
            Some(machine) => {
                machine.details = details;
                machine.name.clone()
            }
            None => String::new(),
        };
        self.engine
            .jobs
            .put(&mut state.record)
            .await
            .map_err(|e| ProvisionError::Record {
                name,
                message: e.to_string(),
            })
    }
}

impl Engine {
    /// Starts the worker tasks. Call after [`Engine::recover`].
    pub fn start_workers(self: &Arc<Self>, tracker: &tokio_util::task::TaskTracker) {
        for n in 0..self.config.main.workers {
            let engine = self.clone();
            tracker.spawn(async move { engine.worker_loop(n).await });
        }
    }

    pub(super) async fn worker_loop(self: Arc<Self>, worker: usize) {
        loop {
            // The job first, then a slot: an idle worker holds no slot, so jobs taken over from a dead
            // controller (which need one) are not starved by workers waiting on an empty queue.
            let delivery = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                delivery = self.queue.pop() => delivery,
            };
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(e) => {
                    warn!(worker, error = %e, "cannot take a job from the queue; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let permit = tokio::select! {
                // Not acknowledged: the next start (or another controller) runs it.
                _ = self.shutdown.cancelled() => return,
                permit = self.workers.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let id = delivery.job;
            let span = tracing::info_span!("job", job_id = id, worker);
            match self.run_job(id).instrument(span).await {
                Ok(true) => self.ack(&delivery).await,
                Ok(false) => {} // left running at shutdown: the delivery stays pending
                Err(e) => {
                    // A store that failed during the claim leaves the job queued: queue it again
                    // before letting this delivery go (a duplicate entry of a job that did start is
                    // harmless: its claim finds it no longer queued).
                    error!(job_id = id, worker, error = %e, "job failed inside the controller");
                    self.requeue(id).await;
                    self.ack(&delivery).await;
                }
            }
            drop(permit);
        }
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = self.queue.ack(delivery).await {
            warn!(job_id = delivery.job, error = %e, "cannot acknowledge the queue delivery");
        }
    }

    /// A lease on a job for this controller, from now.
    pub(crate) fn new_lease(&self) -> Lease {
        Lease {
            owner: self.owner.clone(),
            expires_at: zeroci::now_unix_ms() + self.config.lease().as_millis() as i64,
        }
    }

    /// Claims a queued job by compare-and-set on its record: new attempt, a lease for this controller,
    /// the machine recorded. Returns the job and the clear bootstrap token (only its hash is stored);
    /// `None` when there is nothing to run (cancelled while queued, claimed elsewhere, a duplicate).
    pub(super) async fn claim(
        &self,
        id: JobId,
    ) -> Result<Option<(Arc<ActiveJob>, String)>, ControllerError> {
        let _claim = self.claim_lock.lock().await;
        let Some(mut record) = self.jobs.get(id).await? else {
            return Ok(None);
        };
        if record.status != JobStatus::Queued {
            return Ok(None); // cancelled while queued, or a duplicate queue entry
        }
        let token = random_token();
        record.attempt += 1;
        // Whatever an earlier, abandoned run of this job wrote stays in the journal but is not shown.
        record.first_attempt = record.attempt;
        record.status = JobStatus::Provisioning;
        record.started_at = zeroci::now_unix_ms();
        record.steps = vec![apply::checkout_step()];
        record.stages.clear();
        record.artifacts.clear();
        record.machine = Some(self.machine_record(&record, &token));
        record.lease = Some(self.new_lease());
        // Recorded before the machine exists, so a crash never leaves an unknown machine.
        match self.jobs.put(&mut record).await {
            Ok(()) => {}
            Err(crate::store::StoreError::Conflict { .. }) => {
                info!(
                    job_id = id,
                    "job was claimed or changed elsewhere; not running it"
                );
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        let first = LogCursor::new(record.attempt, 0);
        // A new run: what an abandoned earlier run printed is not shown, nor counted.
        Ok(Some((self.register(record, first, 0, 0), token)))
    }

    /// Runs a delivered job to its end. False when it was left running at shutdown.
    pub(super) async fn run_job(self: &Arc<Self>, id: JobId) -> Result<bool, ControllerError> {
        let Some((active, token)) = self.claim(id).await? else {
            return Ok(true);
        };
        self.drive(active, Some(token)).await
    }

    /// Provisions the machine (when a bootstrap `token` is given) and supervises it; then the next
    /// pipeline job's machine, until the job is over (or left running at shutdown).
    /// Returns false when the job was left running at shutdown.
    pub(crate) async fn drive(
        &self,
        mut active: Arc<ActiveJob>,
        mut token: Option<String>,
    ) -> Result<bool, ControllerError> {
        loop {
            let outcome = match self.run_machine(&active, token.take()).await {
                Ok(outcome) => outcome,
                Err(e) if e.is_lease_lost() => {
                    // Another controller holds the job now: its machine and agent are its own.
                    warn!(job_id = active.id, error = %e, "job taken over by another controller");
                    let mut state = active.state.lock().await;
                    self.release(&active, &mut state);
                    drop(state);
                    self.unregister(&active);
                    return Ok(true);
                }
                Err(e) => {
                    // A controller-side failure (the store, most likely): the job cannot be followed
                    // any more. End it, so its machine, worker slot and followers are released.
                    error!(job_id = active.id, error = %e, "ending job after a controller error");
                    {
                        let mut state = active.state.lock().await;
                        let reason = format!("controller error: {e}");
                        let _ = self
                            .finalize(&active, &mut state, JobStatus::Error, reason)
                            .await;
                    }
                    self.destroy_machine(&active, true).await;
                    self.unregister(&active);
                    return Err(e);
                }
            };
            match outcome {
                Outcome::Final => {
                    self.destroy_machine(&active, true).await;
                    self.unregister(&active);
                    return Ok(true);
                }
                Outcome::LeftRunning => {
                    info!(
                        job_id = active.id,
                        "shutting down; job left running for the next start"
                    );
                    self.unregister(&active);
                    return Ok(false);
                }
                Outcome::NextStage if self.shutdown.is_cancelled() => {
                    // The next start finds the stage finished in the log and goes on from there.
                    info!(job_id = active.id, "shutting down between pipeline jobs");
                    self.unregister(&active);
                    return Ok(false);
                }
                Outcome::NextStage => {
                    // The record keeps naming this machine until the next one replaces it, so a crash
                    // in between resumes the pipeline instead of starting it over.
                    self.destroy_machine(&active, false).await;
                    let next = self.next_stage(&active).await;
                    self.unregister(&active);
                    match next? {
                        Some((next, next_token)) => {
                            active = next;
                            token = Some(next_token);
                        }
                        None => return Ok(true),
                    }
                }
            }
        }
    }

    /// Provisions the machine (when a bootstrap token is given) and supervises it.
    pub(super) async fn run_machine(
        &self,
        active: &Arc<ActiveJob>,
        token: Option<String>,
    ) -> Result<Outcome, ControllerError> {
        if let Some(token) = token
            && self.provision(active, token).await? == Provisioned::HandedBack
        {
            return Ok(Outcome::LeftRunning);
        }
        self.supervise(active).await
    }

    pub(super) async fn provision(
        &self,
        active: &Arc<ActiveJob>,
        token: String,
    ) -> Result<Provisioned, ControllerError> {
        let id = active.id;
        let record = active.state.lock().await.record.clone();
        let stage = record.stages.get(record.stage() as usize);
        let (mut resources, _) = self.machine_resources(&record);
        let mut image_name = stage.and_then(|stage| stage.image_name.clone());
        let mut labels = stage.map(|stage| stage.labels.clone()).unwrap_or_default();
        if let Some(first) = self.preview_first_stage(&record).await {
            resources = self.grant_machine(&record, &first.resources).0;
            image_name = first.image_name;
            labels = first.labels;
        }
        let request = MachineRequest {
            job_id: id,
            attempt: active.attempt,
            name: record
                .machine
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            bootstrap: zeroci::bootstrap::Bootstrap {
                controller: self.agent_endpoint.clone(),
                ca_pem: self.ca.cert_pem().to_string(),
                token,
                job_id: id,
            },
            repo_url: record.repo_url.clone(),
            untrusted: record.untrusted,
            resources,
            image_name,
            labels,
        };
        let ledger = JobLedger {
            engine: self,
            active,
        };
        let stop = active.provisioning.clone();
        let _stop_at_shutdown = {
            let (stop, shutdown) = (stop.clone(), self.shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.cancel();
            })
            .abort_handle()
        };
        let mut tries = 0;
        let mut pacing =
            zeroci::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let mut waiting =
            zeroci::backoff::Backoff::new(Duration::from_millis(250), CAPACITY_POLL_CAP);
        let failure = loop {
            tries += 1;
            info!(job_id = id, attempt = active.attempt, machine = %request.name, tries, "provisioning");
            // A machine can take long to make (a remote host, a VM): the claim on the job must not
            // lapse meanwhile. Both futures are polled side by side, so a renewal waiting for the
            // job's state never blocks the ledger write holding it.
            let renewing = async {
                loop {
                    tokio::time::sleep(self.config.lease() / 3).await;
                    if let Err(error) = self.renew_lease(active).await {
                        warn!(job_id = id, %error, "cannot renew the lease while the machine is made");
                    }
                }
            };
            let created = tokio::select! {
                created = self.provisioner.create(&request, &ledger, &stop) => created,
                () = renewing => unreachable!("renewing never ends"),
            };
            match created {
                Ok(details) => {
                    // The agent's time to connect counts from a machine that exists, not from the claim.
                    active.touch();
                    let mut state = active.state.lock().await;
                    if let Some(machine) = state.record.machine.as_mut() {
                        machine.details = details;
                    }
                    state.record.waiting_for = None;
                    self.jobs.put(&mut state.record).await?;
                    return Ok(Provisioned::Made);
                }
                Err(e @ ProvisionError::NoCapacity { .. }) if !stop.is_cancelled() => {
                    // Not a failed try: the job waits, saying for what, until a machine is free.
                    tries -= 1;
                    self.wait_for_machine(active, e.to_string()).await?;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = waiting.wait() => {}
                    }
                }
                Err(e) if e.is_retryable() && tries < PROVISION_TRIES && !stop.is_cancelled() => {
                    warn!(job_id = id, error = %e, "provisioning failed; trying again");
                    let machine = active.state.lock().await.record.machine.clone();
                    if let Some(machine) = machine
                        && let Err(e) = self.provisioner.destroy(&machine).await
                    {
                        break e;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = pacing.wait() => {}
                    }
                }
                Err(e) => break e,
            }
        };
        let stopping = matches!(
            failure,
            ProvisionError::Cancelled { .. } | ProvisionError::NoCapacity { .. }
        ) && self.shutdown.is_cancelled();
        if stopping && active.state.lock().await.record.cancel_reason.is_none() {
            return self.hand_back(active).await;
        }
        warn!(job_id = id, error = %failure, "provisioning failed");
        let mut state = active.state.lock().await;
        let (status, reason) = match (&failure, state.record.cancel_reason.clone()) {
            (ProvisionError::Cancelled { .. }, Some(reason)) => (JobStatus::Cancelled, reason),
            // Cancelled while it waited for a free machine.
            (ProvisionError::NoCapacity { .. }, Some(reason)) if stop.is_cancelled() => {
                (JobStatus::Cancelled, reason)
            }
            _ => (JobStatus::Error, format!("provisioning failed: {failure}")),
        };
        self.finalize(active, &mut state, status, reason).await?;
        Ok(Provisioned::Failed)
    }

    /// The controller stops while the job's machine is being made or waited for: whatever was made of
    /// it is destroyed and the job goes back to the queue, for the next start or another controller,
    /// instead of ending in error for a reason that is not its own.
    async fn hand_back(&self, active: &ActiveJob) -> Result<Provisioned, ControllerError> {
        let mut state = active.state.lock().await;
        if let Some(machine) = state.record.machine.clone()
            && let Err(error) = self.provisioner.destroy(&machine).await
        {
            // Kept on record: the next start destroys it, then finds no agent and ends the job.
            warn!(job_id = active.id, %error, "cannot destroy a half-made machine at shutdown");
            return Ok(Provisioned::HandedBack);
        }
        state.record.status = JobStatus::Queued;
        state.record.machine = None;
        state.record.lease = None;
        state.record.waiting_for = None;
        self.jobs.put(&mut state.record).await?;
        info!(
            job_id = active.id,
            "shutting down before the job had a machine; queued again"
        );
        Ok(Provisioned::HandedBack)
    }

    /// Records why the job waits for a machine (shown by `zeroci show` and its page) and renews its
    /// lease, which only the supervision of a running machine renews otherwise.
    async fn wait_for_machine(
        &self,
        active: &ActiveJob,
        reason: String,
    ) -> Result<(), ControllerError> {
        let mut state = active.state.lock().await;
        if state.record.waiting_for.as_deref() != Some(reason.as_str()) {
            info!(job_id = active.id, %reason, "job waits for a machine");
            self.notify(&state.record);
        }
        state.record.waiting_for = Some(reason);
        state.record.lease = Some(self.new_lease());
        self.jobs.put(&mut state.record).await?;
        Ok(())
    }

    /// The next pipeline job of `done`'s job: a new attempt on a new machine, recorded before it exists.
    /// `None` when the job ended meanwhile (cancelled between pipeline jobs). The old state stays locked
    /// until the new attempt is registered, so a cancel sees either the old attempt or the new one.
    pub(super) async fn next_stage(
        &self,
        done: &Arc<ActiveJob>,
    ) -> Result<Option<(Arc<ActiveJob>, String)>, ControllerError> {
        let mut old = done.state.lock().await;
        if !old.record.status.is_final()
            && let Some(reason) = old.record.cancel_reason.clone()
        {
            self.finalize(done, &mut old, JobStatus::Cancelled, reason)
                .await?;
        }
        if old.record.status.is_final() {
            old.record.machine = None;
            self.jobs.put(&mut old.record).await?;
            return Ok(None);
        }
        let token = random_token();
        old.record.attempt += 1;
        old.record.machine = Some(self.machine_record(&old.record, &token));
        old.record.lease = Some(self.new_lease());
        self.jobs.put(&mut old.record).await?;
        let record = old.record.clone();
        // The old attempt stores nothing more: its agent was told it is done.
        old.retired = true;
        info!(
            job_id = record.id,
            stage = record.stage(),
            "next pipeline job"
        );
        let first = LogCursor::new(record.attempt, 0);
        // The output limit is the job's: earlier stages count.
        let output_bytes = old.output_bytes;
        Ok(Some((self.register(record, first, 0, output_bytes), token)))
    }

    pub(super) fn machine_record(&self, record: &JobRecord, token: &str) -> MachineRecord {
        MachineRecord {
            provisioner: self.provisioner.kind().to_string(),
            name: format!("job-{}-a{}", record.id, record.attempt),
            attempt: record.attempt,
            token_sha256: Some(sha256_hex(token)),
            details: serde_json::Value::Null,
        }
    }

    pub(crate) async fn supervise_recovered(
        &self,
        active: Arc<ActiveJob>,
    ) -> Result<bool, ControllerError> {
        self.drive(active, None).await
    }

    /// Waits for the current machine's work to end, enforcing the lost-agent and cancel deadlines.
    pub(super) async fn supervise(&self, active: &ActiveJob) -> Result<Outcome, ControllerError> {
        let mut phase = active.phase.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(self.config.lease() / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await; // the claim has just been written
        loop {
            match *phase.borrow_and_update() {
                Phase::Final => return Ok(Outcome::Final),
                Phase::StageDone => return Ok(Outcome::NextStage),
                Phase::Released => return Ok(Outcome::LeftRunning),
                Phase::Running => {}
            }
            tokio::select! {
                _ = phase.changed() => {}
                _ = tick.tick() => {
                    self.check_deadlines(active).await?;
                    self.check_limits(active).await?;
                }
                _ = renew.tick() => self.renew_lease(active).await?,
                _ = self.shutdown.cancelled() => {
                    if !self.wait_for_drain(active).await {
                        return Ok(Outcome::LeftRunning);
                    }
                }
            }
        }
    }

    /// During shutdown, gives a running job `shutdown_grace` to end. True when it did.
    pub(super) async fn wait_for_drain(&self, active: &ActiveJob) -> bool {
        let mut phase = active.phase.subscribe();
        let grace = Duration::from_secs(self.config.main.shutdown_grace);
        tokio::time::timeout(grace, phase.wait_for(|p| *p != Phase::Running))
            .await
            .is_ok()
    }

    pub(super) async fn check_deadlines(&self, active: &ActiveJob) -> Result<(), ControllerError> {
        let now = zeroci::now_unix_ms();
        let connected = active.connected.load(Ordering::Relaxed);
        let limit = if connected {
            self.config.lost_agent_timeout()
        } else {
            self.config.provision_timeout()
        };
        let silent_ms = now - active.last_heard_ms.load(Ordering::Relaxed);
        let cancel_deadline = active.cancel_deadline_ms.load(Ordering::Relaxed);
        // Only trouble the agent keeps running into counts: a refusal older than the store's and the
        // agent's patience together is a hiccup whose agent never came back (it is lost, not the
        // store), while a refused agent backing off between resends still counts as refused.
        let patience = self.config.store_failure_timeout() + limit;
        let store_trouble = active
            .store_trouble()
            .filter(|t| now - t.last_ms <= patience.as_millis() as i64);
        // A store refusing the agent's events drops its link, and the agent backs off before it
        // resends: its silence is the store's doing, and the store's rule below ends the job with the
        // real reason.
        let silence_explained = connected && store_trouble.is_some();
        let store_trouble = store_trouble
            .filter(|t| now - t.since_ms > self.config.store_failure_timeout().as_millis() as i64);
        if let Some(trouble) = store_trouble {
            // The agent is alive and resending, but nothing it sends can be kept: end the job instead
            // of letting it resend forever. Its record may not be storable either; the next start then
            // finds the agent gone.
            let mut state = active.state.lock().await;
            let reason = format!(
                "the store keeps failing: {} (for {}s)",
                trouble.error,
                (now - trouble.since_ms) / 1000
            );
            warn!(job_id = active.id, %reason, "ending job");
            self.finalize(active, &mut state, JobStatus::Error, reason)
                .await?;
        } else if silent_ms > limit.as_millis() as i64 && !silence_explained {
            let mut state = active.state.lock().await;
            let reason = if connected {
                format!("agent lost: no message for {}s", silent_ms / 1000)
            } else {
                format!(
                    "agent did not connect within {}s of provisioning",
                    limit.as_secs()
                )
            };
            warn!(job_id = active.id, %reason, "ending job");
            let status = if state.record.cancel_reason.is_some() {
                JobStatus::Cancelled
            } else {
                JobStatus::Error
            };
            self.finalize(active, &mut state, status, reason).await?;
        } else if cancel_deadline > 0 && now > cancel_deadline {
            let mut state = active.state.lock().await;
            let reason = state.record.cancel_reason.clone().unwrap_or_default();
            warn!(
                job_id = active.id,
                "agent did not confirm the cancel in time"
            );
            self.finalize(active, &mut state, JobStatus::Cancelled, reason)
                .await?;
        }
        Ok(())
    }

    /// Cancels a job that has run longer than `[limits] max_job_duration`, or whose output reached
    /// `max_log_bytes` with `on_log_limit = "cancel"` (once: the cancel then takes its usual course).
    pub(super) async fn check_limits(&self, active: &ActiveJob) -> Result<(), ControllerError> {
        let limits = &self.config.limits;
        let (started_at, cancelling) = {
            let state = active.state.lock().await;
            (
                state.record.started_at,
                state.record.cancel_reason.is_some(),
            )
        };
        if cancelling {
            return Ok(());
        }
        let ran_ms = zeroci::now_unix_ms() - started_at;
        let reason = if limits.max_job_duration > 0
            && started_at > 0
            && ran_ms > (limits.max_job_duration as i64).saturating_mul(1000)
        {
            format!(
                "the job ran longer than this controller allows ({}s, [limits] max_job_duration)",
                limits.max_job_duration
            )
        } else if limits.on_log_limit == crate::config::LogLimitAction::Cancel
            && active.output_limit_reached.load(Ordering::Relaxed)
        {
            format!(
                "the job's output reached {} bytes ([limits] max_log_bytes)",
                limits.max_log_bytes
            )
        } else {
            return Ok(());
        };
        warn!(job_id = active.id, %reason, "cancelling job");
        self.cancel(active.id, reason).await.map(|_| ())
    }

    /// Extends this controller's lease on a job it supervises. A conflict means another controller
    /// took the job over (this one was partitioned from the store past its lease): stop supervising.
    pub(super) async fn renew_lease(&self, active: &ActiveJob) -> Result<(), ControllerError> {
        let mut state = active.state.lock().await;
        if state.record.status.is_final() || state.retired {
            return Ok(());
        }
        state.record.lease = Some(self.new_lease());
        match self.jobs.put(&mut state.record).await {
            Ok(()) => Ok(()),
            Err(crate::store::StoreError::Conflict { .. }) => {
                warn!(
                    job_id = active.id,
                    "lease lost to another controller; letting the job go"
                );
                state.retired = true;
                active.send_to_agent(pb::controller_message::Kind::Disconnect(pb::Disconnect {
                    reason: "another controller took this job over".into(),
                    done: false,
                }));
                active.phase.send_replace(Phase::Released);
                Ok(())
            }
            // The store is down: keep going; the failing-store deadline ends the job if it lasts.
            Err(e) => {
                warn!(job_id = active.id, error = %e, "cannot renew the lease");
                Ok(())
            }
        }
    }
}
