//! Bringing a container onto its network on the host, and taking it off again.
//!
//! The first container of a network creates its bridge, turns IPv4 forwarding on for that
//! bridge (and for the uplink carrying the default route, guarded so the host forwards nothing
//! else), and installs the network's firewall rules; each container adds a TAP device on the
//! bridge. When the last TAP leaves a bridge, the bridge and its rules go, and when no bulkhead
//! bridge is left, forwarding is turned back off where bulkhead turned it on. Everything runs
//! under the networks lock, so a start and a removal never race over a bridge.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::store::{Network, Networks, DEFAULT_NETWORK};
use crate::{firewall, link, Error};

/// A container's place on its network's bridge.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub network: Network,
    pub tap: String,
    pub address: Ipv4Addr,
    pub mac: String,
}

/// The TAP device of container `id`: `bht` and 12 hex digits of the ID (15 characters, Linux's
/// limit).
pub fn tap_name(id: &str) -> String {
    let short: String = id.chars().filter(char::is_ascii_hexdigit).take(12).collect();
    format!("bht{short}")
}

/// Why this process cannot create bridges and TAP devices (not root, no `/dev/net/tun`), or
/// `None` if it can. Callers fall back to user-mode networking when it cannot.
pub fn bridging_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        Ok(_) => None,
        Err(e) => Some(format!("cannot open /dev/net/tun: {e}")),
    }
}

/// Puts container `id` with `address` onto network `name`: the bridge and rules as needed,
/// and a fresh TAP device for its VM.
pub fn attach(networks: &Networks, name: &str, id: &str, address: Ipv4Addr) -> Result<Attachment, Error> {
    let _lock = networks.lock()?;
    let network = networks.get_locked(name)?;
    if !network.subnet.contains(address) {
        return Err(Error::Invalid(format!(
            "address {address} is outside network {name}'s subnet {}",
            network.subnet
        )));
    }
    bring_up(networks, &network)?;
    let tap = tap_name(id);
    link::create_tap(&tap, &network.bridge, network.mtu)?;
    Ok(Attachment { mac: crate::config::mac_for(address), network, tap, address })
}

/// Takes container `id`'s TAP device off network `name`, and the bridge and its rules down if
/// it was the last one. Safe to call when nothing is up (after a crash, or twice).
pub fn detach(networks: &Networks, name: &str, id: &str) -> Result<(), Error> {
    let _lock = networks.lock()?;
    link::delete(&tap_name(id))?;
    let network = match networks.get_locked(name) {
        Ok(network) => network,
        Err(Error::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    if link::members(&network.bridge)?.is_empty() {
        take_down(networks, &network)?;
    }
    Ok(())
}

/// `rm`: detach and release the address lease.
pub fn release(networks: &Networks, name: &str, id: &str) -> Result<(), Error> {
    detach(networks, name, id)?;
    networks.release(name, id)
}

/// `network rm`: refused while a container that `exists` holds a lease on it.
pub fn remove_network(networks: &Networks, name: &str, exists: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    if name == DEFAULT_NETWORK {
        return Err(Error::Invalid(format!("{name} is a pre-defined network and cannot be removed")));
    }
    let _lock = networks.lock()?;
    let network = networks.get_locked(name)?;
    let users: Vec<String> = networks
        .leases(name)?
        .into_iter()
        .filter(|(_, owner)| exists(owner))
        .map(|(_, owner)| owner.chars().take(12).collect())
        .collect();
    if !users.is_empty() {
        return Err(Error::Conflict(format!(
            "network {name} has active endpoints (containers {}); remove them first",
            users.join(", ")
        )));
    }
    take_down(networks, &network)?;
    networks.remove_locked(name)
}

/// Whether network `network`'s bridge exists on the host now.
pub fn is_up(network: &Network) -> bool {
    link::exists(&network.bridge)
}

fn bring_up(networks: &Networks, network: &Network) -> Result<(), Error> {
    link::ensure_bridge(&network.bridge, &network.subnet, network.gateway, network.mtu)?;
    set_forwarding(&network.bridge, true)?;
    let mut flipped = read_uplinks(networks);
    for uplink in link::uplinks()? {
        if uplink.starts_with("bulkhead") || flipped.contains(&uplink) {
            continue;
        }
        if !forwarding(&uplink)? {
            // Record first: a crash between the two leaves a restorable record, not a mystery.
            flipped.push(uplink.clone());
            write_uplinks(networks, &flipped)?;
            firewall::install(&firewall::uplink_rules(&uplink))?;
            set_forwarding(&uplink, true)?;
        }
    }
    firewall::install(&firewall::network_rules(&network.bridge, &network.subnet))
}

fn take_down(networks: &Networks, network: &Network) -> Result<(), Error> {
    firewall::remove(&firewall::network_rules(&network.bridge, &network.subnet))?;
    link::delete(&network.bridge)?;
    let others_up = networks.list_locked()?.iter().any(|n| n.name != network.name && is_up(n));
    if !others_up {
        let flipped = read_uplinks(networks);
        for uplink in &flipped {
            if link::exists(uplink) {
                set_forwarding(uplink, false)?;
            }
            firewall::remove(&firewall::uplink_rules(uplink))?;
        }
        let path = uplinks_path(networks);
        if path.exists() {
            std::fs::remove_file(&path).map_err(Error::io("removing", &path))?;
        }
    }
    Ok(())
}

fn forwarding_path(dev: &str) -> PathBuf {
    Path::new("/proc/sys/net/ipv4/conf").join(dev).join("forwarding")
}

fn forwarding(dev: &str) -> Result<bool, Error> {
    let path = forwarding_path(dev);
    let value = std::fs::read_to_string(&path).map_err(Error::io("reading", &path))?;
    Ok(value.trim() != "0")
}

fn set_forwarding(dev: &str, on: bool) -> Result<(), Error> {
    let path = forwarding_path(dev);
    std::fs::write(&path, if on { "1" } else { "0" }).map_err(Error::io("writing", &path))
}

/// Uplinks on which bulkhead turned forwarding on (to turn it off again), in the store.
fn uplinks_path(networks: &Networks) -> PathBuf {
    networks.dir().join(".forwarding-uplinks.json")
}

fn read_uplinks(networks: &Networks) -> Vec<String> {
    std::fs::read(uplinks_path(networks))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn write_uplinks(networks: &Networks, uplinks: &[String]) -> Result<(), Error> {
    let path = uplinks_path(networks);
    let json = serde_json::to_vec(uplinks)
        .map_err(|e| Error::Corrupt { path: path.clone(), reason: e.to_string() })?;
    std::fs::write(&path, json).map_err(Error::io("writing", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_linux_limit() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(tap_name(id), "bht0123456789ab");
        assert!(tap_name(id).len() <= link::MAX_IFNAME);
    }
}
