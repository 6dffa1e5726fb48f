//! Links on the host: bridges and TAP devices, through `ip` (iproute2).
//!
//! Existence is checked with `if_nametoindex` on a socket, never through `/sys/class/net`, whose
//! view belongs to the network namespace that mounted sysfs rather than the caller's.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::{Error, Subnet};

/// Linux's limit on interface names, without the terminating NUL.
pub const MAX_IFNAME: usize = 15;

/// Whether an interface called `name` exists in the caller's network namespace.
pub fn exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// Creates the bridge if it is missing and gives it `gateway` in `subnet`, `mtu`, and state up.
pub fn ensure_bridge(name: &str, subnet: &Subnet, gateway: Ipv4Addr, mtu: u32) -> Result<(), Error> {
    check_name(name)?;
    if !exists(name) {
        ip(&["link", "add", name, "mtu", &mtu.to_string(), "type", "bridge"])?;
    }
    ip(&["addr", "replace", &subnet.with_prefix(gateway), "dev", name])?;
    ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// Creates TAP device `name` (replacing a stale one of that name) attached to `bridge`, up.
pub fn create_tap(name: &str, bridge: &str, mtu: u32) -> Result<(), Error> {
    check_name(name)?;
    delete(name)?;
    ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
    let result = ip(&["link", "set", name, "mtu", &mtu.to_string(), "master", bridge, "up"]);
    if result.is_err() {
        let _ = delete(name);
    }
    result.map(drop)
}

/// Deletes interface `name` if it exists.
pub fn delete(name: &str) -> Result<(), Error> {
    if !exists(name) {
        return Ok(());
    }
    match ip(&["link", "del", name]) {
        Err(_) if !exists(name) => Ok(()),
        other => other.map(drop),
    }
}

/// Names of the interfaces attached to `bridge`.
pub fn members(bridge: &str) -> Result<Vec<String>, Error> {
    if !exists(bridge) {
        return Ok(Vec::new());
    }
    let out = ip(&["-o", "link", "show", "master", bridge])?;
    Ok(parse_link_names(&out))
}

/// Interfaces that carry the IPv4 default routes: where egress traffic leaves the host.
pub fn uplinks() -> Result<Vec<String>, Error> {
    let out = ip(&["-4", "route", "show", "default"])?;
    let mut devs: Vec<String> = out
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.by_ref().find(|w| *w == "dev")?;
            words.next().map(str::to_owned)
        })
        .collect();
    devs.sort();
    devs.dedup();
    Ok(devs)
}

/// Destinations of the host's IPv4 routes that are subnets (`a.b.c.d/n`), to keep new networks
/// off them.
pub fn routed_subnets() -> Result<Vec<(String, String)>, Error> {
    let out = ip(&["-4", "route", "show"])?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let dest = words.next()?.to_owned();
            words.by_ref().find(|w| *w == "dev")?;
            let dev = words.next()?.to_owned();
            dest.contains('/').then_some((dest, dev))
        })
        .collect())
}

fn parse_link_names(out: &str) -> Vec<String> {
    // `3: bht0@if2: <BROADCAST,...> ...` → `bht0`
    out.lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > MAX_IFNAME
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::Invalid(format!("invalid interface name {name:?}")));
    }
    Ok(())
}

/// Runs `ip ARGS`; returns its stdout.
pub(crate) fn ip(args: &[&str]) -> Result<String, Error> {
    run("ip", args)
}

/// Runs `program ARGS`; returns its stdout, or an error naming the command and its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_come_from_ip_one_line_output() {
        let out = "3: bht0123456789ab: <BROADCAST,MULTICAST> mtu 1500 master bulkhead0\n\
                   7: veth1@if6: <BROADCAST> mtu 1500\n";
        assert_eq!(parse_link_names(out), ["bht0123456789ab", "veth1"]);
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_name("bulkhead0").is_ok());
        assert!(check_name("bulkhead-0123456").is_err(), "16 characters");
        assert!(check_name("a b").is_err());
        assert!(check_name("").is_err());
    }
}
