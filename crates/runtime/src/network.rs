//! Container networking: the glue between a container's record, the host plumbing of
//! `bulkhead-net` and the guest's [`NetworkSpec`].
//!
//! - `create` leases the container an address on its network (kept until `rm`).
//! - The monitor calls [`up`] before the first boot: the bridge and the container's TAP device
//!   (or, where bulkhead cannot create them, QEMU's user-mode network), the published ports,
//!   and the guest's `/etc/hosts` and `/etc/resolv.conf`. Dropping the returned [`Plan`] takes
//!   the TAP (and the bridge, if it was the last) down again.
//! - `rm` (and so `container prune`) calls [`release`], which also cleans up after a monitor
//!   that was killed or crashed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;

use bulkhead_net::proxy::{self, Binding};
use bulkhead_net::{host, hosts, ContainerNetwork, Mode, Networks, PortSpec, Protocol};
use bulkhead_proto::NetworkSpec;
use bulkhead_vmm::{HostForward, NetDevice};
use serde::{Deserialize, Serialize};

use crate::container::{ContainerConfig, Containers};
use crate::{Error, Paths};

/// Set to `1` to use user-mode networking even where bridges work (diagnostics, tests).
pub const FORCE_USER_MODE_ENV: &str = "BULKHEAD_NET_USER_MODE";
/// Name servers for containers when the host has only loopback ones (Docker's choice).
const FALLBACK_DNS: [IpAddr; 2] =
    [IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)), IpAddr::V4(Ipv4Addr::new(8, 8, 4, 4))];

/// The network options of `create` and `run`, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// `bridge` (also when empty), `none`, or a user network's name.
    pub mode: String,
    /// `-p` values.
    pub publish: Vec<String>,
    /// `-P`: publish every port the image exposes on a free host port.
    pub publish_all: bool,
    pub dns: Vec<String>,
    /// `--add-host NAME:IP` values.
    pub add_hosts: Vec<String>,
}

/// At create: validates the options and leases an address. On success the caller owns the
/// lease and must [`release`] it if the container is not recorded after all.
pub fn create(
    paths: &Paths,
    options: &NetworkOptions,
    id: &str,
    exposed_ports: &[String],
) -> Result<ContainerNetwork, Error> {
    let mode = Mode::parse(&options.mode)?;
    let mut ports = options.publish.iter().map(|p| PortSpec::parse(p)).collect::<Result<Vec<_>, _>>()?;
    if options.publish_all {
        for entry in exposed_ports {
            let spec = PortSpec::exposed(entry)?;
            if !ports.iter().any(|p| p.container_port == spec.container_port && p.protocol == spec.protocol) {
                ports.push(spec);
            }
        }
    }
    if mode == Mode::None && !ports.is_empty() {
        return Err(Error::Invalid("cannot publish ports of a container with --network none".into()));
    }
    let dns = options
        .dns
        .iter()
        .map(|d| {
            d.parse::<IpAddr>().map_err(|_| Error::Invalid(format!("invalid --dns {d:?}: not an IP address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let extra_hosts = options
        .add_hosts
        .iter()
        .map(|h| bulkhead_net::config::parse_add_host(h))
        .collect::<Result<Vec<_>, _>>()?;
    let address = match mode.network() {
        Some(name) => {
            let containers = Containers::new(paths);
            let (_, address) =
                networks(paths).allocate(name, id, &|owner: &str| containers.dir(owner).exists())?;
            Some(address)
        }
        None => None,
    };
    Ok(ContainerNetwork { mode, address, ports, dns, extra_hosts })
}

/// At `rm`: takes the container's TAP device (and the bridge, if it was the last) down and
/// releases its address. Failures are logged: a removal must not be stuck on the network.
pub fn release(paths: &Paths, id: &str, network: &ContainerNetwork) {
    if let Some(name) = network.mode.network() {
        if let Err(e) = host::release(&networks(paths), name, id) {
            tracing::warn!(error = %e, network = name, "releasing the container's network");
        }
    }
}

/// What the monitor needs for the VM and the guest, and the live port bindings; dropping it
/// takes the container off the bridge.
pub struct Plan {
    pub device: Option<NetDevice>,
    pub spec: Option<NetworkSpec>,
    pub hosts: String,
    pub resolv_conf: String,
    pub state: NetworkState,
    _bindings: Vec<Binding>,
    attached: Option<(Networks, String, String)>,
}

impl Drop for Plan {
    fn drop(&mut self) {
        if let Some((networks, name, id)) = &self.attached {
            if let Err(e) = host::detach(networks, name, id) {
                tracing::warn!(error = %e, network = %name, "taking the container off its network");
            }
        }
    }
}

/// What a running container's network is, for `inspect` (written to its run directory).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkState {
    /// `bridge` (TAP on a host bridge), `user` (QEMU's user-mode stack) or `none`.
    pub driver: String,
    /// Why user mode was used instead of a bridge.
    pub fallback_reason: Option<String>,
    pub network: Option<String>,
    pub bridge: Option<String>,
    pub tap: Option<String>,
    pub address: Option<Ipv4Addr>,
    pub prefix_len: Option<u8>,
    pub gateway: Option<Ipv4Addr>,
    pub mac: Option<String>,
    /// Published ports with the host ports actually bound.
    pub ports: Vec<PortSpec>,
}

/// Brings container `id` onto its network (see the module docs).
pub fn up(paths: &Paths, id: &str, config: &ContainerConfig) -> Result<Plan, Error> {
    let net = &config.network;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let what = format!("container {}", config.name);
    let Some(name) = net.mode.network() else {
        let plan = Plan {
            device: None,
            spec: None,
            hosts: hosts::hosts_file(&config.hostname, None, &[], &net.extra_hosts),
            resolv_conf: hosts::resolv_conf(&host_resolv, &net.dns, &FALLBACK_DNS),
            state: NetworkState { driver: "none".into(), ..Default::default() },
            _bindings: Vec::new(),
            attached: None,
        };
        write_state(paths, id, &plan.state);
        return Ok(plan);
    };
    let fallback = if std::env::var(FORCE_USER_MODE_ENV).is_ok_and(|v| v == "1") {
        Some(format!("{FORCE_USER_MODE_ENV}=1"))
    } else {
        host::bridging_unavailable()
    };
    let plan = match fallback {
        None => bridged(paths, id, config, name, &host_resolv, &what)?,
        Some(reason) => user_mode(config, name, reason, &what)?,
    };
    write_state(paths, id, &plan.state);
    Ok(plan)
}

fn bridged(
    paths: &Paths,
    id: &str,
    config: &ContainerConfig,
    name: &str,
    host_resolv: &str,
    what: &str,
) -> Result<Plan, Error> {
    let net = &config.network;
    let address = net
        .address
        .ok_or_else(|| Error::Invalid(format!("{what} has no address on network {name}; recreate it")))?;
    let networks = networks(paths);
    // Ports first: a taken port fails the start before anything is created on the host.
    let mut bindings = Vec::new();
    for spec in &net.ports {
        bindings.push(proxy::publish(spec, SocketAddr::new(IpAddr::V4(address), spec.container_port), what)?);
    }
    let attachment = host::attach(&networks, name, id, address)?;
    let network = &attachment.network;
    let peers = peers(paths, &networks, name, id);
    let plan = Plan {
        device: Some(NetDevice::Tap { ifname: attachment.tap.clone(), mac: attachment.mac.clone() }),
        spec: Some(NetworkSpec {
            mac: attachment.mac.clone(),
            address,
            prefix_len: network.subnet.prefix(),
            gateway: Some(network.gateway),
            mtu: network.mtu,
        }),
        hosts: hosts::hosts_file(&config.hostname, Some((address, &config.name)), &peers, &net.extra_hosts),
        resolv_conf: hosts::resolv_conf(host_resolv, &net.dns, &FALLBACK_DNS),
        state: NetworkState {
            driver: "bridge".into(),
            fallback_reason: None,
            network: Some(name.into()),
            bridge: Some(network.bridge.clone()),
            tap: Some(attachment.tap.clone()),
            address: Some(address),
            prefix_len: Some(network.subnet.prefix()),
            gateway: Some(network.gateway),
            mac: Some(attachment.mac.clone()),
            ports: bindings.iter().map(|b| b.spec.clone()).collect(),
        },
        _bindings: bindings,
        attached: Some((networks, name.to_owned(), id.to_owned())),
    };
    Ok(plan)
}

/// QEMU's user-mode stack: no bridge, no TAP, no root; QEMU itself listens for the published
/// ports. Containers on it cannot reach each other, and `ping` needs privileges on the host.
fn user_mode(config: &ContainerConfig, name: &str, reason: String, what: &str) -> Result<Plan, Error> {
    let net = &config.network;
    tracing::info!(%reason, "bridging unavailable; using user-mode networking");
    let mut ports = Vec::new();
    for spec in &net.ports {
        ports.push(PortSpec { host_port: probe_port(spec, what)?, ..spec.clone() });
    }
    let forwards = ports
        .iter()
        .map(|p| HostForward {
            udp: p.protocol == Protocol::Udp,
            host_ip: p.host_ip,
            host_port: p.host_port,
            guest_port: p.container_port,
        })
        .collect();
    let address = bulkhead_vmm::USER_GUEST_ADDRESS;
    let mac = bulkhead_net::config::mac_for(address);
    let dns = if net.dns.is_empty() { vec![IpAddr::V4(bulkhead_vmm::USER_DNS)] } else { net.dns.clone() };
    Ok(Plan {
        device: Some(NetDevice::User { mac: mac.clone(), forwards }),
        spec: Some(NetworkSpec {
            mac: mac.clone(),
            address,
            prefix_len: bulkhead_vmm::USER_PREFIX_LEN,
            gateway: Some(bulkhead_vmm::USER_GATEWAY),
            mtu: 1500,
        }),
        hosts: hosts::hosts_file(&config.hostname, Some((address, &config.name)), &[], &net.extra_hosts),
        resolv_conf: hosts::resolv_conf("", &dns, &[]),
        state: NetworkState {
            driver: "user".into(),
            fallback_reason: Some(reason),
            network: Some(name.into()),
            address: Some(address),
            prefix_len: Some(bulkhead_vmm::USER_PREFIX_LEN),
            gateway: Some(bulkhead_vmm::USER_GATEWAY),
            mac: Some(mac),
            ports,
            ..Default::default()
        },
        _bindings: Vec::new(),
        attached: None,
    })
}

/// Checks that `spec`'s host port is free (choosing one for port 0) for QEMU to bind next.
fn probe_port(spec: &PortSpec, what: &str) -> Result<u16, Error> {
    let ip = spec.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(ip, spec.host_port);
    let proto = spec.protocol.as_str();
    let result = match spec.protocol {
        Protocol::Tcp => TcpListener::bind(addr).and_then(|l| l.local_addr()),
        Protocol::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
    };
    result.map(|a| a.port()).map_err(|source| {
        let (what, ip, port) = (what.to_owned(), ip.to_string(), spec.host_port);
        if source.kind() == std::io::ErrorKind::AddrInUse {
            bulkhead_net::Error::PortInUse { what, ip, port, proto }.into()
        } else {
            bulkhead_net::Error::Publish { what, ip, port, proto, source }.into()
        }
    })
}

/// The other containers on network `name`, by name (and hostname, when it differs).
fn peers(paths: &Paths, networks: &Networks, name: &str, id: &str) -> Vec<hosts::HostEntry> {
    let containers = Containers::new(paths);
    let leases = networks.leases(name).unwrap_or_default();
    leases
        .into_iter()
        .filter(|(_, owner)| owner != id)
        .filter_map(|(address, owner)| {
            let config = containers.load(&owner).ok()?.config;
            let mut names = vec![config.name.clone()];
            if config.hostname != config.name {
                names.push(config.hostname.clone());
            }
            Some(hosts::HostEntry { address: IpAddr::V4(address), names })
        })
        .collect()
}

fn networks(paths: &Paths) -> Networks {
    Networks::new(&paths.root)
}

fn state_path(paths: &Paths, id: &str) -> PathBuf {
    Containers::new(paths).run_dir(id).join("network.json")
}

fn write_state(paths: &Paths, id: &str, state: &NetworkState) {
    let path = state_path(paths, id);
    if let Ok(json) = serde_json::to_vec_pretty(state) {
        if let Err(e) = std::fs::write(&path, json) {
            tracing::warn!(error = %e, path = %path.display(), "writing the network state");
        }
    }
}

/// `inspect`'s `NetworkSettings`: the live state while the container runs, else its record.
pub fn inspect(paths: &Paths, id: &str, network: &ContainerNetwork) -> serde_json::Value {
    let live: Option<NetworkState> =
        std::fs::read(state_path(paths, id)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let ports = |ports: &[PortSpec]| -> Vec<String> { ports.iter().map(ToString::to_string).collect() };
    match live {
        Some(state) => serde_json::json!({
            "Mode": network.mode.to_string(),
            "Driver": state.driver,
            "UserModeReason": state.fallback_reason,
            "Network": state.network,
            "Bridge": state.bridge,
            "Tap": state.tap,
            "IPAddress": state.address,
            "IPPrefixLen": state.prefix_len,
            "Gateway": state.gateway,
            "MacAddress": state.mac,
            "Ports": ports(&state.ports),
            "Dns": network.dns,
        }),
        None => serde_json::json!({
            "Mode": network.mode.to_string(),
            "Network": network.mode.network(),
            "IPAddress": network.address,
            "MacAddress": network.mac(),
            "Ports": ports(&network.ports),
            "Dns": network.dns,
        }),
    }
}

/// `network ls`/`inspect`: the networks with their containers.
pub fn list(paths: &Paths) -> Result<Vec<NetworkInfo>, Error> {
    let networks = networks(paths);
    let containers = Containers::new(paths);
    let mut out = Vec::new();
    for network in networks.list()? {
        let mut members = Vec::new();
        for (address, owner) in networks.leases(&network.name)? {
            if let Ok(c) = containers.load(&owner) {
                members.push(Member { id: owner, name: c.config.name, address });
            }
        }
        out.push(NetworkInfo { up: host::is_up(&network), network, containers: members });
    }
    Ok(out)
}

/// A network and its containers.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkInfo {
    #[serde(flatten)]
    pub network: bulkhead_net::Network,
    /// Whether its bridge exists on the host now (it does while a container of it runs).
    pub up: bool,
    pub containers: Vec<Member>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub address: Ipv4Addr,
}

/// `network create`.
pub fn create_network(
    paths: &Paths,
    name: &str,
    subnet: Option<&str>,
) -> Result<bulkhead_net::Network, Error> {
    let subnet = subnet.map(str::parse).transpose()?;
    let taken: Vec<bulkhead_net::Subnet> = bulkhead_net::link::routed_subnets()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, dev)| !dev.starts_with("bulkhead"))
        .filter_map(|(dest, _)| {
            let (addr, prefix) = dest.split_once('/')?;
            let addr: Ipv4Addr = addr.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            // Routes may have host bits set or very short prefixes; normalise what we can.
            let base =
                Ipv4Addr::from(u32::from(addr) & (u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)));
            bulkhead_net::Subnet::new(base, prefix.clamp(8, 30)).ok()
        })
        .collect();
    Ok(networks(paths).create(name, subnet, &taken)?)
}

/// `network rm`: refused while a container is on it.
pub fn remove_network(paths: &Paths, name: &str) -> Result<(), Error> {
    let containers = Containers::new(paths);
    Ok(host::remove_network(&networks(paths), name, &|owner: &str| containers.dir(owner).exists())?)
}
