//! One CI VM as one deployment: a private `network` and a `zmachine` on it, in a single contract (zos
//! provisions networks before machines, so one deployment is enough; the reference notes that the SDKs
//! use two contracts out of habit). Names are made from the machine name, so two jobs never collide.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine as _;
use rand::RngCore as _;

use crate::deployment::{
    ComputeCapacity, Deployment, IpNet, MachineInterface, MachineNetwork, Network, Workload,
    WorkloadData, ZMachine, sanitize_workload_name,
};

/// What a CI VM is made of.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The CI's machine name (any characters; sanitized into workload names).
    pub name: String,
    pub flist: String,
    pub entrypoint: String,
    pub env: BTreeMap<String, String>,
    pub cpu: u8,
    pub memory_bytes: u64,
    pub rootfs_bytes: u64,
    /// Shown on chain as the contract's `deployment_data`, so leaked contracts can be found.
    pub project: String,
    /// The node's WireGuard port for the network; any port the node does not use yet.
    pub wireguard_port: u16,
}

/// The workload names a VM's deployment uses.
pub fn workload_names(machine: &str) -> (String, String) {
    let base = sanitize_workload_name(machine);
    // 36 characters at most: the suffixes must fit.
    let base: String = base.chars().take(30).collect();
    (format!("{base}_net"), format!("{base}_vm"))
}

/// A 32-byte WireGuard private key, clamped as Curve25519 keys are, in base64.
fn wireguard_key() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Metadata as the SDKs write it (`{"version":3,"type":"vm","name":…,"projectName":…}`), cut to the
/// chain's 512 bytes.
pub fn metadata(spec: &VmSpec) -> String {
    let text = serde_json::json!({
        "version": 3,
        "type": "vm",
        "name": spec.name,
        "projectName": spec.project,
    })
    .to_string();
    if text.len() <= crate::chain::MAX_DEPLOYMENT_DATA {
        text
    } else {
        serde_json::json!({"version": 3, "type": "vm", "projectName": spec.project.chars().take(200).collect::<String>()}).to_string()
    }
}

/// The unsigned deployment of `twin_id` for `spec`.
pub fn deployment(twin_id: u32, spec: &VmSpec) -> Deployment {
    let (net_name, vm_name) = workload_names(&spec.name);
    let network = Network {
        ip_range: IpNet::new(IpAddr::V4(Ipv4Addr::new(10, 20, 0, 0)), 16).ok(),
        subnet: IpNet::new(IpAddr::V4(Ipv4Addr::new(10, 20, 2, 0)), 24).ok(),
        wireguard_private_key: wireguard_key(),
        wireguard_listen_port: spec.wireguard_port,
        peers: Vec::new(),
        mycelium: None,
    };
    let machine = ZMachine {
        flist: spec.flist.clone(),
        network: MachineNetwork {
            public_ip: String::new(),
            planetary: false,
            mycelium: None,
            interfaces: vec![MachineInterface {
                network: net_name.clone(),
                ip: Some(IpAddr::V4(Ipv4Addr::new(10, 20, 2, 2))),
            }],
        },
        size: spec.rootfs_bytes,
        compute_capacity: ComputeCapacity {
            cpu: spec.cpu.max(1),
            memory: spec.memory_bytes,
        },
        mounts: Vec::new(),
        entrypoint: spec.entrypoint.clone(),
        env: spec.env.clone(),
        corex: false,
        gpu: Vec::new(),
    };
    let mut deployment = Deployment::new(
        twin_id,
        vec![
            Workload::new(net_name, WorkloadData::Network(network)),
            Workload::new(vm_name, WorkloadData::ZMachine(Box::new(machine))),
        ],
    );
    deployment.metadata = metadata(spec);
    deployment
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, KeyType};

    fn spec() -> VmSpec {
        VmSpec {
            name: "job-12-a1".into(),
            flist: "https://hub.grid.tf/tf-official-apps/base:latest.flist".into(),
            entrypoint: "/sbin/zinit init".into(),
            env: BTreeMap::from([("ZEROCI_JOB_ID".into(), "12".into())]),
            cpu: 2,
            memory_bytes: 2 << 30,
            rootfs_bytes: 10 << 30,
            project: "zeroci/job-12-a1".into(),
            wireguard_port: 4242,
        }
    }

    #[test]
    fn a_vm_is_a_network_and_a_machine_on_it_and_signs() {
        let mut d = deployment(7, &spec());
        assert_eq!(d.workloads.len(), 2);
        assert_eq!(d.workloads[0].name, "job_12_a1_net");
        assert_eq!(d.workloads[1].name, "job_12_a1_vm");
        let WorkloadData::ZMachine(vm) = &d.workloads[1].data else {
            panic!("{:?}", d.workloads[1].data)
        };
        assert_eq!(vm.network.interfaces[0].network, "job_12_a1_net");
        assert!(d.metadata.contains("zeroci/job-12-a1"));
        let hash = d.contract_hash_hex().unwrap();
        assert_eq!(hash.len(), 32);
        let id = Identity::from_seed(&[3u8; 32], KeyType::Sr25519).unwrap();
        d.sign(7, &id).unwrap();
        assert_eq!(d.signature_requirement.signatures.len(), 1);
        // Signing does not change what the contract is bound to.
        assert_eq!(d.contract_hash_hex().unwrap(), hash);
    }

    #[test]
    fn long_or_odd_machine_names_make_valid_workload_names() {
        let (net, vm) = workload_names(&"x-".repeat(40));
        crate::deployment::validate_workload_name(&net).unwrap();
        crate::deployment::validate_workload_name(&vm).unwrap();
        let mut long = spec();
        long.project = "p".repeat(600);
        assert!(metadata(&long).len() <= crate::chain::MAX_DEPLOYMENT_DATA);
    }
}
