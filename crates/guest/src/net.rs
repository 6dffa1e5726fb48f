//! The container's network, configured by the init before any process starts: `lo` up, and the
//! NIC the host gave us (found by its MAC address) with its address, MTU and default route.
//! Plain `SIOCSIF*`/`SIOCADDRT` ioctls on a datagram socket: no netlink library, no `ip` binary
//! (the init runs before, and outside, the container's root filesystem).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use bulkhead_proto::NetworkSpec;
use libc::{c_int, c_short, c_ulong, c_void};

/// `<linux/route.h>`
const RTF_UP: u16 = 0x0001;
const RTF_GATEWAY: u16 = 0x0002;
/// `<linux/if.h>`
const IFF_UP: c_short = 0x1;

/// What failed while configuring the network, with the interface and value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a socket for interface configuration: {0}")]
    Socket(std::io::Error),
    #[error("no network interface has MAC address {mac} (found: {found})")]
    NoInterface { mac: String, found: String },
    #[error("interface name {0:?} is too long")]
    Name(String),
    #[error("{what} on {ifname}: {source}")]
    Ioctl {
        what: String,
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid network spec: {0}")]
    Invalid(String),
}

/// Brings `lo` up and, with a spec, configures the NIC it names. Called once from `Setup`.
pub fn configure(spec: Option<&NetworkSpec>) -> Result<(), Error> {
    let sock = socket()?;
    if let Some(spec) = spec {
        let class = Path::new("/sys/class/net");
        let ifname = match find_by_mac(class, &spec.mac) {
            Ok(ifname) => ifname,
            // A VM restored from a template has the template's MAC on its card: the card is the
            // only one there is, and it takes the container's MAC here (re-identification).
            Err(not_found) => {
                let ifname = only_nic(class).ok_or(not_found)?;
                set_mac(&sock, &ifname, &spec.mac)?;
                ifname
            }
        };
        configure_interface(&sock, &ifname, spec)?;
    }
    Ok(())
}

/// Address, netmask, MTU, up, and the default route, on `ifname`.
pub fn configure_interface(sock: &OwnedFd, ifname: &str, spec: &NetworkSpec) -> Result<(), Error> {
    if !(8..=30).contains(&spec.prefix_len) {
        return Err(Error::Invalid(format!("prefix length {} is outside 8..=30", spec.prefix_len)));
    }
    let mtu = c_int::try_from(spec.mtu)
        .ok()
        .filter(|m| (68..=65535).contains(m))
        .ok_or_else(|| Error::Invalid(format!("MTU {} is outside 68..=65535", spec.mtu)))?;
    let mut req = ifreq(ifname)?;
    req.ifr_ifru.ifru_mtu = mtu;
    ioctl(sock, libc::SIOCSIFMTU, &mut req, ifname, format!("setting MTU {mtu}"))?;

    let mut req = ifreq(ifname)?;
    req.ifr_ifru.ifru_addr = sockaddr(spec.address);
    ioctl(sock, libc::SIOCSIFADDR, &mut req, ifname, format!("setting address {}", spec.address))?;

    let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(spec.prefix_len)));
    let mut req = ifreq(ifname)?;
    req.ifr_ifru.ifru_netmask = sockaddr(mask);
    ioctl(sock, libc::SIOCSIFNETMASK, &mut req, ifname, format!("setting netmask {mask}"))?;

    set_up(sock, ifname)?;

    if let Some(gateway) = spec.gateway {
        // SAFETY: rtentry is plain old data (integers, sockaddrs and a nullable pointer); all
        // zeroes is a valid value (null rt_dev lets the kernel pick the interface).
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr(gateway);
        route.rt_flags = RTF_UP | RTF_GATEWAY;
        // SAFETY: SIOCADDRT reads one rtentry from the pointer, which points at `route`, alive
        // and initialised for the whole call; the socket fd is open.
        let rc = unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCADDRT as c_ulong,
                std::ptr::from_mut(&mut route).cast::<c_void>(),
            )
        };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() != Some(libc::EEXIST) {
                return Err(Error::Ioctl {
                    what: format!("adding the default route via {gateway}"),
                    ifname: ifname.into(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A datagram socket to issue interface ioctls on.
pub fn socket() -> Result<OwnedFd, Error> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Brings up the loopback interface; done at boot, so a template has it up already.
pub fn loopback_up() -> Result<(), Error> {
    set_up(&socket()?, "lo")
}

fn set_up(sock: &OwnedFd, ifname: &str) -> Result<(), Error> {
    let mut req = ifreq(ifname)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req, ifname, "reading flags".into())?;
    // SAFETY: SIOCGIFFLAGS just filled the union's flags member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | IFF_UP;
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req, ifname, "bringing it up".into())
}

/// The interface under `class` (normally `/sys/class/net`) whose address is `mac`.
pub fn find_by_mac(class: &Path, mac: &str) -> Result<String, Error> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(class).map_err(|source| Error::Ioctl {
        what: format!("listing {}", class.display()),
        ifname: "-".into(),
        source,
    })? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim().eq_ignore_ascii_case(mac) {
            return Ok(name);
        }
        found.push(format!("{name}={}", address.trim()));
    }
    found.sort();
    Err(Error::NoInterface { mac: mac.into(), found: found.join(", ") })
}

/// The single interface other than `lo`, if there is exactly one.
fn only_nic(class: &Path) -> Option<String> {
    let names: Vec<String> = std::fs::read_dir(class)
        .ok()?
        .flatten()
        // Ethernet devices only (type 1): not `lo`, not the kernel's tunnel devices (sit0).
        .filter(|e| std::fs::read_to_string(e.path().join("type")).is_ok_and(|t| t.trim() == "1"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "lo")
        .collect();
    match names.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// Sets the hardware address of `ifname` (which is down).
fn set_mac(sock: &OwnedFd, ifname: &str, mac: &str) -> Result<(), Error> {
    let bytes: Vec<u8> = mac.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    if bytes.len() != 6 {
        return Err(Error::Invalid(format!("MAC address {mac:?}")));
    }
    let mut req = ifreq(ifname)?;
    // SAFETY: writing the sockaddr member of the ifreq union, which is plain old data.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (slot, byte) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(&bytes) {
            *slot = libc::c_char::from_ne_bytes([*byte]);
        }
    }
    ioctl(sock, libc::SIOCSIFHWADDR, &mut req, ifname, format!("setting MAC address {mac}"))
}

fn ifreq(ifname: &str) -> Result<libc::ifreq, Error> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(Error::Name(ifname.into()));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers and sockaddrs); all
    // zeroes is a valid value, and leaves the name NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::from(u8::try_from(libc::AF_INET).unwrap_or(2)),
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte C structs, and the kernel reads an
    // AF_INET sockaddr as a sockaddr_in; every bit pattern is a valid sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(
    sock: &OwnedFd,
    request: c_ulong,
    req: &mut libc::ifreq,
    ifname: &str,
    what: String,
) -> Result<(), Error> {
    // SAFETY: every SIOC[GS]IF* request used here reads or writes exactly one ifreq through
    // the pointer, which points at `req`, alive and initialised for the whole call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, std::ptr::from_mut(req).cast::<c_void>()) };
    if rc != 0 {
        return Err(Error::Ioctl { what, ifname: ifname.into(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(cmd: &str) -> String {
        let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn finds_the_interface_by_mac() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "02:b4:ac:1e:00:02")] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(find_by_mac(dir.path(), "02:B4:AC:1E:00:02").unwrap(), "eth0");
        let err = find_by_mac(dir.path(), "02:00:00:00:00:01").unwrap_err().to_string();
        assert!(err.contains("eth0=02:b4:ac:1e:00:02"), "{err}");
    }

    /// The real ioctls, on a veth in a network namespace this test makes (as root only).
    #[test]
    fn configures_an_interface_in_a_private_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = format!("bh-test-guest-{}", std::process::id());
        sh(&format!("ip netns add {ns}"));
        struct Del(String);
        impl Drop for Del {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            }
        }
        let _del = Del(ns.clone());
        sh(&format!("ip netns exec {ns} ip link add eth0 type veth peer name peer0"));
        let spec = NetworkSpec {
            mac: String::new(),
            address: Ipv4Addr::new(10, 66, 0, 2),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 66, 0, 1)),
            mtu: 1400,
        };
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(path).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = socket().unwrap();
            set_up(&sock, "lo").unwrap();
            configure_interface(&sock, "eth0", &spec).unwrap();
            configure_interface(&sock, "eth0", &spec).unwrap();
            let err = configure_interface(&sock, "nope0", &spec).unwrap_err().to_string();
            assert!(err.starts_with("setting MTU 1400 on nope0:"), "{err}");
        })
        .join()
        .unwrap();
        let addr = sh(&format!("ip netns exec {ns} ip -o addr show dev eth0"));
        assert!(addr.contains("10.66.0.2/24"), "{addr}");
        assert!(sh(&format!("ip netns exec {ns} ip -o link show dev eth0")).contains("mtu 1400"));
        let route = sh(&format!("ip netns exec {ns} ip route show default"));
        assert!(route.contains("default via 10.66.0.1 dev eth0"), "{route}");
        assert!(sh(&format!("ip netns exec {ns} ip -o addr show dev lo")).contains("127.0.0.1/8"));
    }
}
