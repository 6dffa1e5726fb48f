//! Published ports: `-p [IP:][HOST:]CONTAINER[/tcp|/udp]` and the image's exposed ports (`-P`).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port. `host_port` 0 means "any free port", chosen when the container starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The host address to listen on; `None` listens on all of them.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortSpec {
    /// Parses one `-p` value.
    pub fn parse(value: &str) -> Result<PortSpec, Error> {
        let invalid = |why: &str| Error::Invalid(format!("invalid port specification {value:?}: {why}"));
        let (rest, protocol) = match value.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Protocol::Tcp),
            Some((rest, "udp")) => (rest, Protocol::Udp),
            Some((_, other)) => return Err(invalid(&format!("unknown protocol {other:?} (tcp or udp)"))),
            None => (value, Protocol::Tcp),
        };
        // An IPv6 host address is bracketed: `[::1]:8080:80`.
        let (host_ip, rest) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, rest) = v6.split_once("]:").ok_or_else(|| invalid("unclosed '['"))?;
            (Some(ip), rest)
        } else {
            match rest.matches(':').count() {
                0 | 1 => (None, rest),
                2 => {
                    let (ip, rest) = rest.split_once(':').ok_or_else(|| invalid("bad address"))?;
                    (Some(ip), rest)
                }
                _ => return Err(invalid("too many ':' (bracket an IPv6 address)")),
            }
        };
        let host_ip = match host_ip {
            None | Some("") => None,
            Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| invalid(&format!("bad host address {ip:?}")))?),
        };
        let (host_port, container_port) = match rest.split_once(':') {
            Some((host, container)) => (host, container),
            None => ("", rest),
        };
        let port = |text: &str, what: &str, zero_ok: bool| -> Result<u16, Error> {
            if text.contains('-') {
                return Err(invalid("port ranges are not supported"));
            }
            match text.parse::<u16>() {
                Ok(0) if !zero_ok => Err(invalid(&format!("{what} port 0"))),
                Ok(p) => Ok(p),
                Err(_) => Err(invalid(&format!("bad {what} port {text:?}"))),
            }
        };
        let host_port = if host_port.is_empty() { 0 } else { port(host_port, "host", true)? };
        let container_port = port(container_port, "container", false)?;
        Ok(PortSpec { host_ip, host_port, container_port, protocol })
    }

    /// The image's `ExposedPorts` entry (`80/tcp`, `53/udp`, `8080`) as a port published on a
    /// free host port.
    pub fn exposed(entry: &str) -> Result<PortSpec, Error> {
        let (port, protocol) = entry.split_once('/').unwrap_or((entry, "tcp"));
        PortSpec::parse(&format!("{port}/{protocol}"))
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}:{}/{}", self.host_port, self.container_port, self.protocol.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortSpec {
        PortSpec::parse(s).unwrap()
    }

    #[test]
    fn docker_forms_parse() {
        assert_eq!(
            p("8080:80"),
            PortSpec { host_ip: None, host_port: 8080, container_port: 80, protocol: Protocol::Tcp }
        );
        assert_eq!(p("80").host_port, 0);
        assert_eq!(p("127.0.0.1:8080:80").host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p("127.0.0.1::80").host_port, 0);
        assert_eq!(p("5353:53/udp").protocol, Protocol::Udp);
        assert_eq!(p("[::1]:8080:80/tcp").host_ip, Some("::1".parse().unwrap()));
        assert_eq!(p("127.0.0.1:8080:80/udp").to_string(), "127.0.0.1:8080:80/udp");
    }

    #[test]
    fn bad_forms_say_why() {
        for (bad, why) in [
            ("80/sctp", "unknown protocol"),
            ("1.2.3:80:80", "bad host address"),
            ("8080:0", "container port 0"),
            ("70000:80", "bad host port"),
            ("8000-8010:80", "ranges"),
            ("a:b:c:d", "too many"),
        ] {
            let err = PortSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn exposed_ports_publish_on_any_host_port() {
        assert_eq!(PortSpec::exposed("80/tcp").unwrap(), p("80"));
        assert_eq!(PortSpec::exposed("53/udp").unwrap().protocol, Protocol::Udp);
        assert_eq!(PortSpec::exposed("8080").unwrap().container_port, 8080);
    }
}
