//! Host networking for container VMs.
//!
//! Every container VM gets a TAP device on a host bridge of its network, an address leased from
//! that network's subnet, NAT for egress, and (with `-p`) a userland proxy from a host port to
//! its address. Networks and leases are records in the store; bridges, TAP devices and firewall
//! rules are host state that this crate creates on first use and removes when the last container
//! of a network leaves, so `rm -f` or a crash followed by `container prune` leaves nothing
//! behind.
//!
//! Host plumbing shells out to `ip` (iproute2) and `iptables`, as Docker and Podman do; everything
//! that decides *what* to run is a pure function with unit tests, and the integration tests run
//! the real commands inside network namespaces they create.

pub mod config;
mod error;
pub mod firewall;
pub mod host;
pub mod hosts;
pub mod link;
pub mod ports;
pub mod proxy;
pub mod store;
pub mod subnet;

pub use config::{ContainerNetwork, Mode};
pub use error::Error;
pub use ports::{PortSpec, Protocol};
pub use store::{Network, Networks};
pub use subnet::Subnet;
