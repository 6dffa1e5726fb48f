//! How the guest configures its network interface.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The container's one network interface, configured by the init before any process starts.
/// The guest always brings `lo` up; with no `NetworkSpec` that is all it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The interface's MAC address (`aa:bb:cc:dd:ee:ff`), which the guest uses to find it.
    pub mac: String,
    pub address: Ipv4Addr,
    /// Prefix length of the subnet, 8..=30.
    pub prefix_len: u8,
    /// The default route's next hop; `None` leaves the container without a default route.
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_json_and_containers_without_it_still_parse() {
        let spec = NetworkSpec {
            mac: "02:b4:ac:1e:00:02".into(),
            address: Ipv4Addr::new(172, 30, 0, 2),
            prefix_len: 16,
            gateway: Some(Ipv4Addr::new(172, 30, 0, 1)),
            mtu: 1500,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#""address":"172.30.0.2""#), "{json}");
        assert_eq!(serde_json::from_str::<NetworkSpec>(&json).unwrap(), spec);
        let container: crate::ContainerSpec = serde_json::from_str(
            r#"{"hostname":"h","root_device":"/dev/vda","root_fstype":"ext4","rw_device":null,
                "read_only":false,"tmpfs":[],"hosts":"","resolv_conf":""}"#,
        )
        .unwrap();
        assert_eq!(container.network, None);
    }
}
