//! A running QEMU process and its control channels.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::console::{clean_last_line, find_panic, read_tail, read_tail_of};
use crate::qmp::Qmp;
use crate::{check_kernel, find_qemu, qemu, Error, VmConfig};

/// How long QEMU may take to open its sockets after it starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long loading or saving a VM's state may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long QEMU may take to act on `quit` before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(2);

/// Host-side timings of a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartTimes {
    /// From spawning QEMU until its monitor answered: the VM process is up.
    pub process_start: Duration,
    /// For a restored VM: from spawning QEMU until the saved state was loaded and running.
    pub restore: Option<Duration>,
}

/// One running VM. Dropping it kills QEMU (if still running) and removes its sockets.
pub struct Vm {
    process: Process,
    qmp: Qmp,
    agent: UnixStream,
    times: StartTimes,
    /// The RAM is in a file (see [`crate::MemoryFile`]): saving and restoring leave it out.
    ram_in_file: bool,
}

impl Vm {
    /// Starts QEMU for `config` and connects QMP and the agent channel.
    ///
    /// QEMU is killed when the calling *thread* exits (`PR_SET_PDEATHSIG`), so call this from a
    /// thread that lives as long as the VM, normally the main thread.
    pub fn start(config: &VmConfig) -> Result<Vm, Error> {
        config.validate()?;
        check_kernel(&config.kernel)?;
        let qemu_path = match &config.qemu {
            Some(path) => path.clone(),
            None => find_qemu()?,
        };
        let qmp_path = config.run_dir.join("qmp.sock");
        let agent_path = config.run_dir.join("agent.sock");
        let qemu_log = config.run_dir.join("qemu.log");
        let remove_files = || {
            for path in [&qmp_path, &agent_path, &qemu_log] {
                let _ = std::fs::remove_file(path);
            }
        };
        let listeners = listen(&qmp_path).and_then(|qmp| Ok((qmp, listen(&agent_path)?)));
        let (qmp_listener, agent_listener) = listeners.inspect_err(|_| remove_files())?;
        let qemu_log_file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&qemu_log)
            .map_err(Error::io("creating", &qemu_log))
            .and_then(|log| {
                File::create(&config.console_log).map_err(Error::io("creating", &config.console_log))?;
                Ok(log)
            })
            .inspect_err(|_| remove_files())?;
        let stderr = qemu_log_file
            .try_clone()
            .map_err(Error::io("duplicating", &qemu_log))
            .inspect_err(|_| remove_files())?;

        let mut command = Command::new(&qemu_path);
        command
            .args(qemu::args(config, &qmp_path, &agent_path))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Out of the caller's process group: a Ctrl-C on the terminal reaches the caller,
            // which tears the VM down in order, instead of killing QEMU under it.
            .process_group(0);
        let incoming = match &config.incoming {
            Some(path) => Some(
                File::open(path)
                    .map_err(Error::io("opening saved state", path))
                    .inspect_err(|_| remove_files())?,
            ),
            None => None,
        };
        let incoming_fd = incoming.as_ref().map(AsRawFd::as_raw_fd);
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe calls prctl(2), getppid(2) and dup2(2); it allocates nothing and takes
        // no lock. `incoming_fd` stays open in the parent (`incoming`) until after the spawn.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl; then nobody would kill us.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::other("parent exited before QEMU started"));
                }
                // The saved state goes to the number `-incoming fd:N` names; dup2 also clears
                // close-on-exec on the copy.
                if let Some(fd) = incoming_fd {
                    if libc::dup2(fd, qemu::INCOMING_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let spawned_at = Instant::now();
        tracing::debug!(qemu = %qemu_path.display(), "starting VM");
        let child = command
            .spawn()
            .map_err(|source| Error::Spawn { path: qemu_path.clone(), source })
            .inspect_err(|_| remove_files())?;
        // From here on, dropping `process` kills QEMU and removes the files.
        let mut process = Process {
            child,
            exit: None,
            files: vec![qmp_path.clone(), agent_path.clone(), qemu_log],
            qemu_log: qemu_log_file,
            console_log: config.console_log.clone(),
            spawned_at,
        };
        let qmp_stream = process.accept(&qmp_listener, &qmp_path, "connecting to QMP")?;
        let agent = process.accept(&agent_listener, &agent_path, "connecting the agent channel")?;
        // The paths only served the rendezvous; gone now, nothing is left behind even if this
        // process is killed outright. QEMU's log stays readable through our open handle.
        for path in process.files.drain(..) {
            let _ = std::fs::remove_file(path);
        }
        // QEMU opens its sockets before it builds its devices; a bad device kills it right after.
        let qmp = match Qmp::handshake(qmp_stream, CONNECT_TIMEOUT) {
            Ok(qmp) => qmp,
            Err(e) => {
                return Err(match process.wait_timeout(Duration::from_secs(1))? {
                    Some(status) => process.exited_error(status, "answering QMP"),
                    None => e,
                })
            }
        };
        drop(incoming);
        let mut times = StartTimes { process_start: spawned_at.elapsed(), restore: None };
        let ram_in_file = config.memory_file.is_some();
        let mut vm = Vm { process, qmp, agent, times, ram_in_file };
        if config.incoming.is_some() {
            if ram_in_file {
                vm.ignore_shared_ram()?;
                let uri = serde_json::json!({ "uri": crate::qemu::INCOMING_FD_ARG });
                vm.qmp.execute("migrate-incoming", Some(uri))?;
            }
            vm.finish_restore()?;
            times = vm.times;
            times.restore = Some(spawned_at.elapsed());
            vm.times = times;
        }
        Ok(vm)
    }

    /// Leaves RAM that lives in a shared file out of saved state, and expects it so on restore
    /// (QEMU's `x-ignore-shared`).
    fn ignore_shared_ram(&mut self) -> Result<(), Error> {
        let capabilities = serde_json::json!({
            "capabilities": [{ "capability": "x-ignore-shared", "state": true }]
        });
        self.qmp.execute("migrate-set-capabilities", Some(capabilities)).map(drop)
    }

    /// Waits for the incoming state to load, then lets the restored VM run.
    fn finish_restore(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        loop {
            let status = match self.status() {
                Ok(status) => status,
                Err(e) => {
                    return Err(match self.process.wait_timeout(Duration::from_secs(1))? {
                        Some(status) => self.process.exited_error(status, "restoring the saved state"),
                        None => e,
                    })
                }
            };
            match status.as_str() {
                "inmigrate" => {}
                "paused" | "postmigrate" | "prelaunch" => {
                    self.qmp.execute("cont", None)?;
                    return Ok(());
                }
                "running" => return Ok(()),
                other => return Err(Error::Qmp(format!("restored VM is in state {other:?}"))),
            }
            if let Some(status) = self.try_wait()? {
                return Err(self.process.exited_error(status, "restoring the saved state"));
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    stage: "restore the saved state",
                    seconds: RESTORE_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Saves the VM's complete state to `path` (written to a temporary file, synced, renamed)
    /// and leaves the VM paused. A VM started with `incoming` set to that file resumes from it.
    pub fn save(&mut self, path: &Path, scratch_dir: &Path) -> Result<u64, Error> {
        use std::io::Write;
        self.qmp.execute("stop", None)?;
        if self.ram_in_file {
            self.ignore_shared_ram()?;
        }
        let socket = scratch_dir.join("migrate.sock");
        let listener = listen(&socket)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(Error::io("creating a temporary file in", dir))?;
        let uri = format!("unix:{}", socket.display());
        let started = self.qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })));
        let copied = started.and_then(|_| {
            let mut stream = self.process.accept(&listener, &socket, "sending its state")?;
            let _ = std::fs::remove_file(&socket);
            std::io::copy(&mut stream, tmp.as_file_mut()).map_err(Error::io("saving state to", tmp.path()))
        });
        let _ = std::fs::remove_file(&socket);
        let bytes = copied?;
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        loop {
            let info = self.qmp.execute("query-migrate", None)?;
            match info.get("status").and_then(serde_json::Value::as_str) {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => {
                    let why = info
                        .get("error-desc")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(Error::Qmp(format!("saving the VM state failed: {why}")));
                }
                _ if Instant::now() > deadline => {
                    return Err(Error::Timeout {
                        stage: "finish saving its state",
                        seconds: RESTORE_TIMEOUT.as_secs(),
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        tmp.as_file_mut().flush().map_err(Error::io("saving state to", tmp.path()))?;
        tmp.as_file().sync_all().map_err(Error::io("syncing", tmp.path()))?;
        tmp.persist(path).map_err(|e| Error::Io {
            what: "installing saved state",
            path: path.to_owned(),
            source: e.error,
        })?;
        Ok(bytes)
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The host end of the agent channel.
    pub fn agent(&self) -> &UnixStream {
        &self.agent
    }

    pub fn times(&self) -> StartTimes {
        self.times
    }

    /// When QEMU was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.process.spawned_at
    }

    pub fn console_log(&self) -> &Path {
        &self.process.console_log
    }

    /// QEMU's run state (`running`, `paused`, `shutdown`, …).
    pub fn status(&mut self) -> Result<String, Error> {
        let value = self.qmp.execute("query-status", None)?;
        value
            .get("status")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::Qmp(format!("query-status returned {value}")))
    }

    /// QEMU's exit status if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        self.process.try_wait()
    }

    /// Waits up to `timeout` for QEMU to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, Error> {
        self.process.wait_timeout(timeout)
    }

    /// Stops the VM now: QMP `quit`, then SIGKILL if QEMU lingers. The guest gets no say.
    pub fn hard_stop(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // QEMU may close the connection before answering `quit`; either way it is on its way out.
        let _ = self.qmp.execute("quit", None);
        if let Some(status) = self.wait_timeout(QUIT_GRACE)? {
            return Ok(status);
        }
        self.process.kill()
    }

    /// Kills QEMU at once (SIGKILL): for a VM whose disks are thrown away with it, since QEMU
    /// gets no chance to write out what it still holds.
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        self.process.kill()
    }

    /// The best explanation for a guest that stopped answering during `stage`: a kernel panic
    /// from the console, QEMU's own error, or QEMU's exit status. Kills QEMU if it still runs.
    pub fn failure(&mut self, stage: &'static str) -> Error {
        // A dying guest triple-faults into a QEMU exit within moments; give it those.
        let status = match self.wait_timeout(Duration::from_secs(1)) {
            Ok(Some(status)) => status,
            _ => match self.process.kill() {
                Ok(status) => status,
                Err(e) => return e,
            },
        };
        self.process.exited_error(status, stage)
    }
}

/// The QEMU process and the files it owns; dropping it kills QEMU and removes them.
struct Process {
    child: Child,
    exit: Option<ExitStatus>,
    /// Sockets and QEMU's log until QEMU has connected, removed then or on drop. The console log
    /// is the caller's to keep.
    files: Vec<PathBuf>,
    /// QEMU's stderr, read for error messages after its path is gone.
    qemu_log: File,
    console_log: PathBuf,
    spawned_at: Instant,
}

impl Process {
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().map_err(|e| Error::Qmp(format!("waiting for QEMU: {e}")))?;
        }
        Ok(self.exit)
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn kill(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pids fit in i32"));
        let _ = kill(pid, Signal::SIGKILL);
        let status = self.child.wait().map_err(|e| Error::Qmp(format!("reaping QEMU: {e}")))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Waits for QEMU to connect to `listener`, failing early if QEMU exits.
    fn accept(
        &mut self,
        listener: &UnixListener,
        path: &Path,
        stage: &'static str,
    ) -> Result<UnixStream, Error> {
        listener.set_nonblocking(true).map_err(Error::io("configuring", path))?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(Error::io("configuring", path))?;
                    return Ok(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::Io { what: "accepting on", path: path.to_owned(), source: e }),
            }
            if let Some(status) = self.try_wait()? {
                return Err(self.exited_error(status, stage));
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout { stage, seconds: CONNECT_TIMEOUT.as_secs() });
            }
            // Wakes as soon as QEMU connects; the timeout only bounds how late an exit is seen.
            let mut fds = [libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: `fds` is a live array of one initialised pollfd for the call's duration.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 5) };
        }
    }

    fn exited_error(&self, status: ExitStatus, stage: &'static str) -> Error {
        if let Some(line) = find_panic(&self.console_log) {
            return Error::GuestPanic(line);
        }
        let qemu_said =
            read_tail_of(&self.qemu_log, 4096).map(|bytes| clean_last_line(&bytes)).unwrap_or_default();
        let detail = if !qemu_said.is_empty() {
            format!(": {qemu_said}")
        } else {
            let console =
                read_tail(&self.console_log, 1024).map(|bytes| clean_last_line(&bytes)).unwrap_or_default();
            if console.is_empty() {
                String::new()
            } else {
                format!("; last console line: {console}")
            }
        };
        Error::QemuExited { status: status.to_string(), stage, detail }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
        for path in &self.files {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds a fresh listener at `path`, replacing a stale socket left by a crash.
fn listen(path: &Path) -> Result<UnixListener, Error> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io { what: "removing stale socket", path: path.to_owned(), source: e }),
    }
    UnixListener::bind(path).map_err(Error::io("listening on", path))
}
