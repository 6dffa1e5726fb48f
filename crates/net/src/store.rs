//! Networks and address leases, as records in the store under `<root>/networks/`:
//!
//! ```text
//! networks/.lock                  one lock for records, leases and the host plumbing
//! networks/<name>/network.json    the network (subnet, gateway, bridge name)
//! networks/<name>/leases/<ip>     one file per allocated address, holding the container ID
//! ```
//!
//! The default network `bridge` is created on first use. A lease is taken when a container is
//! created and released when it is removed; a lease whose container no longer exists (a crash
//! between the two) is reclaimed by the next allocation.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{Error, Subnet};

/// The network containers join unless told otherwise.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The default network's bridge.
pub const DEFAULT_BRIDGE: &str = "bulkhead0";
/// The default network's subnet (Docker uses 172.17.0.0/16 and Podman 10.88.0.0/16; this keeps
/// clear of both).
pub const DEFAULT_SUBNET: &str = "172.30.0.0/16";
/// User networks without `--subnet` get the first free /24 of this range.
pub const USER_POOL: &str = "172.31.0.0/16";
/// Names that are modes, not networks.
const RESERVED: [&str; 4] = ["none", "host", "default", "user"];
/// A lease younger than this is never reclaimed: its container may be being created.
const LEASE_GRACE: Duration = Duration::from_secs(120);

/// A bridge network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    /// 12 hex digits, random.
    pub id: String,
    pub driver: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub mtu: u32,
    pub created: String,
}

/// The network records of one store.
#[derive(Debug, Clone)]
pub struct Networks {
    dir: PathBuf,
}

/// Holds the networks lock; released on drop.
pub struct NetworksLock {
    _lock: Flock<File>,
}

impl Networks {
    /// The networks of the store at `root`.
    pub fn new(root: &Path) -> Networks {
        Networks { dir: root.join("networks") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for, then holds, the lock over all networks, their leases and their host state.
    pub fn lock(&self) -> Result<NetworksLock, Error> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("creating", &self.dir))?;
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("opening", &path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(|lock| NetworksLock { _lock: lock })
            .map_err(|(_, e)| Error::Io { what: "locking", path, source: e.into() })
    }

    /// The network called `name`; the default network is created on first use.
    pub fn get(&self, name: &str) -> Result<Network, Error> {
        let _lock = self.lock()?;
        self.get_locked(name)
    }

    pub(crate) fn get_locked(&self, name: &str) -> Result<Network, Error> {
        let path = self.record_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt { path: path.clone(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == DEFAULT_NETWORK => {
                let subnet: Subnet = DEFAULT_SUBNET.parse()?;
                let network = Network {
                    name: DEFAULT_NETWORK.into(),
                    id: random_id()?,
                    driver: "bridge".into(),
                    gateway: subnet.gateway(),
                    subnet,
                    bridge: DEFAULT_BRIDGE.into(),
                    mtu: 1500,
                    created: now(),
                };
                self.write(&network)?;
                Ok(network)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound(format!("network {name} not found")))
            }
            Err(e) => Err(Error::Io { what: "reading", path, source: e }),
        }
    }

    /// All networks, the default one first.
    pub fn list(&self) -> Result<Vec<Network>, Error> {
        let _lock = self.lock()?;
        self.list_locked()
    }

    pub(crate) fn list_locked(&self) -> Result<Vec<Network>, Error> {
        let mut out = vec![self.get_locked(DEFAULT_NETWORK)?];
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(Error::io("listing", &self.dir))?
            .flatten()
            .filter(|e| e.path().join("network.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != DEFAULT_NETWORK)
            .collect();
        names.sort();
        for name in names {
            out.push(self.get_locked(&name)?);
        }
        Ok(out)
    }

    /// Creates user network `name` on `subnet`, or on the first free /24 of [`USER_POOL`].
    /// `taken` are subnets in use on the host (its routes), which a new network must not overlap.
    pub fn create(&self, name: &str, subnet: Option<Subnet>, taken: &[Subnet]) -> Result<Network, Error> {
        validate_name(name)?;
        let _lock = self.lock()?;
        if self.record_path(name).exists() || name == DEFAULT_NETWORK {
            return Err(Error::Conflict(format!("network with name {name} already exists")));
        }
        let mut in_use: Vec<(String, Subnet)> = Vec::new();
        in_use.push((DEFAULT_NETWORK.into(), self.get_locked(DEFAULT_NETWORK)?.subnet));
        for entry in std::fs::read_dir(&self.dir).map_err(Error::io("listing", &self.dir))?.flatten() {
            if let Some(other) = entry.file_name().to_str().filter(|n| *n != DEFAULT_NETWORK) {
                if entry.path().join("network.json").is_file() {
                    in_use.push((other.to_owned(), self.get_locked(other)?.subnet));
                }
            }
        }
        let subnet = match subnet {
            Some(subnet) => {
                if let Some((other, s)) = in_use.iter().find(|(_, s)| s.overlaps(&subnet)) {
                    return Err(Error::Conflict(format!("subnet {subnet} overlaps {s} of network {other}")));
                }
                if let Some(route) = taken.iter().find(|s| s.overlaps(&subnet)) {
                    return Err(Error::Conflict(format!(
                        "subnet {subnet} overlaps the host's route to {route}"
                    )));
                }
                subnet
            }
            None => {
                let pool: Subnet = USER_POOL.parse()?;
                (0..256u32)
                    .filter_map(|i| Subnet::new(Ipv4Addr::from(u32::from(pool.base()) + (i << 8)), 24).ok())
                    .find(|c| {
                        !in_use.iter().any(|(_, s)| s.overlaps(c)) && !taken.iter().any(|s| s.overlaps(c))
                    })
                    .ok_or_else(|| Error::Exhausted { network: name.into(), subnet: pool.to_string() })?
            }
        };
        let id = random_id()?;
        let network = Network {
            name: name.into(),
            bridge: format!("bulkhead-{}", &id[..6]),
            id,
            driver: "bridge".into(),
            gateway: subnet.gateway(),
            subnet,
            mtu: 1500,
            created: now(),
        };
        self.write(&network)?;
        Ok(network)
    }

    /// Deletes a user network's record. The caller has checked that no container uses it and
    /// has taken its host state down.
    pub(crate) fn remove_locked(&self, name: &str) -> Result<(), Error> {
        let dir = self.dir.join(name);
        let doomed = self.dir.join(format!(".rm-{name}"));
        std::fs::rename(&dir, &doomed).map_err(Error::io("removing", &dir))?;
        std::fs::remove_dir_all(&doomed).map_err(Error::io("removing", &doomed))
    }

    /// Leases on network `name`: (address, container ID), lowest address first.
    pub fn leases(&self, name: &str) -> Result<Vec<(Ipv4Addr, String)>, Error> {
        let dir = self.leases_dir(name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Io { what: "listing", path: dir, source: e }),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(addr) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let owner = std::fs::read_to_string(entry.path()).unwrap_or_default().trim().to_owned();
            out.push((addr, owner));
        }
        out.sort();
        Ok(out)
    }

    /// Leases an address on network `name` to `container` (the same one again if it already
    /// has one). Leases of containers for which `exists` is false, and that are older than a
    /// grace period, are reclaimed first.
    pub fn allocate(
        &self,
        name: &str,
        container: &str,
        exists: &dyn Fn(&str) -> bool,
    ) -> Result<(Network, Ipv4Addr), Error> {
        let _lock = self.lock()?;
        let network = self.get_locked(name)?;
        let dir = self.leases_dir(name);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let mut used = Vec::new();
        for (addr, owner) in self.leases(name)? {
            if owner == container {
                return Ok((network, addr));
            }
            let path = dir.join(addr.to_string());
            if !exists(&owner) && older_than(&path, LEASE_GRACE) {
                tracing::info!(%addr, owner, network = name, "reclaiming the lease of a vanished container");
                let _ = std::fs::remove_file(&path);
                continue;
            }
            used.push(addr);
        }
        let subnet = network.subnet;
        let addr = (2..subnet.size())
            .filter_map(|n| subnet.host(n))
            .find(|a| *a != network.gateway && !used.contains(a))
            .ok_or_else(|| Error::Exhausted { network: name.into(), subnet: subnet.to_string() })?;
        let path = dir.join(addr.to_string());
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::io("creating the lease", &path))?;
        file.write_all(container.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(Error::io("writing the lease", &path))?;
        Ok((network, addr))
    }

    /// Releases `container`'s lease on network `name`, if it has one.
    pub fn release(&self, name: &str, container: &str) -> Result<(), Error> {
        let _lock = self.lock()?;
        self.release_locked(name, container)
    }

    pub(crate) fn release_locked(&self, name: &str, container: &str) -> Result<(), Error> {
        for (addr, owner) in self.leases(name)? {
            if owner == container {
                let path = self.leases_dir(name).join(addr.to_string());
                std::fs::remove_file(&path).map_err(Error::io("removing the lease", &path))?;
            }
        }
        Ok(())
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("network.json")
    }

    fn leases_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("leases")
    }

    fn write(&self, network: &Network) -> Result<(), Error> {
        let dir = self.dir.join(&network.name);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let path = dir.join("network.json");
        let mut tmp =
            tempfile::NamedTempFile::new_in(&dir).map_err(Error::io("creating a temporary file in", &dir))?;
        // Encoded first: the file gets one write, not one per token.
        let bytes = serde_json::to_vec_pretty(network)
            .map_err(|e| Error::Corrupt { path: path.clone(), reason: e.to_string() })?;
        std::io::Write::write_all(&mut tmp, &bytes).map_err(Error::io("writing", tmp.path()))?;
        tmp.as_file().sync_all().map_err(Error::io("syncing", tmp.path()))?;
        tmp.persist(&path).map_err(|e| Error::Io { what: "writing", path: path.clone(), source: e.error })?;
        Ok(())
    }
}

/// Network names follow container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(Error::Invalid(format!(
            "invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    if RESERVED.contains(&name) {
        return Err(Error::Invalid(format!("network name {name:?} is reserved")));
    }
    Ok(())
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > age)
        .unwrap_or(true)
}

fn random_id() -> Result<String, Error> {
    use std::io::Read;
    let mut bytes = [0u8; 6];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(Error::io("reading", "/dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn now() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    secs.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime_old(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options().write(true).open(path).unwrap().set_modified(old).unwrap();
    }

    #[test]
    fn default_network_appears_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let nets = Networks::new(dir.path());
        let net = nets.get("bridge").unwrap();
        assert_eq!(net.bridge, DEFAULT_BRIDGE);
        assert_eq!(net.subnet.to_string(), DEFAULT_SUBNET);
        assert_eq!(nets.get("bridge").unwrap(), net, "stable once written");
        assert!(matches!(nets.get("nope"), Err(Error::NotFound(_))));
    }

    #[test]
    fn allocation_is_unique_reused_after_release_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let nets = Networks::new(dir.path());
        let live = |_: &str| true;
        let (_, a) = nets.allocate("bridge", "aaa", &live).unwrap();
        let (_, b) = nets.allocate("bridge", "bbb", &live).unwrap();
        assert_eq!(a, Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(b, Ipv4Addr::new(172, 30, 0, 3));
        assert_eq!(nets.allocate("bridge", "aaa", &live).unwrap().1, a, "same container, same lease");
        nets.release("bridge", "aaa").unwrap();
        assert_eq!(nets.allocate("bridge", "ccc", &live).unwrap().1, a, "a released address is reused");
        assert_eq!(nets.leases("bridge").unwrap(), vec![(a, "ccc".into()), (b, "bbb".into())]);
    }

    #[test]
    fn leases_of_vanished_containers_are_reclaimed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let nets = Networks::new(dir.path());
        let net = nets.create("small", Some("10.77.0.0/30".parse().unwrap()), &[]).unwrap();
        let (_, a) = nets.allocate("small", "gone", &|_| true).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 77, 0, 2));
        let only_alive = |id: &str| id != "gone";
        let err = nets.allocate("small", "new", &only_alive).unwrap_err();
        assert!(matches!(err, Error::Exhausted { .. }), "a fresh lease is kept: {err}");
        set_mtime_old(&nets.leases_dir("small").join(a.to_string()));
        assert_eq!(nets.allocate("small", "new", &only_alive).unwrap().1, a);
        assert_eq!(net.gateway, Ipv4Addr::new(10, 77, 0, 1));
    }

    #[test]
    fn user_networks_get_free_subnets_and_unique_names() {
        let dir = tempfile::tempdir().unwrap();
        let nets = Networks::new(dir.path());
        let host_route: Subnet = "172.31.0.0/24".parse().unwrap();
        let a = nets.create("a", None, &[host_route]).unwrap();
        let b = nets.create("b", None, &[host_route]).unwrap();
        assert_eq!(a.subnet.to_string(), "172.31.1.0/24", "skips the host's route");
        assert_eq!(b.subnet.to_string(), "172.31.2.0/24");
        assert_ne!(a.bridge, b.bridge);
        assert!(a.bridge.len() <= crate::link::MAX_IFNAME);
        assert!(matches!(nets.create("a", None, &[]), Err(Error::Conflict(_))));
        let err = nets.create("c", Some("172.31.2.128/25".parse().unwrap()), &[]).unwrap_err().to_string();
        assert!(err.contains("overlaps 172.31.2.0/24 of network b"), "{err}");
        assert!(nets.create("none", None, &[]).is_err());
        assert!(nets.create("../x", None, &[]).is_err());
        let names: Vec<String> = nets.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["bridge", "a", "b"]);
    }
}
