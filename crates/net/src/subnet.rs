//! IPv4 subnets in CIDR notation.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// An IPv4 network: its base address (host bits zero) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    base: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// `addr/prefix`; fails if host bits are set or the prefix leaves no room for a gateway and
    /// one container (a /30 is the smallest usable network).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet, Error> {
        if !(8..=30).contains(&prefix) {
            return Err(Error::Invalid(format!(
                "subnet {addr}/{prefix}: the prefix must be between /8 and /30"
            )));
        }
        let subnet = Subnet { base: Ipv4Addr::from(u32::from(addr) & mask(prefix)), prefix };
        if subnet.base != addr {
            return Err(Error::Invalid(format!(
                "subnet {addr}/{prefix} has host bits set; did you mean {subnet}?"
            )));
        }
        Ok(subnet)
    }

    pub fn base(&self) -> Ipv4Addr {
        self.base
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The bridge's own address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1).unwrap_or(self.base)
    }

    /// The `n`th address of the subnet, if it is a host address (not the base, not broadcast).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        if n == 0 || n >= self.size() - 1 {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.base) + n))
    }

    /// Addresses in the subnet, including base and broadcast.
    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.base)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// The address as `a.b.c.d/prefix`, for `ip addr add`.
    pub fn with_prefix(&self, addr: Ipv4Addr) -> String {
        format!("{addr}/{}", self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Subnet, Error> {
        let invalid = || Error::Invalid(format!("invalid subnet {s:?}: expected CIDR like 10.90.0.0/24"));
        let (addr, prefix) = s.split_once('/').ok_or_else(invalid)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        Subnet::new(addr, prefix)
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_describes_a_subnet() {
        let s: Subnet = "10.90.1.0/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.90.1.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 90, 1, 1));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.host(2), Some(Ipv4Addr::new(10, 90, 1, 2)));
        assert_eq!(s.host(254), Some(Ipv4Addr::new(10, 90, 1, 254)));
        assert_eq!(s.host(255), None, "broadcast is no host");
        assert_eq!(s.host(0), None, "the base is no host");
        assert!(s.contains(Ipv4Addr::new(10, 90, 1, 77)));
        assert!(!s.contains(Ipv4Addr::new(10, 90, 2, 1)));
    }

    #[test]
    fn rejects_host_bits_and_silly_prefixes() {
        let err = "10.90.1.5/24".parse::<Subnet>().unwrap_err().to_string();
        assert!(err.contains("did you mean 10.90.1.0/24"), "{err}");
        assert!("10.0.0.0/31".parse::<Subnet>().is_err());
        assert!("10.0.0.0".parse::<Subnet>().is_err());
        assert!("banana/24".parse::<Subnet>().is_err());
    }

    #[test]
    fn overlap_is_symmetric() {
        let a: Subnet = "10.0.0.0/16".parse().unwrap();
        let b: Subnet = "10.0.5.0/24".parse().unwrap();
        let c: Subnet = "10.1.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
    }
}
