//! What one machine may use: CPUs, memory and processes. The controller's `[limits]` give each machine
//! its share; a pipeline job's `prerequisites` may ask for less (to test under pressure, or to be a good
//! neighbour), never for more. Provisioners enforce what they can (cgroup v2 and process limits for
//! sandboxes, the VM's size for VMs) and say what they cannot.

use serde::{Deserialize, Serialize};

/// The fewest processes a machine can run a job in: the agent, its threads, a shell and a command.
pub const MIN_PIDS: u64 = 32;

/// Limits of one machine; `None`: no limit from this source.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// CPU time, in CPUs (1.5: one and a half CPUs' worth of time per period).
    pub cpus: Option<f64>,
    /// Memory in MiB, page cache of the machine's files included.
    pub memory_mb: Option<u64>,
    /// Processes and threads, the agent's own included.
    pub pids: Option<u64>,
    /// Disk in GiB, where the machine kind can bound it (a VM's disk).
    pub disk_gb: Option<u64>,
}

impl Resources {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Resources::default()
    }

    /// These limits with every value `other` sets replacing this one's (a repository's own limits
    /// over the controller's).
    pub fn overridden_by(&self, other: &Resources) -> Resources {
        Resources {
            cpus: other.cpus.or(self.cpus),
            memory_mb: other.memory_mb.or(self.memory_mb),
            pids: other.pids.or(self.pids),
            disk_gb: other.disk_gb.or(self.disk_gb),
        }
    }

    /// What a job asking for `asked` gets under this ceiling: each value the job asks for when it is
    /// within the ceiling, the ceiling otherwise; and a line for each value the ceiling cut down.
    pub fn grant(&self, asked: &Resources) -> (Resources, Vec<String>) {
        let mut notes = Vec::new();
        let mut pick = |name: &str, unit: &str, ceiling: Option<f64>, asked: Option<f64>| match (
            ceiling, asked,
        ) {
            (Some(ceiling), Some(asked)) if asked > ceiling => {
                notes.push(format!(
                    "prerequisites.{name} {asked}{unit} is more than this controller allows; using {ceiling}{unit}"
                ));
                Some(ceiling)
            }
            (_, Some(asked)) => Some(asked),
            (ceiling, None) => ceiling,
        };
        let cpus = pick("cpus", "", self.cpus, asked.cpus);
        let memory = pick(
            "memory_mb",
            " MiB",
            self.memory_mb.map(|m| m as f64),
            asked.memory_mb.map(|m| m as f64),
        );
        let pids = pick(
            "pids",
            "",
            self.pids.map(|p| p as f64),
            asked.pids.map(|p| p as f64),
        );
        let disk = pick(
            "disk_gb",
            " GiB",
            self.disk_gb.map(|d| d as f64),
            asked.disk_gb.map(|d| d as f64),
        );
        let granted = Resources {
            cpus,
            memory_mb: memory.map(|m| m as u64),
            pids: pids.map(|p| p as u64),
            disk_gb: disk.map(|d| d as u64),
        };
        (granted, notes)
    }
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(cpus) = self.cpus {
            parts.push(format!("{cpus} CPUs"));
        }
        if let Some(memory) = self.memory_mb {
            parts.push(format!("{memory} MiB of memory"));
        }
        if let Some(pids) = self.pids {
            parts.push(format!("{pids} processes"));
        }
        if let Some(disk) = self.disk_gb {
            parts.push(format!("{disk} GiB of disk"));
        }
        if parts.is_empty() {
            f.write_str("no limits")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_gets_what_it_asks_within_the_ceiling_and_the_ceiling_otherwise() {
        let ceiling = Resources {
            cpus: Some(2.0),
            memory_mb: Some(4096),
            pids: None,
            disk_gb: Some(8),
        };
        let asked = Resources {
            cpus: Some(0.5),
            memory_mb: Some(8192),
            pids: Some(64),
            disk_gb: None,
        };
        let (granted, notes) = ceiling.grant(&asked);
        assert_eq!(
            granted,
            Resources {
                cpus: Some(0.5),
                memory_mb: Some(4096),
                pids: Some(64),
                disk_gb: Some(8),
            }
        );
        assert_eq!(
            notes,
            [
                "prerequisites.memory_mb 8192 MiB is more than this controller allows; using 4096 MiB"
            ]
        );
        assert_eq!(ceiling.grant(&Resources::default()), (ceiling, vec![]));
        let repo = Resources {
            cpus: Some(8.0),
            ..Resources::default()
        };
        assert_eq!(
            ceiling.overridden_by(&repo),
            Resources {
                cpus: Some(8.0),
                ..ceiling
            }
        );
    }

    #[test]
    fn display_lists_the_limits() {
        let r = Resources {
            cpus: Some(1.5),
            memory_mb: None,
            pids: Some(100),
            disk_gb: None,
        };
        assert_eq!(r.to_string(), "1.5 CPUs, 100 processes");
        assert_eq!(Resources::default().to_string(), "no limits");
    }
}
