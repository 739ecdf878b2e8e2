//! An IP network in CIDR notation, as the operator writes one in `[host]
//! allow_private_networks` and the outbound policy checks addresses against.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network in CIDR notation, `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    address: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    /// The network's first address (parsing refuses host bits after the
    /// prefix).
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The prefix length: 0 to 32 for IPv4, 0 to 128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` is in this network; an IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`) is taken as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32) == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128) == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit address.
fn masked(bits: u128, prefix: u8, width: u32) -> u128 {
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return 0;
    }
    bits >> (width - prefix)
}

impl FromStr for IpNetwork {
    type Err = String;

    fn from_str(text: &str) -> Result<IpNetwork, String> {
        let (address, prefix) =
            text.split_once('/').ok_or_else(|| format!("{text:?} is not a network: write it as ADDRESS/PREFIX"))?;
        let address: IpAddr = address.parse().map_err(|_| format!("{text:?}: {address:?} is not an IP address"))?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| u32::from(*p) <= width)
            .ok_or_else(|| format!("{text:?}: the prefix length must be a number from 0 to {width}"))?;
        let network = IpNetwork { address, prefix };
        let bits = match address {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let host_bits = width - u32::from(prefix);
        let host_part = if host_bits == 0 { 0 } else { bits & (u128::MAX >> (128 - host_bits)) };
        if host_part != 0 {
            let net_bits = if host_bits >= 128 { 0 } else { bits >> host_bits << host_bits };
            let start = match address {
                IpAddr::V4(_) => IpAddr::from((net_bits as u32).to_be_bytes()),
                IpAddr::V6(_) => IpAddr::from(net_bits.to_be_bytes()),
            };
            return Err(format!("{text:?} has bits set after the prefix: the network is {start}/{prefix}"));
        }
        Ok(network)
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl fmt::Debug for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_what_their_prefix_covers() {
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert!(net("0.0.0.0/0").contains("255.1.2.3".parse().unwrap()));
        assert!(!net("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(net("::/0").contains("::1".parse().unwrap()));
        assert!(net("172.16.0.0/12").contains("172.31.255.255".parse().unwrap()));
        assert!(!net("172.16.0.0/12").contains("172.32.0.0".parse().unwrap()));
        assert!(net("::1/128").contains("::1".parse().unwrap()));
        assert_eq!(net("fe80::/10").to_string(), "fe80::/10");
    }
}
