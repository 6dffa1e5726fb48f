//! The container: its root filesystem and its processes (`Start`, `Signal`, `Resize`).
//!
//! The first `Start` that gets as far as forking is the main process: PID 1 of the container's
//! pid namespace, in new mount, UTS and IPC namespaces. Later `Start`s are execs that join those
//! namespaces. When the main process exits the kernel kills the rest of its pid namespace; the
//! guest keeps serving until the host says `Shutdown`.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

use bulkhead_proto::{ContainerSpec, ExitStatus, Message, ProcessSpec, Rlimit, WindowSize};

use crate::lookup::{self, StartFailure};
use crate::port::{Port, Windows};
use crate::rootfs::{self, Rootfs};
use crate::spawn::{Namespaces, Plan, SpawnError, Spawned, Spawner, Step};
use crate::stdio::{self, Streams};
use crate::users;
use crate::workers;

/// `PATH` for processes whose environment has none (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A set-up container.
pub struct Container {
    rootfs: Rootfs,
    spawner: Spawner,
    main: Main,
    processes: Arc<Mutex<HashMap<u32, Entry>>>,
}

enum Main {
    NotStarted,
    Started {
        /// The main process's mount, UTS and IPC namespaces, for execs to join.
        namespaces: [OwnedFd; 3],
        /// `/proc/<pid>/ns/pid` of the container, to tell its processes from the guest's.
        pid_namespace: PathBuf,
        exited: Arc<AtomicBool>,
    },
    /// The main process was forked but failed before exec, taking the pid namespace with it.
    Failed,
}

/// A process the host started.
struct Entry {
    pid: i32,
    running: bool,
    master: Option<Arc<OwnedFd>>,
}

/// A started process whose streams and exit are not yet being served. Call [`Launch::run`]
/// after the `Started` reply is on its way, so `Exited` can never overtake it.
pub struct Launch {
    id: u32,
    exit: Receiver<ExitStatus>,
    input: Option<(u32, OwnedFd)>,
    outputs: Vec<(u32, OwnedFd)>,
    main_exited: Option<Arc<AtomicBool>>,
    processes: Arc<Mutex<HashMap<u32, Entry>>>,
}

impl Container {
    /// Configures the network and mounts the root filesystem; `spawner` forks the processes. On
    /// failure the spawner comes back with the error, for another try.
    pub fn setup(spec: &ContainerSpec, spawner: Spawner) -> Result<Container, (String, Spawner)> {
        if let Err(e) = crate::net::configure(spec.network.as_ref()) {
            return Err((e.to_string(), spawner));
        }
        let rootfs = match rootfs::setup(spec) {
            Ok(rootfs) => rootfs,
            Err(e) => return Err((e.to_string(), spawner)),
        };
        Ok(Container { rootfs, spawner, main: Main::NotStarted, processes: Arc::default() })
    }

    pub fn rootfs(&self) -> &Rootfs {
        &self.rootfs
    }

    /// The container's pid namespace, once its main process started.
    pub fn pid_namespace(&self) -> Option<&PathBuf> {
        match &self.main {
            Main::Started { pid_namespace, .. } => Some(pid_namespace),
            Main::NotStarted | Main::Failed => None,
        }
    }

    /// Starts process `id`; on success returns its pid and what [`Launch::run`] serves.
    pub fn start(&mut self, id: u32, spec: &ProcessSpec) -> Result<(i32, Launch), StartFailure> {
        if let Some(entry) = lock(&self.processes).get(&id) {
            if entry.running {
                return Err(StartFailure::other(format!("process id {id} is already in use")));
            }
        }
        match &self.main {
            Main::Started { exited, .. } if exited.load(Ordering::SeqCst) => {
                return Err(StartFailure::other("the container's main process has exited"));
            }
            Main::Failed => return Err(StartFailure::other("the container's main process failed to start")),
            _ => {}
        }
        let Some(name) = spec.args.first() else {
            return Err(StartFailure::other("no command given: args is empty"));
        };

        let passwd = self.rootfs.read("/etc/passwd").unwrap_or_default();
        let group = self.rootfs.read("/etc/group").unwrap_or_default();
        let user =
            users::resolve(&spec.user, &passwd, &group).map_err(|e| StartFailure::other(e.to_string()))?;
        let env = environment(spec, &user.home, self.rootfs.hostname());
        let path_env = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
        let cwd = if spec.cwd.is_empty() { "/".to_owned() } else { lookup::absolute("/", &spec.cwd) };
        let program = lookup::find_program(&self.rootfs, name, path_env, &cwd)?;

        let rlimits = spec.rlimits.iter().map(rlimit).collect::<Result<Vec<_>, _>>()?;
        let streams = stdio::create(&self.rootfs, id, spec)
            .map_err(|e| StartFailure::other(format!("creating the standard streams: {e}")))?;
        let Streams { child, input, outputs, master } = streams;
        if spec.tty.is_some() {
            // The process owns its terminal, as it would after a login.
            nix::unistd::fchown(child[0].as_raw_fd(), Some(user.uid.into()), None)
                .map_err(|e| StartFailure::other(format!("giving the terminal to uid {}: {e}", user.uid)))?;
        }
        let [stdin, stdout, stderr] = child;

        let is_main = matches!(self.main, Main::NotStarted);
        let namespaces = match &self.main {
            Main::NotStarted | Main::Failed => {
                let root = self.rootfs.path();
                Namespaces::Create {
                    rootfs: cstring("root path", root.display().to_string())?,
                    proc_dir: cstring("root path", root.join("proc").display().to_string())?,
                    hostname: cstring("hostname", self.rootfs.hostname())?,
                }
            }
            Main::Started { namespaces: [mnt, uts, ipc], .. } => {
                let dup = |fd: &OwnedFd| {
                    fd.try_clone().map_err(|e| StartFailure::other(format!("duplicating a namespace: {e}")))
                };
                Namespaces::Join { mnt: dup(mnt)?, uts: dup(uts)?, ipc: dup(ipc)? }
            }
        };
        let plan = Plan {
            namespaces,
            stdin,
            stdout,
            stderr,
            tty: spec.tty.is_some(),
            rlimits,
            mkdirs: parents(&cwd)
                .into_iter()
                .map(|d| cstring("working directory", d))
                .collect::<Result<_, _>>()?,
            uid: user.uid,
            gid: user.gid,
            groups: user.groups,
            cwd: cstring("working directory", cwd.as_str())?,
            program: cstring("program path", program.as_str())?,
            argv: spec.args.iter().map(|a| cstring("argument", a.as_str())).collect::<Result<_, _>>()?,
            envp: env.into_iter().map(|e| cstring("environment entry", e)).collect::<Result<_, _>>()?,
        };

        let spawned = self.spawner.spawn(plan);
        if is_main && matches!(spawned, Err(SpawnError::Child { .. })) {
            self.main = Main::Failed;
        }
        let Spawned { pid, exit } = match spawned {
            Ok(spawned) => spawned,
            Err(SpawnError::Child { step: Step::Exec, errno }) => {
                return Err(StartFailure::from_exec_errno(errno, format!("exec {program:?}: {errno}")));
            }
            Err(SpawnError::Parent(what, nix::errno::Errno::ENOMEM)) if what == "clone" && !is_main => {
                return Err(StartFailure::other("the container's main process has exited"));
            }
            Err(e) => return Err(StartFailure::other(e.to_string())),
        };

        let main_exited = if is_main {
            let exited = Arc::new(AtomicBool::new(false));
            let ns = |kind: &str| File::open(format!("/proc/{pid}/ns/{kind}")).map(OwnedFd::from);
            match (ns("mnt"), ns("uts"), ns("ipc"), std::fs::read_link(format!("/proc/{pid}/ns/pid"))) {
                (Ok(mnt), Ok(uts), Ok(ipc), Ok(pid_namespace)) => {
                    self.main = Main::Started {
                        namespaces: [mnt, uts, ipc],
                        pid_namespace,
                        exited: Arc::clone(&exited),
                    };
                }
                // The main process exited already; its namespaces went with it.
                _ => exited.store(true, Ordering::SeqCst),
            }
            Some(exited)
        } else {
            None
        };
        lock(&self.processes).insert(id, Entry { pid, running: true, master });
        let launch = Launch { id, exit, input, outputs, main_exited, processes: Arc::clone(&self.processes) };
        Ok((pid, launch))
    }

    /// Delivers `signal` to process `id`; unknown or finished processes are ignored.
    pub fn signal(&self, id: u32, signal: i32) {
        let processes = lock(&self.processes);
        let Some(entry) = processes.get(&id).filter(|e| e.running) else {
            return;
        };
        if (1..65).contains(&signal) {
            // SAFETY: kill has no memory effects; the pid is a child we have not yet reaped
            // (entries stop running before the reaper can hand the pid out again).
            unsafe { libc::kill(entry.pid, signal) };
        }
    }

    /// Resizes process `id`'s terminal, if it has one.
    pub fn resize(&self, id: u32, size: WindowSize) {
        if let Some(master) = lock(&self.processes).get(&id).and_then(|e| e.master.clone()) {
            if let Err(e) = stdio::resize(&master, size) {
                eprintln!("bulkhead-guest: resizing the terminal of process {id}: {e}");
            }
        }
    }
}

impl Launch {
    /// Serves the process: its stdin (registered in `inputs`), its output streams, and its
    /// exit, reported once the output streams have ended.
    pub fn run(self, port: &Arc<Port>, windows: &Arc<Windows>, inputs: &mut HashMap<u32, Sender<Vec<u8>>>) {
        let Launch { id, exit, input, outputs, main_exited, processes } = self;
        if let Some((stream, sink)) = input {
            let (tx, rx) = mpsc::channel();
            inputs.insert(stream, tx);
            let port = Arc::clone(port);
            workers::run("stdin", move || stdio::feed(sink, stream, rx, &port));
        }
        let pumps: Vec<_> = outputs
            .into_iter()
            .map(|(stream, source)| {
                let (port, windows) = (Arc::clone(port), Arc::clone(windows));
                workers::run("output", move || stdio::pump(source, stream, &port, &windows))
            })
            .collect();
        let port = Arc::clone(port);
        workers::run("process", move || {
            // The reaper never drops a registered waiter without a status.
            let status = exit.recv().unwrap_or(ExitStatus::Code(255));
            if let Some(entry) = lock(&processes).get_mut(&id) {
                entry.running = false;
                entry.master = None;
            }
            if let Some(exited) = main_exited {
                exited.store(true, Ordering::SeqCst);
            }
            for pump in pumps {
                pump.join();
            }
            port.message_or_log(Message::Exited { id, status });
        });
    }
}

/// The process's environment: the spec's, plus Docker's defaults for what it lacks.
fn environment(spec: &ProcessSpec, home: &str, hostname: &str) -> Vec<String> {
    let mut env = spec.env.clone();
    let has = |env: &[String], key: &str| env.iter().any(|e| e.split('=').next() == Some(key));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    if spec.tty.is_some() && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    env
}

/// `/a`, `/a/b`, `/a/b/c` for `/a/b/c`.
fn parents(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        current.push('/');
        current.push_str(part);
        out.push(current.clone());
    }
    out
}

fn cstring(what: &str, value: impl Into<Vec<u8>>) -> Result<CString, StartFailure> {
    CString::new(value).map_err(|_| StartFailure::other(format!("{what} contains a NUL byte")))
}

fn rlimit(limit: &Rlimit) -> Result<(libc::__rlimit_resource_t, libc::rlimit), StartFailure> {
    let resource = match limit.resource.to_ascii_lowercase().trim_start_matches("rlimit_") {
        "as" => libc::RLIMIT_AS,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return Err(StartFailure::other(format!("unknown rlimit {:?}", limit.resource))),
    };
    if limit.soft > limit.hard {
        return Err(StartFailure::other(format!(
            "rlimit {}: soft limit {} exceeds hard limit {}",
            limit.resource, limit.soft, limit.hard
        )));
    }
    Ok((resource, libc::rlimit { rlim_cur: limit.soft, rlim_max: limit.hard }))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the table consistent even if it panicked.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_gets_docker_defaults_only_where_missing() {
        let spec = ProcessSpec { env: vec!["PATH=/x".into(), "A=b=c".into()], ..Default::default() };
        assert_eq!(environment(&spec, "/root", "box"), ["PATH=/x", "A=b=c", "HOSTNAME=box", "HOME=/root"]);
        let spec = ProcessSpec {
            env: vec!["HOME=/h".into()],
            tty: Some(WindowSize { rows: 1, cols: 1 }),
            ..Default::default()
        };
        assert_eq!(
            environment(&spec, "/root", "box"),
            ["HOME=/h", &format!("PATH={DEFAULT_PATH}"), "HOSTNAME=box", "TERM=xterm"]
        );
    }

    #[test]
    fn parents_lists_every_prefix() {
        assert_eq!(parents("/a/b/c"), ["/a", "/a/b", "/a/b/c"]);
        assert!(parents("/").is_empty());
    }

    #[test]
    fn rlimits_are_named_as_in_setrlimit() {
        let limit = |resource: &str, soft, hard| Rlimit { resource: resource.into(), soft, hard };
        assert_eq!(rlimit(&limit("nofile", 10, 20)).unwrap().0, libc::RLIMIT_NOFILE);
        assert_eq!(rlimit(&limit("RLIMIT_CORE", 0, 0)).unwrap().0, libc::RLIMIT_CORE);
        assert!(rlimit(&limit("bogus", 0, 0)).is_err());
        assert!(rlimit(&limit("nofile", 30, 20)).is_err());
    }
}
