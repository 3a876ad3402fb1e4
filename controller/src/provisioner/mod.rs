//! The provisioner seam: make a machine for one job attempt, put the agent on it and start it with a
//! one-time bootstrap token; destroy it afterwards. `local` (child process in a private directory) is the
//! default; ThreeFold Grid VMs, SSH hosts and pool agents are further implementations.
//!
//! The engine records the machine in the job before calling `create` and calls `destroy` on every path
//! out of a job (success, failure, error, cancel, lost agent) and for leftovers after a crash, so
//! `destroy` must accept a machine that is half made or already gone.

pub mod local;

use async_trait::async_trait;
use zeroci::bootstrap::Bootstrap;

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
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot prepare machine {name}: {message}")]
    Prepare { name: String, message: String },
    #[error("cannot start the agent on {name}: {message}")]
    Start { name: String, message: String },
    #[error("cannot destroy machine {name}: {message}")]
    Destroy { name: String, message: String },
}

#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// The `[provisioner] kind` this implements.
    fn kind(&self) -> &'static str;
    /// Creates the machine and starts the agent; returns details to record with the machine.
    async fn create(&self, request: &MachineRequest) -> Result<serde_json::Value, ProvisionError>;
    /// Destroys the machine and everything on it; succeeds when it is already gone.
    async fn destroy(&self, machine: &MachineRecord) -> Result<(), ProvisionError>;
}
