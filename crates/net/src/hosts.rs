//! `/etc/hosts` and `/etc/resolv.conf` for a container.
//!
//! Name resolution between containers: the host writes, at each start, every container of the
//! same network (its name, and its hostname when that differs) into the container's
//! `/etc/hosts`. Addresses are leased at create and stay with a container until `rm`, so the
//! entries stay true while both containers exist; a container created after this one started
//! appears at this one's next start.

use std::net::{IpAddr, Ipv4Addr};

/// One entry: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub address: IpAddr,
    pub names: Vec<String>,
}

/// The container's `/etc/hosts`: loopback, itself, its network peers, then `--add-host` lines.
pub fn hosts_file(
    hostname: &str,
    own: Option<(Ipv4Addr, &str)>,
    peers: &[HostEntry],
    extra: &[(String, IpAddr)],
) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match own {
        Some((address, name)) if name != hostname => out.push_str(&format!("{address}\t{hostname} {name}\n")),
        Some((address, _)) => out.push_str(&format!("{address}\t{hostname}\n")),
        None => out.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    for peer in peers {
        out.push_str(&format!("{}\t{}\n", peer.address, peer.names.join(" ")));
    }
    for (name, address) in extra {
        out.push_str(&format!("{address}\t{name}\n"));
    }
    out
}

/// The container's `/etc/resolv.conf`: `--dns` servers if given, else the host's file with
/// loopback name servers dropped (the VM's loopback is its own, so a host resolver on
/// 127.0.0.53 is unreachable from it). `fallback` is used when no server is left.
pub fn resolv_conf(host: &str, dns: &[IpAddr], fallback: &[IpAddr]) -> String {
    if !dns.is_empty() {
        return dns.iter().map(|server| format!("nameserver {server}\n")).collect();
    }
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            match words.next().and_then(|a| a.parse::<IpAddr>().ok()) {
                Some(a) if !a.is_loopback() => servers += 1,
                _ => continue,
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        for server in fallback {
            out.push_str(&format!("nameserver {server}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_lists_self_peers_and_extras() {
        let peers = [HostEntry { address: "172.30.0.3".parse().unwrap(), names: vec!["web".into()] }];
        let extra = [("db".to_owned(), "10.1.2.3".parse().unwrap())];
        let text = hosts_file("abc123", Some(("172.30.0.2".parse().unwrap(), "client")), &peers, &extra);
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("172.30.0.2\tabc123 client\n"), "{text}");
        assert!(text.contains("172.30.0.3\tweb\n"));
        assert!(text.ends_with("10.1.2.3\tdb\n"));
        assert!(hosts_file("h", None, &[], &[]).contains("127.0.1.1\th\n"));
    }

    #[test]
    fn resolv_conf_drops_loopback_servers_and_honours_dns() {
        let host = "search example.org\nnameserver 127.0.0.53\nnameserver 192.0.2.53\noptions edns0\n";
        let fallback = ["198.51.100.1".parse().unwrap()];
        let text = resolv_conf(host, &[], &fallback);
        assert_eq!(text, "search example.org\nnameserver 192.0.2.53\noptions edns0\n");
        let only_loopback = resolv_conf("nameserver 127.0.0.53\n", &[], &fallback);
        assert_eq!(only_loopback, "nameserver 198.51.100.1\n");
        let dns = resolv_conf(host, &["9.9.9.9".parse().unwrap()], &fallback);
        assert_eq!(dns, "nameserver 9.9.9.9\n");
    }
}
