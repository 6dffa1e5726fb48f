//! NAT and forwarding rules, through `iptables`.
//!
//! All of bulkhead's rules live in two chains of its own, `BULKHEAD-FORWARD` (filter) and
//! `BULKHEAD-POSTROUTING` (nat), each reached by one jump from the built-in chain. Every rule
//! carries a comment naming the bridge it belongs to, so installing is idempotent (`-C` before
//! `-A`) and removing takes exactly what was installed. When the chains are empty again they and
//! their jumps are removed too, leaving the host's tables as they were.

use crate::link::run;
use crate::{Error, Subnet};

pub const FORWARD_CHAIN: &str = "BULKHEAD-FORWARD";
pub const NAT_CHAIN: &str = "BULKHEAD-POSTROUTING";
/// Matches every bridge bulkhead creates (`bulkhead0`, `bulkhead-<id>`).
pub const BRIDGE_WILDCARD: &str = "bulkhead+";

/// One rule: its table, chain and match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: &'static str,
    pub args: Vec<String>,
}

fn rule(table: &'static str, chain: &'static str, tag: &str, args: &[&str]) -> Rule {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let target = all.split_off(all.iter().position(|a| a == "-j").unwrap_or(all.len()));
    all.extend(["-m", "comment", "--comment"].map(str::to_owned));
    all.push(format!("bulkhead:{tag}"));
    all.extend(target);
    Rule { table, chain, args: all }
}

/// The rules of one bridge network: traffic within the bridge passes, traffic to another
/// bulkhead bridge is dropped (networks are isolated), egress is accepted and masqueraded,
/// and from outside only replies come in (published ports go through the host's proxy, not
/// through forwarding).
pub fn network_rules(bridge: &str, subnet: &Subnet) -> Vec<Rule> {
    let f = |args: &[&str]| rule("filter", FORWARD_CHAIN, bridge, args);
    let subnet = subnet.to_string();
    vec![
        f(&["-i", bridge, "-o", bridge, "-j", "ACCEPT"]),
        f(&["-i", bridge, "-o", BRIDGE_WILDCARD, "-j", "DROP"]),
        f(&["-i", bridge, "-j", "ACCEPT"]),
        f(&["-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]),
        f(&["-o", bridge, "-j", "DROP"]),
        rule("nat", NAT_CHAIN, bridge, &["-s", &subnet, "!", "-o", bridge, "-j", "MASQUERADE"]),
    ]
}

/// For an uplink on which bulkhead turned forwarding on: forward nothing from it except to
/// bulkhead's bridges, so the host does not become a router for anything else.
pub fn uplink_rules(uplink: &str) -> Vec<Rule> {
    vec![rule(
        "filter",
        FORWARD_CHAIN,
        &format!("uplink:{uplink}"),
        &["-i", uplink, "!", "-o", BRIDGE_WILDCARD, "-j", "DROP"],
    )]
}

/// Adds each rule that is not there yet (after creating the chains and jumps if needed).
pub fn install(rules: &[Rule]) -> Result<(), Error> {
    ensure_chain("filter", FORWARD_CHAIN, "FORWARD", true)?;
    ensure_chain("nat", NAT_CHAIN, "POSTROUTING", false)?;
    for r in rules {
        if !exists(r)? {
            iptables(r.table, "-A", r.chain, &r.args)?;
        }
    }
    Ok(())
}

/// Removes every copy of each rule; then the chains, if nothing of bulkhead's is left in them.
pub fn remove(rules: &[Rule]) -> Result<(), Error> {
    for r in rules {
        while chain_exists(r.table, r.chain) && exists(r)? {
            iptables(r.table, "-D", r.chain, &r.args)?;
        }
    }
    remove_chain_if_empty("filter", FORWARD_CHAIN, "FORWARD")?;
    remove_chain_if_empty("nat", NAT_CHAIN, "POSTROUTING")?;
    Ok(())
}

/// Every line of `iptables-save` that mentions bulkhead, for checks that nothing is left.
pub fn leftovers() -> Result<Vec<String>, Error> {
    let out = run("iptables-save", &[])?;
    Ok(out.lines().filter(|l| l.contains("bulkhead") || l.contains("BULKHEAD")).map(str::to_owned).collect())
}

fn exists(r: &Rule) -> Result<bool, Error> {
    if !chain_exists(r.table, r.chain) {
        return Ok(false);
    }
    Ok(iptables(r.table, "-C", r.chain, &r.args).is_ok())
}

fn chain_exists(table: &str, chain: &str) -> bool {
    run("iptables", &["-w", "-t", table, "-S", chain]).is_ok()
}

fn ensure_chain(
    table: &'static str,
    chain: &'static str,
    parent: &'static str,
    first: bool,
) -> Result<(), Error> {
    if !chain_exists(table, chain) {
        match iptables(table, "-N", chain, &[]) {
            Err(_) if chain_exists(table, chain) => {}
            other => drop(other?),
        }
    }
    let jump = ["-j".to_owned(), chain.to_owned()];
    if iptables(table, "-C", parent, &jump).is_err() {
        if first {
            let mut args = vec!["1".to_owned()];
            args.extend(jump);
            iptables(table, "-I", parent, &args)?;
        } else {
            iptables(table, "-A", parent, &jump)?;
        }
    }
    Ok(())
}

fn remove_chain_if_empty(
    table: &'static str,
    chain: &'static str,
    parent: &'static str,
) -> Result<(), Error> {
    if !chain_exists(table, chain) {
        return Ok(());
    }
    let listing = run("iptables", &["-w", "-t", table, "-S", chain])?;
    if listing.lines().any(|l| l.starts_with("-A ")) {
        return Ok(());
    }
    let jump = ["-j".to_owned(), chain.to_owned()];
    while iptables(table, "-C", parent, &jump).is_ok() {
        iptables(table, "-D", parent, &jump)?;
    }
    iptables(table, "-X", chain, &[])?;
    Ok(())
}

fn iptables(table: &str, op: &str, chain: &str, args: &[String]) -> Result<String, Error> {
    let mut all = vec!["-w", "-t", table, op, chain];
    all.extend(args.iter().map(String::as_str));
    run("iptables", &all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_rules_isolate_masquerade_and_are_tagged() {
        let rules = network_rules("bulkhead-abc", &"10.90.0.0/24".parse().unwrap());
        let text: Vec<String> =
            rules.iter().map(|r| format!("{} {} {}", r.table, r.chain, r.args.join(" "))).collect();
        for line in &text {
            assert!(line.contains("--comment bulkhead:bulkhead-abc -j "), "{line}");
        }
        assert!(text.contains(&"filter BULKHEAD-FORWARD -i bulkhead-abc -o bulkhead+ -m comment --comment bulkhead:bulkhead-abc -j DROP".to_owned()));
        assert!(text
            .iter()
            .any(|l| l.starts_with("nat BULKHEAD-POSTROUTING -s 10.90.0.0/24 ! -o bulkhead-abc")
                && l.ends_with("-j MASQUERADE")));
        let pos = |needle: &str| text.iter().position(|l| l.contains(needle)).unwrap();
        assert!(
            pos("-o bulkhead+") < pos("-i bulkhead-abc -m comment"),
            "isolation before the egress accept"
        );
        assert!(
            pos("ESTABLISHED") < pos("-o bulkhead-abc -m comment --comment bulkhead:bulkhead-abc -j DROP")
        );
    }

    #[test]
    fn uplink_guard_drops_forwarding_elsewhere() {
        let rules = uplink_rules("eth0");
        assert_eq!(
            rules[0].args.join(" "),
            "-i eth0 ! -o bulkhead+ -m comment --comment bulkhead:uplink:eth0 -j DROP"
        );
    }
}
