//! Container records under `<root>/containers/<id>/`: `config.json`, `state.json`, `lock`, the
//! log, the writable disk, the console log. Runtime files live in `<run_root>/<id>/`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ids::{short, valid_name};
use super::record::{ContainerConfig, ContainerState, Status};
use crate::{Error, Paths};

/// A container as stored.
#[derive(Debug, Clone)]
pub struct Container {
    pub config: ContainerConfig,
    pub state: ContainerState,
}

/// Exclusive ownership of one container's record; released on drop.
pub struct ContainerLock {
    _lock: Flock<File>,
}

#[derive(Debug, Clone)]
pub struct Containers {
    dir: PathBuf,
    run_root: PathBuf,
}

impl Containers {
    pub fn new(paths: &Paths) -> Containers {
        Containers { dir: paths.root.join("containers"), run_root: paths.run_root.clone() }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Sockets and other per-boot files of a running container.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.run_root.join(id)
    }

    pub fn monitor_socket(&self, id: &str) -> PathBuf {
        self.run_dir(id).join("monitor.sock")
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("log.json")
    }

    /// Records a new container. Fails if the name is taken; nothing is left behind on failure.
    /// `prepare` adds files to the new container's directory before it becomes visible.
    pub fn create(
        &self,
        config: &ContainerConfig,
        prepare: &dyn Fn(&Path) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if !valid_name(&config.name) {
            return Err(Error::Invalid(format!(
                "invalid container name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                config.name
            )));
        }
        std::fs::create_dir_all(&self.dir).map_err(Error::io("creating", &self.dir))?;
        let _all = lock_file(&self.dir.join(".lock"))?;
        for id in self.ids()? {
            if let Ok(other) = read_json::<ContainerConfig>(&self.dir(&id).join("config.json")) {
                if other.name == config.name {
                    return Err(Error::Conflict(format!(
                        "the container name {:?} is already in use by container {}; remove or rename that container",
                        config.name,
                        short(&id)
                    )));
                }
            }
        }
        let dir = self.dir(&config.id);
        let staging = self.dir.join(format!(".new-{}", config.id));
        std::fs::create_dir(&staging).map_err(Error::io("creating", &staging))?;
        let result = write_json(&staging.join("config.json"), config)
            .and_then(|()| write_json(&staging.join("state.json"), &ContainerState::default()))
            .and_then(|()| prepare(&staging))
            .and_then(|()| std::fs::rename(&staging, &dir).map_err(Error::io("creating", &dir)));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    /// All container IDs.
    pub fn ids(&self) -> Result<Vec<String>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Io { what: "listing", path: self.dir.clone(), source: e }),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The ID of the container called `name_or_id`: an exact name, a full ID, or a unique prefix.
    pub fn resolve(&self, name_or_id: &str) -> Result<String, Error> {
        let ids = self.ids()?;
        if ids.iter().any(|id| id == name_or_id) {
            return Ok(name_or_id.to_owned());
        }
        for id in &ids {
            if let Ok(config) = read_json::<ContainerConfig>(&self.dir(id).join("config.json")) {
                if config.name == name_or_id {
                    return Ok(id.clone());
                }
            }
        }
        let matches: Vec<&String> = if name_or_id.is_empty() {
            Vec::new()
        } else {
            ids.iter().filter(|id| id.starts_with(name_or_id)).collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NotFound(format!("no such container: {name_or_id}"))),
            _ => Err(Error::Invalid(format!(
                "container ID prefix {name_or_id:?} is ambiguous ({} matches)",
                matches.len()
            ))),
        }
    }

    /// Loads a container, correcting a stale "running" whose monitor is gone.
    pub fn load(&self, id: &str) -> Result<Container, Error> {
        let dir = self.dir(id);
        let config: ContainerConfig = read_json(&dir.join("config.json"))?;
        let mut state: ContainerState = read_json(&dir.join("state.json"))?;
        if matches!(state.status, Status::Running | Status::Restarting) && !self.monitor_alive(id, &state) {
            let pid = state.monitor_pid.unwrap_or(0);
            state.status = Status::Exited;
            state.exit_code = Some(state.exit_code.unwrap_or(137));
            state.error = Some(format!("the container's monitor (pid {pid}) died; its VM went with it"));
            state.finished_at.get_or_insert_with(super::logs::now_rfc3339);
            state.monitor_pid = None;
            state.vm_pid = None;
            // Persist the truth if nobody else owns the record right now.
            if let Ok(_lock) = self.try_lock(id) {
                let _ = self.save_state(id, &state);
                let _ = std::fs::remove_dir_all(self.run_dir(id));
            }
        }
        Ok(Container { config, state })
    }

    pub fn save_state(&self, id: &str, state: &ContainerState) -> Result<(), Error> {
        write_json(&self.dir(id).join("state.json"), state)
    }

    /// Whether the container's monitor process is alive (and really is its monitor, not a
    /// recycled pid).
    pub fn monitor_alive(&self, id: &str, state: &ContainerState) -> bool {
        let Some(pid) = state.monitor_pid else { return false };
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|cmdline| {
                let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                args.contains(&b"monitor".as_slice()) && args.contains(&id.as_bytes())
            })
            .unwrap_or(false)
    }

    /// Waits for, then holds, the container's lock.
    pub fn lock(&self, id: &str) -> Result<ContainerLock, Error> {
        Ok(ContainerLock { _lock: lock_file(&self.dir(id).join("lock"))? })
    }

    fn try_lock(&self, id: &str) -> Result<ContainerLock, Error> {
        let path = self.dir(id).join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("opening", &path))?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map(|lock| ContainerLock { _lock: lock })
            .map_err(|(_, e)| Error::Conflict(format!("container {} is busy: {e}", short(id))))
    }

    /// Deletes the container's record and files. The caller holds its lock and has stopped it.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let dir = self.dir(id);
        // Rename first so a half-deleted directory is never taken for a container.
        let doomed = self.dir.join(format!(".rm-{id}"));
        std::fs::rename(&dir, &doomed).map_err(Error::io("removing", &dir))?;
        let _ = std::fs::remove_dir_all(self.run_dir(id));
        std::fs::remove_dir_all(&doomed).map_err(Error::io("removing", &doomed))
    }
}

/// An exclusive `flock` on `path` (created if missing), held until the value drops.
pub(crate) fn lock_file(path: &Path) -> Result<Flock<File>, Error> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io("opening", path))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
        what: "locking",
        path: path.to_owned(),
        source: e.into(),
    })
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let bytes = std::fs::read(path).map_err(Error::io("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))
}

/// Writes `value` as JSON: temp file, fsync, rename, so a reader sees the old or the new file.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(Error::io("creating a temporary file in", dir))?;
    // Encoded first: the file gets one write, not one per token.
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Corrupt(format!("encoding {}: {e}", path.display())))?;
    bytes.push(b'\n');
    tmp.write_all(&bytes).map_err(Error::io("writing", tmp.path()))?;
    tmp.as_file().sync_all().map_err(Error::io("syncing", tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::Io { what: "replacing", path: path.to_owned(), source: e.error })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::RestartPolicy;

    fn config(id: &str, name: &str) -> ContainerConfig {
        ContainerConfig {
            id: id.into(),
            name: name.into(),
            created: String::new(),
            image: "busybox".into(),
            image_digest: String::new(),
            root_disk: PathBuf::new(),
            kernel: String::new(),
            kernel_digest: String::new(),
            kernel_path: PathBuf::new(),
            accel: "auto".into(),
            process: Default::default(),
            hostname: "h".into(),
            memory_mib: 256,
            vcpus: 1,
            read_only: false,
            tmpfs: Vec::new(),
            restart: RestartPolicy::No,
            auto_remove: false,
            no_template: false,
            network: Default::default(),
        }
    }

    #[test]
    fn names_ids_prefixes_and_damaged_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Containers::new(&Paths::new(dir.path().join("root"), dir.path().join("run")));
        let (a, b) = ("a1".to_owned() + &"0".repeat(62), "a2".to_owned() + &"0".repeat(62));
        store.create(&config(&a, "web"), &|_| Ok(())).unwrap();
        store.create(&config(&b, "db"), &|_| Ok(())).unwrap();
        let clash = store.create(&config(&("b".repeat(64)), "web"), &|_| Ok(())).unwrap_err();
        assert!(clash.to_string().contains("already in use"), "{clash}");
        let bad = store.create(&config(&("c".repeat(64)), "no/slash"), &|_| Ok(())).unwrap_err();
        assert!(bad.to_string().contains("invalid container name"), "{bad}");
        // A failed prepare step leaves nothing behind.
        let failing = store.create(&config(&("d".repeat(64)), "x"), &|_| Err(Error::Invalid("disk".into())));
        assert!(failing.is_err() && store.ids().unwrap().len() == 2);

        assert_eq!(store.resolve("web").unwrap(), a);
        assert_eq!(store.resolve("a2").unwrap(), b);
        assert_eq!(store.resolve(&b).unwrap(), b);
        assert!(store.resolve("a").unwrap_err().to_string().contains("ambiguous"));
        assert!(store.resolve("nope").unwrap_err().to_string().contains("no such container: nope"));

        std::fs::write(store.dir(&a).join("state.json"), b"{not json").unwrap();
        let err = store.load(&a).unwrap_err().to_string();
        assert!(err.starts_with("damaged record") && err.contains("state.json"), "{err}");
    }
}
