//! `[limits]`: ceilings no job can raise (output, durations, a machine's CPUs, memory and processes).

use serde::{Deserialize, Serialize};
use zeroci::resources::Resources;

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Output bytes stored per job (default 4 GiB). Past it the stored log ends with a line saying so
    /// and further output is dropped.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
    /// What a job whose output reaches `max_log_bytes` does: `continue` (default; its further output
    /// is dropped) or `cancel`.
    #[serde(default)]
    pub on_log_limit: LogLimitAction,
    /// Seconds; no zeroCI.yaml `timeout` nor `zeroci run --timeout` sets a step's timeout past this
    /// (default 6 h; 0: no ceiling).
    #[serde(default = "default_max_step_timeout")]
    pub max_step_timeout: u64,
    /// Seconds a job may run from its start before it is cancelled (default 12 h; 0: no limit).
    #[serde(default = "default_max_job_duration")]
    pub max_job_duration: u64,
    /// CPUs' worth of time each machine gets (default: no limit). A job's `prerequisites.cpus` may
    /// ask for less.
    pub cpus: Option<f64>,
    /// MiB of memory each machine gets (default: no limit); `prerequisites.memory_mb` may ask for less.
    pub memory_mb: Option<u64>,
    /// Processes and threads each machine may run, the agent's included (default 8192: a fork bomb
    /// stops there); `prerequisites.pids` may ask for less. 0: no limit.
    #[serde(default = "default_pids")]
    pub pids: u64,
    /// GiB of disk each machine gets where its kind can bound it (a VM's disk; default: the kind's
    /// own, `[provisioner.vm] disk_gb`).
    pub disk_gb: Option<u64>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_log_bytes: default_max_log_bytes(),
            on_log_limit: LogLimitAction::default(),
            max_step_timeout: default_max_step_timeout(),
            max_job_duration: default_max_job_duration(),
            cpus: None,
            memory_mb: None,
            pids: default_pids(),
            disk_gb: None,
        }
    }
}

impl LimitsConfig {
    /// What each machine gets unless its job asks for less.
    pub fn machine(&self) -> Resources {
        Resources {
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            pids: (self.pids > 0).then_some(self.pids),
            disk_gb: self.disk_gb,
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if let Some(cpus) = self.cpus
            && !(cpus > 0.0 && cpus.is_finite())
        {
            return Err(format!(
                "[limits] cpus must be a positive number, got {cpus}"
            ));
        }
        if self.memory_mb.is_some_and(|m| m < MIN_MEMORY_MB) {
            return Err(format!(
                "[limits] memory_mb must be at least {MIN_MEMORY_MB}: the agent needs some too"
            ));
        }
        let min_pids = zeroci::resources::MIN_PIDS;
        if self.pids > 0 && self.pids < min_pids {
            return Err(format!(
                "[limits] pids must be 0 (no limit) or at least {min_pids}: the agent's threads count too"
            ));
        }
        Ok(())
    }
}

/// The least memory a machine can run the agent and a shell in.
const MIN_MEMORY_MB: u64 = 64;

fn default_pids() -> u64 {
    8192
}

/// `[limits] on_log_limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLimitAction {
    #[default]
    Continue,
    Cancel,
}

fn default_max_step_timeout() -> u64 {
    6 * 3600
}

fn default_max_job_duration() -> u64 {
    12 * 3600
}

fn default_max_log_bytes() -> u64 {
    4 << 30
}
