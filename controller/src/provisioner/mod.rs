//! The provisioner seam: make a machine for one job attempt, put the agent on it and start it with a
//! one-time bootstrap token; destroy it afterwards. `local` (child process in a private directory) is the
//! default; VMs, ThreeFold Grid, SSH hosts and pool agents are further implementations, each one more
//! module plus one line in [`build`].
//!
//! The engine records the machine in the job before calling `create`, and `create` writes down what it
//! has made so far in the [`MachineLedger`] before every step that costs something (a directory, a VM,
//! a grid contract), so that after a crash halfway `destroy` finds and removes the half-made machine.
//! `destroy` is called on every path out of a job (success, failure, error, cancel, lost agent) and for
//! leftovers after a crash, so it must accept a machine that is half made or already gone.

pub mod capacity;
mod cgroup;
pub mod local;
pub mod pool;
pub mod ssh;
pub mod tfgrid;
pub mod vm;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use zeroci::bootstrap::Bootstrap;
use zeroci::resources::Resources;

use crate::config::{Config, ProvisionerConfig};
use crate::jobs::{JobId, MachineRecord};

/// What the engine asks for.
#[derive(Debug, Clone)]
pub struct MachineRequest {
    pub job_id: JobId,
    pub attempt: u32,
    /// Unique name, also used as the machine's directory or VM name.
    pub name: String,
    /// What the agent needs to find and trust the controller.
    pub bootstrap: Bootstrap,
    /// Where the job clones from; a local path must be reachable from the machine.
    pub repo_url: String,
    /// The job runs code nobody trusted (a fork pull request): never on an unisolated machine.
    pub untrusted: bool,
    /// What the machine may use: the controller's `[limits]`, lowered by what the pipeline job asks
    /// once its plan is known.
    pub resources: Resources,
    /// The pipeline job's `prerequisites.image_name`, when its plan is known (machines that boot an
    /// image use it; a local machine is the host's system).
    pub image_name: Option<String>,
    /// The pipeline job's `prerequisites.labels`, when its plan is known: a pool host must offer all.
    pub labels: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot prepare machine {name}: {message}")]
    Prepare {
        name: String,
        message: String,
        /// Trying again may work (a busy host, a network error); false for a bad image or config.
        retryable: bool,
    },
    #[error("cannot start the agent on {name}: {message}")]
    Start {
        name: String,
        message: String,
        retryable: bool,
    },
    #[error("cannot destroy machine {name}: {message}")]
    Destroy { name: String, message: String },
    #[error("making machine {name} was cancelled")]
    Cancelled { name: String },
    /// The ledger could not record progress: going on would make a machine nobody knows about.
    #[error("cannot record machine {name}: {message}")]
    Record { name: String, message: String },
    /// Every machine the provisioner may have is in use (or the farm has no room): the job waits for
    /// one instead of failing.
    #[error("no {kind} machine free: {message}")]
    NoCapacity { kind: &'static str, message: String },
    /// The provisioner cannot work at all (missing binary, bad settings); found at start-up.
    #[error("{kind} machines are unavailable: {message}")]
    Unavailable { kind: &'static str, message: String },
}

impl ProvisionError {
    /// Whether asking for a machine again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProvisionError::Prepare { retryable, .. } | ProvisionError::Start { retryable, .. } => {
                *retryable
            }
            ProvisionError::Destroy { .. }
            | ProvisionError::Record { .. }
            | ProvisionError::NoCapacity { .. } => true,
            ProvisionError::Cancelled { .. } | ProvisionError::Unavailable { .. } => false,
        }
    }
}

/// Where `create` writes down what exists so far (directory, process, VM, contract): the engine keeps
/// it, durably, in the job's machine record, and `destroy` gets it back.
#[async_trait]
pub trait MachineLedger: Send + Sync {
    /// Replaces the recorded details of the machine being made. Returns once they are stored.
    async fn record(&self, details: serde_json::Value) -> Result<(), ProvisionError>;
}

#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// The `[provisioner] kind` this implements.
    fn kind(&self) -> &'static str;
    /// Whether `create` needs the pipeline job's prerequisites (a VM boots its image, a pool host must
    /// offer its labels): the engine then reads the first pipeline job's prerequisites before its
    /// machine exists.
    fn needs_prerequisites(&self) -> bool {
        false
    }
    /// Creates the machine and starts the agent; returns the details to record with the machine.
    /// Records progress in `ledger` before each costly step; stops with [`ProvisionError::Cancelled`]
    /// when `cancel` fires (the job was cancelled, or the controller is stopping).
    async fn create(
        &self,
        request: &MachineRequest,
        ledger: &dyn MachineLedger,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, ProvisionError>;
    /// Lowers the limits of a running machine to `resources` (its pipeline job's plan became known after
    /// it was made); returns what could not be applied, in words for the job's log. Called before the
    /// job's own commands run.
    async fn limit(
        &self,
        machine: &MachineRecord,
        resources: &Resources,
    ) -> Result<Vec<String>, ProvisionError>;
    /// Destroys the machine and everything on it; succeeds when it is already gone.
    async fn destroy(&self, machine: &MachineRecord) -> Result<(), ProvisionError>;
    /// The machine is another controller's now (it took the job over): this one neither destroys
    /// nor counts it any more.
    fn forget(&self, _machine: &MachineRecord) {}
}

/// What [`build`] makes: the provisioner, and for the `pool` kind the registry its hosts join through.
pub struct Machines {
    pub provisioner: Arc<dyn Provisioner>,
    pub pool_hosts: Option<Arc<pool::hosts::PoolHosts>>,
}

/// The provisioner `[provisioner] kind` names. One line per kind.
pub fn build(config: &Config) -> Result<Machines, ProvisionError> {
    let mut pool_hosts = None;
    let (kind, max_machines): (Arc<dyn Provisioner>, _) = match &config.provisioner {
        ProvisionerConfig::Local { local } => (
            Arc::new(local::LocalProvisioner::from_config(config, local)?),
            local.max_machines,
        ),
        ProvisionerConfig::Vm { vm } => (
            Arc::new(vm::VmProvisioner::from_config(config, vm)?),
            vm.max_machines,
        ),
        ProvisionerConfig::Ssh { ssh } => (
            Arc::new(ssh::SshProvisioner::from_config(ssh)?),
            ssh.max_machines,
        ),
        ProvisionerConfig::Pool { pool } => {
            let provisioner = pool::PoolProvisioner::from_config(pool);
            pool_hosts = Some(provisioner.hosts());
            (Arc::new(provisioner), pool.max_machines)
        }
        ProvisionerConfig::Tfgrid { tfgrid } => (
            Arc::new(tfgrid::TfgridProvisioner::from_config(tfgrid)?),
            tfgrid.max_machines,
        ),
    };
    Ok(Machines {
        provisioner: capacity::Limited::wrap(kind, max_machines),
        pool_hosts,
    })
}
