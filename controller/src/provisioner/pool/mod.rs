//! The `pool` provisioner: machines on hosts that joined this controller with `zeroci-agent join`
//! (Pontus's self-registering test runners). A job's machine is a fresh sandbox the host makes on
//! request; its per-job agent enrolls and attaches like any other, so only making and destroying a
//! machine differ from the `local` kind.
//!
//! A job waits (`NoCapacity`) while no joined host offers its labels with a free place. A host's
//! machines keep running while its stream is down (a controller restart): the host names them when it
//! joins again, and a destroy asked meanwhile waits for it to come back.

pub mod hosts;
pub mod membership;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::info;
use zeroci::pb;
use zeroci::pb::pool_controller_message::Kind;
use zeroci::resources::Resources;

use self::hosts::{Answer, PoolHosts};
use super::{MachineLedger, MachineRequest, ProvisionError, Provisioner};
use crate::config::PoolConfig;
use crate::jobs::MachineRecord;

/// How long a host may take to make a machine and start its agent.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a host may take to stop and remove a machine.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a destroy waits for a host that is not joined (it reconnects after a controller restart
/// within seconds).
const REJOIN_WAIT: Duration = Duration::from_secs(30);

pub struct PoolProvisioner {
    hosts: Arc<PoolHosts>,
    agent_give_up_secs: u64,
}

/// What is recorded of a pool machine: the host, before the request is sent; the agent's pid after.
#[derive(Debug, Serialize, Deserialize)]
struct PoolDetails {
    host: String,
    #[serde(default)]
    pid: Option<u32>,
    /// The process limit the host applied at the start, if it could.
    #[serde(default)]
    max_processes: Option<u64>,
}

impl PoolDetails {
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl PoolProvisioner {
    pub fn from_config(config: &PoolConfig) -> PoolProvisioner {
        PoolProvisioner {
            hosts: Arc::new(PoolHosts::default()),
            agent_give_up_secs: config
                .agent_give_up
                .unwrap_or(super::local::DEFAULT_AGENT_GIVE_UP_SECS),
        }
    }

    /// The joined hosts, for the gRPC service they join through.
    pub fn hosts(&self) -> Arc<PoolHosts> {
        self.hosts.clone()
    }
}

#[async_trait]
impl Provisioner for PoolProvisioner {
    fn kind(&self) -> &'static str {
        "pool"
    }

    fn needs_prerequisites(&self) -> bool {
        true
    }

    async fn create(
        &self,
        request: &MachineRequest,
        ledger: &dyn MachineLedger,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, ProvisionError> {
        let name = request.name.clone();
        let host = self
            .hosts
            .place(&name, &request.labels, request.untrusted)
            .map_err(|message| ProvisionError::NoCapacity {
                kind: "pool",
                message,
            })?;
        let mut details = PoolDetails {
            host: host.clone(),
            pid: None,
            max_processes: None,
        };
        let give_back = |error: ProvisionError| {
            self.hosts.release(&host, &request.name);
            error
        };
        ledger.record(details.to_value()).await.map_err(give_back)?;
        let bootstrap_json = serde_json::to_vec(&request.bootstrap).map_err(|e| {
            give_back(ProvisionError::Prepare {
                name: name.clone(),
                message: e.to_string(),
                retryable: false,
            })
        })?;
        let start = |id| {
            Kind::Start(pb::StartMachine {
                request_id: id,
                name: name.clone(),
                bootstrap_json: bootstrap_json.clone().into(),
                repo_url: request.repo_url.clone(),
                give_up_after_secs: self.agent_give_up_secs,
                max_processes: request.resources.pids.unwrap_or(0),
            })
        };
        let answer = tokio::select! {
            answer = self.hosts.request(&host, start, START_TIMEOUT) => answer,
            // The host may still make it: the engine destroys what the ledger names.
            () = cancel.cancelled() => return Err(ProvisionError::Cancelled { name }),
        };
        match answer {
            Ok(Answer::Started {
                pid,
                processes_limited,
            }) => {
                info!(job_id = request.job_id, attempt = request.attempt, %host, pid, machine = %name, "pool machine started");
                details.pid = Some(pid);
                details.max_processes = request.resources.pids.filter(|_| processes_limited);
                Ok(details.to_value())
            }
            Ok(Answer::Failed { message, retryable }) => Err(give_back(ProvisionError::Start {
                name,
                message: format!("pool host {host}: {message}"),
                retryable,
            })),
            Ok(Answer::Destroyed { .. }) => Err(give_back(ProvisionError::Start {
                name,
                message: format!("pool host {host} answered a start with a destroy"),
                retryable: true,
            })),
            // Unknown whether it made the machine: the place stays taken until the destroy.
            Err(e) => Err(ProvisionError::Start {
                name,
                message: e.to_string(),
                retryable: true,
            }),
        }
    }

    /// Only the process limit is applied, at the start: a plan that asks for another one (or for
    /// memory, CPU or disk) is told in the job's log that it is not enforced.
    async fn limit(
        &self,
        machine: &MachineRecord,
        resources: &Resources,
    ) -> Result<Vec<String>, ProvisionError> {
        let applied = serde_json::from_value::<PoolDetails>(machine.details.clone())
            .ok()
            .and_then(|d| d.max_processes);
        let mut asked = Vec::new();
        if resources.memory_mb.is_some() {
            asked.push("memory");
        }
        if resources.cpus.is_some() {
            asked.push("cpu");
        }
        if resources.pids.is_some() && resources.pids != applied {
            asked.push("pids");
        }
        if resources.disk_gb.is_some() {
            asked.push("disk");
        }
        Ok(if asked.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "limits not enforced on pool machines: {}",
                asked.join(", ")
            )]
        })
    }

    async fn destroy(&self, machine: &MachineRecord) -> Result<(), ProvisionError> {
        let Ok(details) = serde_json::from_value::<PoolDetails>(machine.details.clone()) else {
            // Recorded before a host was chosen: nothing was asked of any host.
            return Ok(());
        };
        let failed = |message: String| ProvisionError::Destroy {
            name: machine.name.clone(),
            message,
        };
        if !self.hosts.wait_for(&details.host, REJOIN_WAIT).await {
            return Err(failed(format!(
                "pool host {} is not joined; its machine is removed when its agent exits, or at the next destroy",
                details.host
            )));
        }
        let destroy = |id| {
            Kind::Destroy(pb::DestroyMachine {
                request_id: id,
                name: machine.name.clone(),
            })
        };
        match self
            .hosts
            .request(&details.host, destroy, DESTROY_TIMEOUT)
            .await
        {
            Ok(Answer::Destroyed { error }) if error.is_empty() => {
                self.hosts.release(&details.host, &machine.name);
                Ok(())
            }
            Ok(Answer::Destroyed { error }) => Err(failed(error)),
            Ok(other) => Err(failed(format!("unexpected answer {other:?}"))),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    fn forget(&self, machine: &MachineRecord) {
        if let Ok(details) = serde_json::from_value::<PoolDetails>(machine.details.clone()) {
            self.hosts.release(&details.host, &machine.name);
        }
    }
}
