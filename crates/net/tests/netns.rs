//! The host plumbing against the real kernel, inside network namespaces the tests create: a
//! "host" namespace holding bulkhead's bridges and rules, an "outside" namespace standing for
//! the rest of the world (a server on a veth), and "container" namespaces standing for VMs,
//! attached to the bridge by veth like a TAP would be. No packet leaves the machine.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use bulkhead_net::{firewall, host, link, Networks};
use common::{is_root, veth, Netns};

/// A host namespace with an uplink (`bhup0`, default route) to an outside namespace that runs a
/// TCP server on 10.250.0.2:7000 answering with the peer address it saw.
struct World {
    host: Netns,
    outside: Netns,
    store: tempfile::TempDir,
}

fn world() -> World {
    let host = Netns::new("host");
    let outside = Netns::new("out");
    veth(&host, "bhup0", "10.250.0.1/24", &outside, "bhout0", "10.250.0.2/24");
    host.exec("ip route add default via 10.250.0.2");
    let listener = outside.run(|| TcpListener::bind("10.250.0.2:7000").unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let peer = conn.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
            let _ = conn.write_all(peer.as_bytes());
        }
    });
    World { host, outside, store: tempfile::tempdir().unwrap() }
}

/// A namespace standing for a container VM: a veth whose host end is on `bridge`.
fn container(
    world: &World,
    bridge: &str,
    host_if: &str,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Netns {
    let ns = Netns::new("ctr");
    world.host.exec(&format!("ip link add {host_if} type veth peer name eth0 netns {}", ns.name));
    world.host.exec(&format!("ip link set {host_if} master {bridge} up"));
    ns.exec(&format!(
        "ip addr add {addr}/{prefix} dev eth0 && ip link set eth0 up && ip route add default via {gateway}"
    ));
    ns
}

/// What the outside server saw as our address, or the connection error.
fn ask_outside(from: &Netns) -> Result<String, String> {
    from.run(|| {
        let addr: SocketAddr = "10.250.0.2:7000".parse().unwrap();
        let mut conn =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut seen = String::new();
        conn.read_to_string(&mut seen).map_err(|e| e.to_string())?;
        Ok(seen)
    })
}

fn reach(from: &Netns, to: Ipv4Addr, port: u16) -> bool {
    from.run(|| TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(2)).is_ok())
}

#[test]
fn bridge_nat_isolation_and_cleanup() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let w = world();
    let nets = Networks::new(w.store.path());
    let live = |_: &str| true;
    let other = nets.create("other", None, &[]).unwrap();
    let (default, a_ip) = nets.allocate("bridge", "aaaaaaaaaaaaaaaa", &live).unwrap();
    let (_, b_ip) = nets.allocate("other", "bbbbbbbbbbbbbbbb", &live).unwrap();
    let (attach_a, _attach_b) = w.host.run(|| {
        let a = host::attach(&nets, "bridge", "aaaaaaaaaaaaaaaa", a_ip).unwrap();
        let b = host::attach(&nets, "other", "bbbbbbbbbbbbbbbb", b_ip).unwrap();
        (a, b)
    });
    assert_eq!(attach_a.tap, "bhtaaaaaaaaaaaa");
    let links = w.host.exec("ip -o link show");
    for name in ["bulkhead0", &other.bridge, "bhtaaaaaaaaaaaa", "bhtbbbbbbbbbbbb"] {
        assert!(links.contains(&format!(": {name}:")), "{name} missing from {links}");
    }
    assert!(w.host.exec("ip -o addr show dev bulkhead0").contains("172.30.0.1/16"));
    assert_eq!(w.host.exec("cat /proc/sys/net/ipv4/conf/bulkhead0/forwarding").trim(), "1");
    assert_eq!(w.host.exec("cat /proc/sys/net/ipv4/conf/bhup0/forwarding").trim(), "1");
    assert_eq!(w.host.exec("cat /proc/sys/net/ipv4/conf/lo/forwarding").trim(), "0", "only ours");

    // Stand-ins for the VMs, on the same bridges as the TAPs.
    let ca = container(&w, default.bridge.as_str(), "bhva", a_ip, default.gateway, 16);
    let cb = container(&w, &other.bridge, "bhvb", b_ip, other.gateway, 24);
    assert_eq!(ask_outside(&ca).unwrap(), "10.250.0.1", "egress is masqueraded behind the uplink");
    assert_eq!(ask_outside(&cb).unwrap(), "10.250.0.1");
    let server = cb.run(|| TcpListener::bind((b_ip, 8000)).unwrap());
    assert!(!reach(&ca, b_ip, 8000), "networks are isolated");
    let inside = ca.run(|| TcpListener::bind((a_ip, 8001)).unwrap());
    w.outside.exec("ip route add 172.30.0.0/16 via 10.250.0.1");
    assert!(!reach(&w.outside, a_ip, 8001), "the outside cannot open connections to a container");
    drop((server, inside));

    // Installing again changes nothing.
    let rules = w.host.run(|| firewall::leftovers().unwrap());
    w.host.run(|| host::attach(&nets, "bridge", "aaaaaaaaaaaaaaaa", a_ip).unwrap());
    assert_eq!(w.host.run(|| firewall::leftovers().unwrap()), rules, "rules are idempotent");

    // The stand-ins leave; then the containers, one by one.
    w.host.exec("ip link del bhva && ip link del bhvb");
    w.host.run(|| host::release(&nets, "bridge", "aaaaaaaaaaaaaaaa").unwrap());
    assert!(!w.host.run(|| link::exists("bulkhead0")), "the last container took the bridge with it");
    assert!(w.host.run(|| link::exists(&other.bridge)));
    assert_eq!(w.host.exec("cat /proc/sys/net/ipv4/conf/bhup0/forwarding").trim(), "1", "still needed");
    w.host.run(|| host::release(&nets, "other", "bbbbbbbbbbbbbbbb").unwrap());
    let links = w.host.exec("ip -o link show");
    assert!(!links.contains("bulkhead") && !links.contains("bht"), "{links}");
    assert_eq!(w.host.run(|| firewall::leftovers().unwrap()), Vec::<String>::new());
    assert_eq!(w.host.exec("cat /proc/sys/net/ipv4/conf/bhup0/forwarding").trim(), "0", "restored");
    assert!(nets.leases("bridge").unwrap().is_empty());

    // A second detach (rm after a crash already cleaned) is harmless; network rm works.
    w.host.run(|| host::release(&nets, "bridge", "aaaaaaaaaaaaaaaa").unwrap());
    w.host.run(|| host::remove_network(&nets, "other", &|_| false).unwrap());
    assert_eq!(nets.list().unwrap().len(), 1);
}

#[test]
fn crash_leftovers_are_cleaned_by_release() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let w = world();
    let nets = Networks::new(w.store.path());
    let (_, ip) = nets.allocate("bridge", "cccccccccccccccc", &|_| true).unwrap();
    w.host.run(|| host::attach(&nets, "bridge", "cccccccccccccccc", ip).unwrap());
    // A crashed monitor leaves the TAP and the bridge; a restart reuses the TAP name.
    w.host.run(|| host::attach(&nets, "bridge", "cccccccccccccccc", ip).unwrap());
    assert_eq!(w.host.run(|| link::members("bulkhead0").unwrap()), ["bhtcccccccccccc"]);
    // A network in use cannot be removed.
    nets.create("busy", None, &[]).unwrap();
    nets.allocate("busy", "dddddddddddddddd", &|_| true).unwrap();
    let err = host::remove_network(&nets, "busy", &|_| true).unwrap_err().to_string();
    assert!(err.contains("active endpoints (containers dddddddddddd)"), "{err}");
    // `rm` (prune) after the crash: everything goes.
    w.host.run(|| host::release(&nets, "bridge", "cccccccccccccccc").unwrap());
    let links = w.host.exec("ip -o link show");
    assert!(!links.contains("bulkhead") && !links.contains("bht"), "{links}");
    assert!(w.host.run(|| firewall::leftovers().unwrap()).is_empty());
}
