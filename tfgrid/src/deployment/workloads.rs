//! Typed `data` of the zos workload types a CI VM needs, with JSON field names and challenge
//! text as in zosbase `pkg/gridtypes/zos` (network.go, network_light.go, zmachine.go,
//! zmachine_light.go, zmachine_utils.go, ipv4.go, zmount.go, volume.go).
//!
//! Each `challenge` appends exactly what the Go `Challenge(io.Writer)` method writes, in the same
//! order; comments name the Go quirks that matter.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::gonet::{
    HexBytes, IpNet, go_ip, go_ipnet, go_ipnet_list, go_opt_ip_string, go_opt_ipnet_string,
    null_as_default,
};

/// Workload type names (`gridtypes.WorkloadType`).
pub mod kind {
    pub const NETWORK: &str = "network";
    pub const NETWORK_LIGHT: &str = "network-light";
    pub const ZMACHINE: &str = "zmachine";
    pub const ZMACHINE_LIGHT: &str = "zmachine-light";
    pub const ZMOUNT: &str = "zmount";
    pub const VOLUME: &str = "volume";
    /// The current public IP type, with `v4`/`v6` flags.
    pub const IP: &str = "ip";
    /// Deprecated public IPv4 type, still accepted by zos.
    pub const IPV4: &str = "ipv4";
}

// `fmt::Write` into a `String` cannot fail; these wrappers keep that fact in one place.
fn put(out: &mut String, text: &str) {
    out.push_str(text);
}
fn put_num(out: &mut String, n: impl std::fmt::Display) {
    let _ = write!(out, "{n}");
}
fn put_bool(out: &mut String, b: bool) {
    // Go `%t`.
    out.push_str(if b { "true" } else { "false" });
}

/// A WireGuard peer of a network workload (`zos.Peer`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(with = "go_ipnet", default)]
    pub subnet: Option<IpNet>,
    #[serde(default)]
    pub wireguard_public_key: String,
    #[serde(with = "go_ipnet_list", default)]
    pub allowed_ips: Vec<IpNet>,
    #[serde(default)]
    pub endpoint: String,
}

impl Peer {
    fn challenge(&self, out: &mut String) {
        // Order differs from the JSON order: key, endpoint, subnet, allowed ips.
        put(out, &self.wireguard_public_key);
        put(out, &self.endpoint);
        put(out, &go_opt_ipnet_string(self.subnet.as_ref()));
        for ip in &self.allowed_ips {
            put(out, &ip.to_string());
        }
    }
}

/// Mycelium settings of a network (`zos.Mycelium`). zos refuses user-defined `peers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkMycelium {
    /// 32-byte key of the network's mycelium node.
    #[serde(default)]
    pub hex_key: HexBytes,
    #[serde(default, deserialize_with = "null_as_default")]
    pub peers: Vec<String>,
}

impl NetworkMycelium {
    fn challenge(&self, out: &mut String) {
        put(out, &self.hex_key.go_hex());
        for peer in &self.peers {
            put(out, peer);
        }
    }
}

/// `network` workload data (`zos.Network`): one node's part of a private WireGuard network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// The whole network, an IPv4 /16.
    #[serde(rename = "ip_range", with = "go_ipnet", default)]
    pub ip_range: Option<IpNet>,
    /// This node's /24 inside `ip_range`.
    #[serde(with = "go_ipnet", default)]
    pub subnet: Option<IpNet>,
    /// Base64 of a 32-byte clamped key.
    #[serde(default)]
    pub wireguard_private_key: String,
    #[serde(default)]
    pub wireguard_listen_port: u16,
    #[serde(default, deserialize_with = "null_as_default")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mycelium: Option<NetworkMycelium>,
}

impl Network {
    pub fn challenge(&self, out: &mut String) {
        put(out, &go_opt_ipnet_string(self.ip_range.as_ref()));
        put(out, &go_opt_ipnet_string(self.subnet.as_ref()));
        put(out, &self.wireguard_private_key);
        put_num(out, self.wireguard_listen_port);
        for peer in &self.peers {
            peer.challenge(out);
        }
        if let Some(mycelium) = &self.mycelium {
            mycelium.challenge(out);
        }
    }
}

/// `network-light` workload data (`zos.NetworkLight`, mycelium-only nodes).
///
/// The JSON has the WireGuard fields (usually left empty) and an always-present `mycelium`; the
/// challenge still walks them, so an empty `ip_range` hashes as `<nil>` and the port as `0`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkLight {
    #[serde(with = "go_ipnet", default)]
    pub subnet: Option<IpNet>,
    #[serde(default)]
    pub mycelium: NetworkMycelium,
    #[serde(with = "go_ipnet", default)]
    pub ip_range: Option<IpNet>,
    #[serde(default)]
    pub wireguard_private_key: String,
    #[serde(default)]
    pub wireguard_listen_port: u16,
    #[serde(default, deserialize_with = "null_as_default")]
    pub peers: Vec<Peer>,
}

impl NetworkLight {
    pub fn challenge(&self, out: &mut String) {
        put(out, &go_opt_ipnet_string(self.ip_range.as_ref()));
        put(out, &go_opt_ipnet_string(self.subnet.as_ref()));
        put(out, &self.wireguard_private_key);
        put_num(out, self.wireguard_listen_port);
        for peer in &self.peers {
            peer.challenge(out);
        }
        // Not optional here: always part of the challenge.
        self.mycelium.challenge(out);
    }
}

/// A zmachine's membership of a private network (`zos.MachineInterface`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineInterface {
    /// Name of a `network` workload of the same twin.
    #[serde(default)]
    pub network: String,
    /// Address inside the node's subnet (SDKs start at host .2).
    #[serde(with = "go_ip", default)]
    pub ip: Option<IpAddr>,
}

/// A zmachine's mycelium address (`zos.MyceliumIP`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineMycelium {
    /// The Go field has no json tag, so zos emits `Network`; Go matches keys case-insensitively
    /// and the TS SDK sends `network`, so both are accepted.
    #[serde(rename = "Network", alias = "network", default)]
    pub network: String,
    /// 6 random bytes; the VM's mycelium address derives from the network key and this seed.
    #[serde(default)]
    pub hex_seed: HexBytes,
}

impl MachineMycelium {
    fn challenge(&self, out: &mut String) {
        put(out, &self.network);
        put(out, &self.hex_seed.go_hex());
    }
}

/// Length zos requires for [`MachineMycelium::hex_seed`].
pub const MYCELIUM_IP_SEED_LEN: usize = 6;
/// Length zos requires for [`NetworkMycelium::hex_key`].
pub const MYCELIUM_KEY_LEN: usize = 32;

fn challenge_interfaces(interfaces: &[MachineInterface], out: &mut String) {
    for interface in interfaces {
        put(out, &interface.network);
        put(out, &go_opt_ip_string(interface.ip.as_ref()));
    }
}

/// `network` of a zmachine (`zos.MachineNetwork`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineNetwork {
    /// Name of an `ip` workload in the same deployment, or empty.
    #[serde(default)]
    pub public_ip: String,
    /// Yggdrasil (legacy).
    #[serde(default)]
    pub planetary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mycelium: Option<MachineMycelium>,
    /// zos accepts exactly one.
    #[serde(default, deserialize_with = "null_as_default")]
    pub interfaces: Vec<MachineInterface>,
}

impl MachineNetwork {
    fn challenge(&self, out: &mut String) {
        put(out, &self.public_ip);
        put_bool(out, self.planetary);
        challenge_interfaces(&self.interfaces, out);
        if let Some(mycelium) = &self.mycelium {
            mycelium.challenge(out);
        }
    }
}

/// `network` of a zmachine-light: no public IP, no yggdrasil.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineNetworkLight {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mycelium: Option<MachineMycelium>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub interfaces: Vec<MachineInterface>,
}

impl MachineNetworkLight {
    fn challenge(&self, out: &mut String) {
        challenge_interfaces(&self.interfaces, out);
        if let Some(mycelium) = &self.mycelium {
            mycelium.challenge(out);
        }
    }
}

/// CPU and memory of a zmachine (`zos.MachineCapacity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeCapacity {
    pub cpu: u8,
    /// Bytes; zos requires at least 250 MiB.
    pub memory: u64,
}

/// A disk or volume attached to a zmachine (`zos.MachineMount`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineMount {
    /// Name of a `zmount` or `volume` workload in the same deployment.
    pub name: String,
    #[serde(default)]
    pub mountpoint: String,
}

/// The fields `zmachine` and `zmachine-light` share after their `network`.
fn challenge_machine_tail(
    size: u64,
    capacity: &ComputeCapacity,
    mounts: &[MachineMount],
    entrypoint: &str,
    env: &BTreeMap<String, String>,
    gpu: &[String],
    out: &mut String,
) {
    put_num(out, size);
    put_num(out, capacity.cpu);
    put_num(out, capacity.memory);
    for mount in mounts {
        put(out, &mount.name);
        put(out, &mount.mountpoint);
    }
    put(out, entrypoint);
    // Go sorts the keys with sort.Strings (byte order), which is BTreeMap<String, _>'s order.
    for (key, value) in env {
        put(out, key);
        put(out, "=");
        put(out, value);
    }
    for id in gpu {
        put(out, id);
    }
    // `corex` is deliberately not part of the Go challenge.
}

/// `zmachine` workload data (`zos.ZMachine`): a VM or micro-VM booted from an flist.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZMachine {
    pub flist: String,
    #[serde(default)]
    pub network: MachineNetwork,
    /// Root filesystem bytes; 0 means zos's minimum.
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub compute_capacity: ComputeCapacity,
    #[serde(default, deserialize_with = "null_as_default")]
    pub mounts: Vec<MachineMount>,
    /// Container mode only.
    #[serde(default)]
    pub entrypoint: String,
    /// Exported to PID 1 (container mode); readable by the farmer.
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub corex: bool,
    /// GPU ids `<slot>/<vendor>/<device>` (rented nodes only).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub gpu: Vec<String>,
}

impl ZMachine {
    pub fn challenge(&self, out: &mut String) {
        put(out, &self.flist);
        self.network.challenge(out);
        challenge_machine_tail(
            self.size,
            &self.compute_capacity,
            &self.mounts,
            &self.entrypoint,
            &self.env,
            &self.gpu,
            out,
        );
    }
}

/// `zmachine-light` workload data (`zos.ZMachineLight`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZMachineLight {
    pub flist: String,
    #[serde(default)]
    pub network: MachineNetworkLight,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub compute_capacity: ComputeCapacity,
    #[serde(default, deserialize_with = "null_as_default")]
    pub mounts: Vec<MachineMount>,
    #[serde(default)]
    pub entrypoint: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub corex: bool,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub gpu: Vec<String>,
}

impl ZMachineLight {
    pub fn challenge(&self, out: &mut String) {
        put(out, &self.flist);
        self.network.challenge(out);
        challenge_machine_tail(
            self.size,
            &self.compute_capacity,
            &self.mounts,
            &self.entrypoint,
            &self.env,
            &self.gpu,
            out,
        );
    }
}

/// `ip` workload data (`zos.PublicIP`). Each `v4` costs a farm IP reserved by the contract.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIp {
    #[serde(default)]
    pub v4: bool,
    #[serde(default)]
    pub v6: bool,
}

impl PublicIp {
    pub fn challenge(&self, out: &mut String) {
        put_bool(out, self.v4);
        put_bool(out, self.v6);
    }
}

/// `zmount` (block disk) and `volume` (virtiofs) workload data: only a size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSize {
    pub size: u64,
}

impl DiskSize {
    pub fn challenge(&self, out: &mut String) {
        put_num(out, self.size);
    }
}

/// Result data of a `zmachine` (`zos.ZMachineResult`). Older nodes call the planetary address
/// `ygg_ip`; it is read into `planetary_ip`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ZMachineResultWire")]
pub struct ZMachineResult {
    pub id: String,
    /// Address on the private network.
    pub ip: String,
    pub planetary_ip: String,
    pub mycelium_ip: String,
    /// `ip:port`, reachable only through the private network.
    pub console_url: String,
}

#[derive(Deserialize)]
struct ZMachineResultWire {
    #[serde(default)]
    id: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    ygg_ip: String,
    #[serde(default)]
    planetary_ip: String,
    #[serde(default)]
    mycelium_ip: String,
    #[serde(default)]
    console_url: String,
}

impl From<ZMachineResultWire> for ZMachineResult {
    fn from(w: ZMachineResultWire) -> Self {
        Self {
            id: w.id,
            ip: w.ip,
            planetary_ip: if w.ygg_ip.is_empty() {
                w.planetary_ip
            } else {
                w.ygg_ip
            },
            mycelium_ip: w.mycelium_ip,
            console_url: w.console_url,
        }
    }
}

/// Result data of a `zmachine-light` (`zos.ZMachineLightResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZMachineLightResult {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub mycelium_ip: String,
    #[serde(default)]
    pub console_url: String,
}

/// Result data of an `ip` workload (`zos.PublicIPResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIpResult {
    /// `a.b.c.d/nn` when v4 was asked for.
    #[serde(with = "go_ipnet", default)]
    pub ip: Option<IpNet>,
    #[serde(with = "go_ipnet", default)]
    pub ip6: Option<IpNet>,
    #[serde(with = "go_ip", default)]
    pub gateway: Option<IpAddr>,
}

/// Result data of a `zmount` (`zos.ZMountResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZMountResult {
    #[serde(default)]
    pub volume_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zmachine() -> ZMachine {
        ZMachine {
            flist: "https://hub.grid.tf/f.flist".into(),
            network: MachineNetwork {
                public_ip: "pub".into(),
                planetary: true,
                mycelium: Some(MachineMycelium {
                    network: "net".into(),
                    hex_seed: HexBytes(vec![0xAB, 1, 2, 3, 4, 0xff]),
                }),
                interfaces: vec![MachineInterface {
                    network: "net".into(),
                    ip: Some("10.20.2.2".parse().unwrap()),
                }],
            },
            size: 0,
            compute_capacity: ComputeCapacity {
                cpu: 2,
                memory: 2048,
            },
            mounts: vec![MachineMount {
                name: "disk".into(),
                mountpoint: "/data".into(),
            }],
            entrypoint: "/sbin/zinit init".into(),
            env: [("b", "2"), ("A", "1"), ("a", "3")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            corex: true,
            gpu: vec![],
        }
    }

    #[test]
    fn zmachine_challenge_sorts_env_by_bytes_and_skips_corex() {
        let mut out = String::new();
        zmachine().challenge(&mut out);
        assert_eq!(
            out,
            "https://hub.grid.tf/f.flistpubtruenet10.20.2.2netab01020304ff022048disk/data\
             /sbin/zinit initA=1a=3b=2"
        );
    }

    #[test]
    fn zmachine_json_uses_go_field_names() {
        let json = serde_json::to_value(zmachine()).unwrap();
        assert_eq!(json["network"]["mycelium"]["Network"], "net");
        assert_eq!(json["network"]["mycelium"]["hex_seed"], "ab01020304ff");
        assert_eq!(json["compute_capacity"]["memory"], 2048);
        assert!(json.get("gpu").is_none(), "gpu is omitempty in Go");
        let back: ZMachine = serde_json::from_value(json).unwrap();
        assert_eq!(back, zmachine());
    }

    #[test]
    fn zmachine_accepts_go_nulls_and_lowercase_mycelium_network() {
        let json = r#"{"flist":"f","network":{"public_ip":"","planetary":false,
            "mycelium":{"network":"n","hex_seed":"010203040506"},"interfaces":null},
            "size":0,"compute_capacity":{"cpu":1,"memory":1},"mounts":null,"entrypoint":"",
            "env":null,"corex":false}"#;
        let m: ZMachine = serde_json::from_str(json).unwrap();
        assert_eq!(m.network.mycelium.unwrap().network, "n");
        assert!(m.env.is_empty() && m.mounts.is_empty());
    }

    #[test]
    fn network_challenge_with_peer_and_mycelium() {
        let net = Network {
            ip_range: Some("10.20.0.0/16".parse().unwrap()),
            subnet: Some("10.20.2.0/24".parse().unwrap()),
            wireguard_private_key: "KEY=".into(),
            wireguard_listen_port: 3011,
            peers: vec![Peer {
                subnet: Some("10.20.3.0/24".parse().unwrap()),
                wireguard_public_key: "PUB=".into(),
                allowed_ips: vec![
                    "10.20.3.0/24".parse().unwrap(),
                    "100.64.20.3/32".parse().unwrap(),
                ],
                endpoint: "1.2.3.4:3011".into(),
            }],
            mycelium: Some(NetworkMycelium {
                hex_key: HexBytes(vec![0xAA; 2]),
                peers: vec![],
            }),
        };
        let mut out = String::new();
        net.challenge(&mut out);
        assert_eq!(
            out,
            "10.20.0.0/1610.20.2.0/24KEY=3011PUB=1.2.3.4:301110.20.3.0/2410.20.3.0/24\
             100.64.20.3/32aaaa"
        );
    }

    #[test]
    fn network_light_hashes_unset_fields_like_go() {
        let net = NetworkLight {
            subnet: Some("10.20.2.0/24".parse().unwrap()),
            mycelium: NetworkMycelium {
                hex_key: HexBytes(vec![1, 2]),
                peers: vec![],
            },
            ..Default::default()
        };
        let mut out = String::new();
        net.challenge(&mut out);
        // Unset range → `<nil>`, key empty, port 0, then the key.
        assert_eq!(out, "<nil>10.20.2.0/2400102");
        let json = serde_json::to_value(&net).unwrap();
        assert_eq!(json["ip_range"], "");
        assert_eq!(json["mycelium"]["hex_key"], "0102");
    }

    #[test]
    fn zmachine_result_reads_legacy_ygg_ip() {
        let r: ZMachineResult =
            serde_json::from_str(r#"{"id":"x","ip":"10.20.2.2","ygg_ip":"300::1"}"#).unwrap();
        assert_eq!(r.planetary_ip, "300::1");
    }

    #[test]
    fn public_ip_result_parses() {
        let r: PublicIpResult = serde_json::from_str(
            r#"{"ip":"185.206.122.31/24","ip6":"","gateway":"185.206.122.1"}"#,
        )
        .unwrap();
        assert_eq!(r.ip.unwrap().to_string(), "185.206.122.31/24");
        assert!(r.ip6.is_none());
    }
}
