//! The worker side of the engine: taking queued jobs, provisioning a machine per pipeline job,
//! supervising it (lost agent, cancel deadline, shutdown drain) and destroying it afterwards.

use super::*;

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
            let permit = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                permit = self.workers.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let id = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                id = self.queue.pop() => id,
            };
            if let Err(e) = self.run_job(id).await {
                error!(job_id = id, worker, error = %e, "job failed inside the controller");
            }
            drop(permit);
        }
    }

    /// Claims a queued job: new attempt, machine recorded, journal opened. Returns the job and the clear
    /// bootstrap token (only its hash is stored).
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
        // Recorded before the machine exists, so a crash never leaves an unknown machine.
        self.jobs.put(&record).await?;
        let writer = self.logs.writer(id)?;
        Ok(Some((self.register(record, writer, 0), token)))
    }

    pub(super) async fn run_job(self: &Arc<Self>, id: JobId) -> Result<(), ControllerError> {
        let Some((active, token)) = self.claim(id).await? else {
            return Ok(());
        };
        self.drive(active, Some(token)).await
    }

    /// Provisions the machine (when a bootstrap `token` is given) and supervises it; then the next
    /// pipeline job's machine, until the job is over (or left running at shutdown).
    pub(crate) async fn drive(
        &self,
        mut active: Arc<ActiveJob>,
        mut token: Option<String>,
    ) -> Result<(), ControllerError> {
        loop {
            let outcome = match self.run_machine(&active, token.take()).await {
                Ok(outcome) => outcome,
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
                    return Ok(());
                }
                Outcome::LeftRunning => {
                    info!(
                        job_id = active.id,
                        "shutting down; job left running for the next start"
                    );
                    self.unregister(&active);
                    return Ok(());
                }
                Outcome::NextStage if self.shutdown.is_cancelled() => {
                    // The next start finds the stage finished in the journal and goes on from there.
                    info!(job_id = active.id, "shutting down between pipeline jobs");
                    self.unregister(&active);
                    return Ok(());
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
                        None => return Ok(()),
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
        if let Some(token) = token {
            self.provision(active, token).await?;
        }
        self.supervise(active).await
    }

    pub(super) async fn provision(
        &self,
        active: &Arc<ActiveJob>,
        token: String,
    ) -> Result<(), ControllerError> {
        let id = active.id;
        let request = {
            let state = active.state.lock().await;
            let machine = state
                .record
                .machine
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            MachineRequest {
                job_id: id,
                attempt: active.attempt,
                name: machine,
                bootstrap: zeroci::bootstrap::Bootstrap {
                    controller: self.agent_endpoint.clone(),
                    ca_pem: self.ca.cert_pem().to_string(),
                    token,
                    job_id: id,
                },
            }
        };
        info!(job_id = id, attempt = active.attempt, machine = %request.name, "provisioning");
        match self.provisioner.create(&request).await {
            Ok(details) => {
                // The agent's time to connect counts from a machine that exists, not from the claim.
                active.touch();
                let mut state = active.state.lock().await;
                if let Some(machine) = state.record.machine.as_mut() {
                    machine.details = details;
                }
                self.jobs.put(&state.record).await?;
            }
            Err(e) => {
                warn!(job_id = id, error = %e, "provisioning failed");
                let mut state = active.state.lock().await;
                self.finalize(
                    active,
                    &mut state,
                    JobStatus::Error,
                    format!("provisioning failed: {e}"),
                )
                .await?;
            }
        }
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
            self.jobs.put(&old.record).await?;
            return Ok(None);
        }
        let mut record = old.record.clone();
        let token = random_token();
        record.attempt += 1;
        record.machine = Some(self.machine_record(&record, &token));
        self.jobs.put(&record).await?;
        // The journal writer moves on with the job: reopening it would rescan the whole journal.
        let writer = std::mem::replace(&mut old.writer, Box::new(crate::store::ClosedWriter));
        info!(
            job_id = record.id,
            stage = record.stage(),
            "next pipeline job"
        );
        Ok(Some((self.register(record, writer, 0), token)))
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
    ) -> Result<(), ControllerError> {
        self.drive(active, None).await
    }

    /// Waits for the current machine's work to end, enforcing the lost-agent and cancel deadlines.
    pub(super) async fn supervise(&self, active: &ActiveJob) -> Result<Outcome, ControllerError> {
        let mut phase = active.phase.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match *phase.borrow_and_update() {
                Phase::Final => return Ok(Outcome::Final),
                Phase::StageDone => return Ok(Outcome::NextStage),
                Phase::Running => {}
            }
            tokio::select! {
                _ = phase.changed() => {}
                _ = tick.tick() => self.check_deadlines(active).await?,
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
        if silent_ms > limit.as_millis() as i64 {
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
}
