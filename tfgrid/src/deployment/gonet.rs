//! Value types whose JSON form and challenge text must match what zos (Go) produces.
//!
//! zos parses the deployment JSON into Go types and then builds the challenge from those parsed
//! values, not from the JSON text. So an address the user wrote as `FD00::0002` is hashed as
//! `fd00::2`, an unset network as `<nil>`, and bytes as lowercase hex. These helpers reproduce
//! Go's `net.IP.String()`, `net.IPNet.String()` and `fmt`'s `%x` so our hash equals the node's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What Go prints for a nil `net.IP` or an unset `gridtypes.IPNet`.
pub const GO_NIL: &str = "<nil>";

/// An address plus prefix length as zos keeps it: the host bits are *not* cleared
/// (`gridtypes.ParseIPNet` puts the parsed address back into the network), so
/// `10.20.2.5/24` stays `10.20.2.5/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR address: {0}")]
pub struct InvalidCidr(pub String);

impl IpNet {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, InvalidCidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(InvalidCidr(format!("{addr}/{prefix_len}")));
        }
        Ok(Self { addr, prefix_len })
    }
}

impl FromStr for IpNet {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidCidr(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        // Go's ParseCIDR accepts only decimal digits for the length (no sign, no spaces).
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        IpNet::new(addr, prefix_len).map_err(|_| bad())
    }
}

/// Go's `net.IPNet.String()`: an IPv4-mapped IPv6 address prints as IPv4 and its mask is cut
/// to the last 32 bits.
impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => write!(f, "{v4}/{}", self.prefix_len.saturating_sub(96)),
                None => write!(f, "{}/{}", go_ipv6(&v6), self.prefix_len),
            },
            IpAddr::V4(v4) => write!(f, "{v4}/{}", self.prefix_len),
        }
    }
}

/// Go's `net.IP.String()` for a set address.
pub fn go_ip_string(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => go_ipv6(v6),
        },
    }
}

/// Go's `net.IP.String()` for an optional address (`<nil>` when unset).
pub fn go_opt_ip_string(ip: Option<&IpAddr>) -> String {
    ip.map_or_else(|| GO_NIL.to_string(), go_ip_string)
}

/// Go's `gridtypes.IPNet.String()` for an optional network (`<nil>` when unset).
pub fn go_opt_ipnet_string(net: Option<&IpNet>) -> String {
    net.map_or_else(|| GO_NIL.to_string(), IpNet::to_string)
}

/// RFC 5952 text, as Go prints it. Rust's `Ipv6Addr` Display already follows RFC 5952 for
/// everything except IPv4-mapped addresses, which callers have handled before.
fn go_ipv6(v6: &Ipv6Addr) -> String {
    v6.to_string()
}

/// Parses an address the way Go's `net.ParseIP` does for the inputs zos sees.
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .or_else(|_| s.parse::<Ipv6Addr>().map(IpAddr::V6))
        .map_err(|_| format!("invalid IP address: {s}"))
}

/// `#[serde(with = "go_ip")]` for an `Option<IpAddr>` field: `""` ⇔ `None`, like Go's `net.IP`.
pub mod go_ip {
    use super::*;

    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.serialize_str(&go_ip_string(ip)),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => parse_ip(text).map(Some).map_err(D::Error::custom),
        }
    }
}

/// `#[serde(with = "go_ipnet")]` for an `Option<IpNet>` field: `""` ⇔ `None`, like
/// `gridtypes.IPNet`.
pub mod go_ipnet {
    use super::*;

    pub fn serialize<S: Serializer>(net: &Option<IpNet>, s: S) -> Result<S::Ok, S::Error> {
        match net {
            Some(net) => s.serialize_str(&net.to_string()),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(D::Error::custom),
        }
    }
}

/// `#[serde(with = "go_ipnet_list")]` for a `Vec<IpNet>` (a Go `[]gridtypes.IPNet`, where
/// `null` means empty).
pub mod go_ipnet_list {
    use super::*;

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(IpNet::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Option::<Vec<String>>::deserialize(d)?
            .unwrap_or_default()
            .iter()
            .map(|text| text.parse().map_err(D::Error::custom))
            .collect()
    }
}

/// zos's `zos.Bytes`: raw bytes carried in JSON as a hex string, hashed with Go's `%x`
/// (lowercase hex, nothing for empty).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct HexBytes(pub Vec<u8>);

impl HexBytes {
    /// The challenge form: Go's `fmt.Sprintf("%x", b)`.
    pub fn go_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl From<Vec<u8>> for HexBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<&[u8]> for HexBytes {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HexBytes({})", self.go_hex())
    }
}

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.go_hex())
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Go's hex.DecodeString accepts either case; `null` leaves a nil slice.
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        hex::decode(&text).map(HexBytes).map_err(D::Error::custom)
    }
}

/// `#[serde(deserialize_with = "null_as_default")]`: Go marshals nil slices and maps as `null`.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipnet_keeps_host_bits_like_zos() {
        let net: IpNet = "10.20.2.5/24".parse().unwrap();
        assert_eq!(net.to_string(), "10.20.2.5/24");
    }

    #[test]
    fn ipnet_refuses_bad_input() {
        for bad in [
            "10.1.0.0",
            "10.1.0.0/33",
            "10.1.0.0/+8",
            "10.1.0.0/",
            "x/8",
            "::/129",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_is_printed_canonically_as_go_does() {
        let net: IpNet = "FD00:0:0:0::0002/64".parse().unwrap();
        assert_eq!(net.to_string(), "fd00::2/64");
        // One zero group is not compressed (RFC 5952 §4.2.2), the first longest run is.
        let ip: IpAddr = "2001:db8:0:1:1:1:1:1".parse().unwrap();
        assert_eq!(go_ip_string(&ip), "2001:db8:0:1:1:1:1:1");
        let ip: IpAddr = "2001:0:0:1:0:0:1:1".parse().unwrap();
        assert_eq!(go_ip_string(&ip), "2001::1:0:0:1:1");
        // Go prints IPv4-compatible (deprecated) addresses in plain hex.
        let ip: IpAddr = "::1.2.3.4".parse().unwrap();
        assert_eq!(go_ip_string(&ip), "::102:304");
    }

    #[test]
    fn ipv4_mapped_prints_as_ipv4() {
        let ip: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(go_ip_string(&ip), "10.0.0.1");
        let net: IpNet = "::ffff:10.0.0.1/120".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.1/24");
    }

    #[test]
    fn unset_values_print_nil() {
        assert_eq!(go_opt_ip_string(None), "<nil>");
        assert_eq!(go_opt_ipnet_string(None), "<nil>");
    }

    #[test]
    fn hex_bytes_round_trip_and_lowercase() {
        let b: HexBytes = serde_json::from_str("\"ABcd01\"").unwrap();
        assert_eq!(b.0, vec![0xab, 0xcd, 0x01]);
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"abcd01\"");
        let empty: HexBytes = serde_json::from_str("null").unwrap();
        assert_eq!(empty.go_hex(), "");
    }
}
