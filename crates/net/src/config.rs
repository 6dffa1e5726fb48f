//! What a container's record says about its network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::{Error, PortSpec};

/// `--network`: no network but `lo`, or a bridge network by name (`bridge` is the default one).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Mode {
    /// Only the loopback interface. Records written before networking existed read as this.
    #[default]
    None,
    Bridge(String),
}

impl Mode {
    /// Parses `--network`; `default` is Docker's alias for the default network.
    pub fn parse(value: &str) -> Result<Mode, Error> {
        match value {
            "none" => Ok(Mode::None),
            "" | "bridge" | "default" => Ok(Mode::Bridge(crate::store::DEFAULT_NETWORK.into())),
            "host" => Err(Error::Invalid(
                "--network host is not available: every container is its own VM with its own network stack"
                    .into(),
            )),
            name => {
                crate::store::validate_name(name)?;
                Ok(Mode::Bridge(name.into()))
            }
        }
    }

    /// The network's name, for a bridged container.
    pub fn network(&self) -> Option<&str> {
        match self {
            Mode::None => None,
            Mode::Bridge(name) => Some(name),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.network().unwrap_or("none"))
    }
}

impl From<Mode> for String {
    fn from(mode: Mode) -> String {
        mode.to_string()
    }
}

impl From<String> for Mode {
    fn from(value: String) -> Mode {
        if value == "none" {
            Mode::None
        } else {
            Mode::Bridge(value)
        }
    }
}

/// A container's network settings, fixed at create.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerNetwork {
    pub mode: Mode,
    /// The address leased on the network (bridge mode).
    pub address: Option<Ipv4Addr>,
    /// Published ports (`-p`, and `-P` for the image's exposed ports, resolved at create).
    pub ports: Vec<PortSpec>,
    /// `--dns`: name servers for `/etc/resolv.conf`, replacing the host's.
    pub dns: Vec<IpAddr>,
    /// `--add-host NAME:IP`: extra `/etc/hosts` lines.
    pub extra_hosts: Vec<(String, IpAddr)>,
}

impl ContainerNetwork {
    /// The guest's MAC address, derived from its IPv4 address as Docker does (locally
    /// administered, so it never collides with a real NIC).
    pub fn mac(&self) -> Option<String> {
        self.address.map(mac_for)
    }
}

/// `02:b4:a.b.c.d` in hex for address `a.b.c.d`.
pub fn mac_for(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:b4:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Parses `--add-host NAME:IP` (the IP may be IPv6; Docker's `NAME=IP` form is accepted too).
pub fn parse_add_host(value: &str) -> Result<(String, IpAddr), Error> {
    let invalid = || Error::Invalid(format!("invalid --add-host {value:?}: expected NAME:IP"));
    let (name, ip) = value.split_once('=').or_else(|| value.split_once(':')).ok_or_else(invalid)?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = ip.parse().map_err(|_| invalid())?;
    if name.is_empty()
        || name.len() > 253
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(invalid());
    }
    Ok((name.to_owned(), ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_round_trip() {
        assert_eq!(Mode::parse("none").unwrap(), Mode::None);
        assert_eq!(Mode::parse("bridge").unwrap(), Mode::Bridge("bridge".into()));
        assert_eq!(Mode::parse("mynet").unwrap(), Mode::Bridge("mynet".into()));
        assert!(Mode::parse("host").unwrap_err().to_string().contains("own network stack"));
        assert!(Mode::parse("a/b").is_err());
        let net = ContainerNetwork { mode: Mode::Bridge("mynet".into()), ..Default::default() };
        let json = serde_json::to_string(&net).unwrap();
        assert!(json.contains(r#""mode":"mynet""#), "{json}");
        assert_eq!(serde_json::from_str::<ContainerNetwork>(&json).unwrap(), net);
        assert_eq!(serde_json::from_str::<ContainerNetwork>("{}").unwrap().mode, Mode::None);
    }

    #[test]
    fn add_host_and_mac() {
        assert_eq!(parse_add_host("db:10.0.0.5").unwrap(), ("db".into(), "10.0.0.5".parse().unwrap()));
        assert_eq!(parse_add_host("v6:[::1]").unwrap().1, "::1".parse::<IpAddr>().unwrap());
        assert!(parse_add_host("db").is_err());
        assert!(parse_add_host("bad name:1.2.3.4").is_err());
        assert_eq!(mac_for(Ipv4Addr::new(172, 30, 0, 2)), "02:b4:ac:1e:00:02");
    }
}
