//! How many machines a provisioner may have at once (`max_machines`). A job that finds them all in use
//! is not failed: [`ProvisionError::NoCapacity`] makes the engine keep it waiting, its status saying
//! for what, until a machine is free.
//!
//! Counted per controller process: machines of jobs resumed after a restart are counted again once
//! they are made anew (a resumed job's machine already exists and is not asked for).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use zeroci::resources::Resources;

use super::{MachineLedger, MachineRequest, ProvisionError, Provisioner};
use crate::jobs::MachineRecord;

pub struct Capacity {
    kind: &'static str,
    max: Option<usize>,
    held: Mutex<HashSet<String>>,
}

impl Capacity {
    /// `max`: `None` for no limit.
    pub fn new(kind: &'static str, max: Option<usize>) -> Capacity {
        Capacity {
            kind,
            max,
            held: Mutex::new(HashSet::new()),
        }
    }

    /// Takes a place for machine `name` (a name that holds one already keeps it: a retry);
    /// [`ProvisionError::NoCapacity`] when every place is taken.
    pub fn take(&self, name: &str) -> Result<(), ProvisionError> {
        let Some(max) = self.max else {
            return Ok(());
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains(name) || held.len() < max {
            held.insert(name.to_string());
            return Ok(());
        }
        Err(ProvisionError::NoCapacity {
            kind: self.kind,
            message: format!("all {max} machines are in use (max_machines)"),
        })
    }

    /// Gives machine `name`'s place back (it was destroyed, or never made).
    pub fn release(&self, name: &str) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

/// A provisioner with at most `max_machines` machines at once: what [`super::build`] wraps every
/// kind in when a limit is configured.
pub struct Limited {
    inner: Arc<dyn Provisioner>,
    capacity: Capacity,
}

impl Limited {
    pub fn wrap(inner: Arc<dyn Provisioner>, max_machines: Option<usize>) -> Arc<dyn Provisioner> {
        if max_machines.is_none() {
            return inner;
        }
        let capacity = Capacity::new(inner.kind(), max_machines);
        Arc::new(Limited { inner, capacity })
    }
}

#[async_trait]
impl Provisioner for Limited {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn needs_prerequisites(&self) -> bool {
        self.inner.needs_prerequisites()
    }

    async fn create(
        &self,
        request: &MachineRequest,
        ledger: &dyn MachineLedger,
        cancel: &CancellationToken,
    ) -> Result<serde_json::Value, ProvisionError> {
        // Held until `destroy`, which the engine calls on every way out, also after a failed create.
        self.capacity.take(&request.name)?;
        self.inner.create(request, ledger, cancel).await
    }

    async fn limit(
        &self,
        machine: &MachineRecord,
        resources: &Resources,
    ) -> Result<Vec<String>, ProvisionError> {
        self.inner.limit(machine, resources).await
    }

    /// The place is given back also when destroying failed (a host gone, say): the machine is
    /// retried at every start until it is destroyed, and a place held for a machine that may never
    /// answer again would stop every later job.
    async fn destroy(&self, machine: &MachineRecord) -> Result<(), ProvisionError> {
        let destroyed = self.inner.destroy(machine).await;
        self.capacity.release(&machine.name);
        destroyed
    }

    fn forget(&self, machine: &MachineRecord) {
        self.inner.forget(machine);
        self.capacity.release(&machine.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_kept_on_retry_and_given_back() {
        let capacity = Capacity::new("local", Some(2));
        capacity.take("a").unwrap();
        capacity.take("b").unwrap();
        capacity.take("a").unwrap();
        let full = capacity.take("c").unwrap_err();
        assert!(matches!(full, ProvisionError::NoCapacity { .. }));
        assert_eq!(
            full.to_string(),
            "no local machine free: all 2 machines are in use (max_machines)"
        );
        capacity.release("a");
        capacity.take("c").unwrap();
        let unlimited = Capacity::new("local", None);
        for n in 0..100 {
            unlimited.take(&n.to_string()).unwrap();
        }
    }
}
