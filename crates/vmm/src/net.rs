//! The VM's network device: one virtio-net (virtio-mmio) NIC, backed by a host TAP device or by
//! QEMU's user-mode network stack (slirp) when the host cannot give us a TAP.

use std::net::IpAddr;

use crate::Error;

/// What backs the guest's NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetDevice {
    /// An existing TAP device (created and attached to a bridge by the caller). QEMU opens it
    /// by name and runs no scripts (`-sandbox ...,spawn=deny` forbids them anyway).
    Tap { ifname: String, mac: String },
    /// QEMU's user-mode stack: the guest is `10.0.2.15/24`, gateway `10.0.2.2`, DNS `10.0.2.3`;
    /// QEMU itself listens on the host for each forward.
    User { mac: String, forwards: Vec<HostForward> },
}

/// A user-mode port forward: QEMU listens on `host_ip:host_port` and connects to the guest's
/// `guest_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostForward {
    pub udp: bool,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
}

/// The guest's address in user mode (QEMU's slirp default network).
pub const USER_GUEST_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 15);
pub const USER_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 2);
pub const USER_DNS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 3);
pub const USER_PREFIX_LEN: u8 = 24;

impl NetDevice {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let mac = match self {
            NetDevice::Tap { ifname, mac } => {
                if ifname.is_empty()
                    || ifname.len() > 15
                    || !ifname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(Error::InvalidConfig(format!("invalid TAP device name {ifname:?}")));
                }
                mac
            }
            NetDevice::User { mac, forwards } => {
                if let Some(f) = forwards.iter().find(|f| f.host_port == 0 || f.guest_port == 0) {
                    return Err(Error::InvalidConfig(format!(
                        "user-mode forward {:?}: ports must be non-zero",
                        f
                    )));
                }
                mac
            }
        };
        let valid_mac = mac.len() == 17
            && mac.split(':').count() == 6
            && mac.split(':').all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
        if !valid_mac {
            return Err(Error::InvalidConfig(format!("invalid MAC address {mac:?}")));
        }
        Ok(())
    }

    /// QEMU arguments for this device.
    pub(crate) fn args(&self) -> Vec<String> {
        let (netdev, mac) = match self {
            NetDevice::Tap { ifname, mac } => {
                (format!("tap,id=net0,ifname={ifname},script=no,downscript=no"), mac)
            }
            NetDevice::User { mac, forwards } => {
                let mut netdev = String::from("user,id=net0,net=10.0.2.0/24,ipv6=off");
                for f in forwards {
                    let proto = if f.udp { "udp" } else { "tcp" };
                    let ip = f.host_ip.map(|ip| ip.to_string()).unwrap_or_default();
                    netdev.push_str(&format!(",hostfwd={proto}:{ip}:{}-:{}", f.host_port, f.guest_port));
                }
                (netdev, mac)
            }
        };
        vec!["-netdev".into(), netdev, "-device".into(), format!("virtio-net-device,netdev=net0,mac={mac}")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_and_user_devices_become_qemu_arguments() {
        let tap = NetDevice::Tap { ifname: "bht0123456789ab".into(), mac: "02:b4:ac:1e:00:02".into() };
        tap.validate().unwrap();
        assert_eq!(
            tap.args().join(" "),
            "-netdev tap,id=net0,ifname=bht0123456789ab,script=no,downscript=no \
             -device virtio-net-device,netdev=net0,mac=02:b4:ac:1e:00:02"
        );
        let user = NetDevice::User {
            mac: "02:b4:0a:00:02:0f".into(),
            forwards: vec![
                HostForward { udp: false, host_ip: None, host_port: 8080, guest_port: 80 },
                HostForward {
                    udp: true,
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                    host_port: 53,
                    guest_port: 53,
                },
            ],
        };
        user.validate().unwrap();
        assert!(
            user.args()[1].ends_with(",hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:53-:53"),
            "{:?}",
            user.args()
        );
    }

    #[test]
    fn bad_names_and_macs_are_refused() {
        let bad = NetDevice::Tap { ifname: "tap,script=/x".into(), mac: "02:b4:ac:1e:00:02".into() };
        assert!(bad.validate().unwrap_err().to_string().contains("TAP device name"));
        let bad = NetDevice::Tap { ifname: "tap0".into(), mac: "02:b4:ac:1e:00".into() };
        assert!(bad.validate().unwrap_err().to_string().contains("MAC"));
    }
}
