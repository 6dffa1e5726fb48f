//! A sandbox: one VM running our init, with a live agent session.
//!
//! This is the layer containers are built on: boot the VM, shake hands with the agent (which
//! reports its boot timestamps), then exchange requests until a graceful shutdown or a hard stop.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulkhead_proto::{check_version, FrameReader, Message, PROTOCOL_VERSION};
use bulkhead_vmm::{Accel, Disk, MemoryFile, Vm, VmConfig};
use serde::Serialize;

use crate::session::{clip, Event, Session};
use crate::Error;

/// Everything a sandbox VM is made of.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// `qemu-system-x86_64`; found on `PATH` (or `BULKHEAD_QEMU`) when `None`.
    pub qemu: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: Accel,
    pub disks: Vec<Disk>,
    /// Appended to the kernel command line.
    pub cmdline: String,
    /// Holds the VM's sockets; must exist and belong to this sandbox.
    pub run_dir: PathBuf,
    pub console_log: PathBuf,
    /// How long the guest may take from QEMU's start to the agent's `Ready`.
    pub ready_timeout: Duration,
    /// The network card, if any.
    pub net: Option<bulkhead_vmm::NetDevice>,
}

/// Where a boot's time went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct BootPhases {
    /// Spawning QEMU until its monitor answered.
    pub vm_process_ms: f64,
    /// Kernel start until our init ran (the guest's own clock).
    pub kernel_to_init_ms: f64,
    /// Init start until the agent was ready to answer (the guest's own clock).
    pub init_to_ready_ms: f64,
    /// For a VM restored from a template: spawning QEMU until the state was loaded.
    pub restore_ms: Option<f64>,
    /// Spawning QEMU until the host had the agent's `Ready`: what a user waits for.
    pub boot_to_ready_ms: f64,
}

/// 64 bytes from the host's RNG for the guest's `Hello`.
fn fresh_entropy() -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let mut bytes = vec![0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(Error::io("reading", "/dev/urandom"))?;
    Ok(bytes)
}

/// A booted VM with a live agent session.
pub struct Sandbox {
    vm: Vm,
    session: Arc<Session>,
    events: Option<Receiver<Event>>,
    phases: BootPhases,
    agent_version: String,
    next_seq: u64,
}

/// The guest has this long to answer a request once it is up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Sandbox {
    /// Boots the VM and completes the handshake.
    pub fn boot(config: &SandboxConfig) -> Result<Sandbox, Error> {
        let mut sandbox = Sandbox::launch(config, None, None)?;
        sandbox.handshake(config.ready_timeout)?;
        Ok(sandbox)
    }

    /// Starts a VM from a template's saved state and memory (see [`crate::template`]) and
    /// completes the handshake, which makes the restored guest its own machine.
    pub fn restore(config: &SandboxConfig, state: &Path, memory: &Path) -> Result<Sandbox, Error> {
        let memory = MemoryFile { path: memory.to_owned(), shared: false };
        let mut sandbox = Sandbox::launch(config, Some(state.to_owned()), Some(memory))?;
        sandbox.handshake(config.ready_timeout)?;
        Ok(sandbox)
    }

    /// Restores a VM from a template's state with its RAM in `memory` (a copy of the template's,
    /// which this VM changes): no handshake, only proof (a ping) that the init waits for it. For
    /// making a template from another.
    pub(crate) fn restore_unintroduced(
        config: &SandboxConfig,
        state: &Path,
        memory: &Path,
    ) -> Result<Sandbox, Error> {
        let memory = MemoryFile { path: memory.to_owned(), shared: true };
        let mut sandbox = Sandbox::launch(config, Some(state.to_owned()), Some(memory))?;
        sandbox.ping_unintroduced(config)?;
        Ok(sandbox)
    }

    /// Boots a VM for a template, its RAM in `memory` (which it creates): no handshake, only
    /// proof (a ping) that the init waits for it.
    pub(crate) fn boot_unintroduced(config: &SandboxConfig, memory: &Path) -> Result<Sandbox, Error> {
        let memory = MemoryFile { path: memory.to_owned(), shared: true };
        let mut sandbox = Sandbox::launch(config, None, Some(memory))?;
        sandbox.ping_unintroduced(config)?;
        Ok(sandbox)
    }

    fn ping_unintroduced(&mut self, config: &SandboxConfig) -> Result<(), Error> {
        let remaining = config.ready_timeout.saturating_sub(self.vm.spawned_at().elapsed());
        match self.request(
            Message::Ping { seq: 0 },
            remaining.max(Duration::from_millis(1)),
            "answer a ping",
        )? {
            Message::Pong { seq: 0 } => Ok(()),
            other => Err(Error::Agent(format!("expected pong, the guest sent {}", other.kind()))),
        }
    }

    fn launch(
        config: &SandboxConfig,
        incoming: Option<PathBuf>,
        memory_file: Option<MemoryFile>,
    ) -> Result<Sandbox, Error> {
        let vm = Vm::start(&VmConfig {
            qemu: config.qemu.clone(),
            kernel: config.kernel.clone(),
            initrd: Some(config.initramfs.clone()),
            cmdline: format!("rdinit=/init {}", config.cmdline),
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            disks: config.disks.clone(),
            accel: config.accel,
            run_dir: config.run_dir.clone(),
            console_log: config.console_log.clone(),
            net: config.net.clone(),
            incoming,
            memory_file,
        })?;
        let clone = |vm: &Vm| {
            vm.agent().try_clone().map_err(|e| Error::Agent(format!("cloning the agent socket: {e}")))
        };
        let (session, events) = Session::start(FrameReader::new(clone(&vm)?), clone(&vm)?)?;
        Ok(Sandbox {
            vm,
            session: Arc::new(session),
            events: Some(events),
            phases: BootPhases::default(),
            agent_version: String::new(),
            next_seq: 1,
        })
    }

    fn handshake(&mut self, timeout: Duration) -> Result<(), Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let unix_time_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let remaining = timeout.saturating_sub(self.vm.spawned_at().elapsed()).max(Duration::from_millis(1));
        let hello = Message::Hello { version: PROTOCOL_VERSION, unix_time_ns, entropy: fresh_entropy()? };
        match self.request(hello, remaining, "report ready")? {
            Message::Ready { version, agent_version, boot } => {
                check_version(version).map_err(|e| Error::Agent(e.to_string()))?;
                let ms = |ns: u64| Duration::from_nanos(ns).as_secs_f64() * 1e3;
                let times = self.vm.times();
                // A restored guest reports the template's boot, which this start did not pay.
                let booted = times.restore.is_none();
                self.phases = BootPhases {
                    vm_process_ms: times.process_start.as_secs_f64() * 1e3,
                    kernel_to_init_ms: if booted { ms(boot.init_start_ns) } else { 0.0 },
                    init_to_ready_ms: if booted {
                        ms(boot.ready_ns.saturating_sub(boot.init_start_ns))
                    } else {
                        0.0
                    },
                    restore_ms: times.restore.map(|d| d.as_secs_f64() * 1e3),
                    boot_to_ready_ms: self.vm.spawned_at().elapsed().as_secs_f64() * 1e3,
                };
                self.agent_version = clip(&agent_version.chars().take(64).collect::<String>());
                Ok(())
            }
            other => Err(Error::Agent(format!("expected ready, the guest sent {}", other.kind()))),
        }
    }

    pub fn phases(&self) -> BootPhases {
        self.phases
    }

    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    pub fn vm(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// The agent session, for threads that make requests or move stream data.
    pub fn session(&self) -> Arc<Session> {
        Arc::clone(&self.session)
    }

    /// What the guest reports on its own (exits, finished copies, the end of the channel). The
    /// receiver can be taken once.
    pub fn take_events(&mut self) -> Option<Receiver<Event>> {
        self.events.take()
    }

    /// A request with its failure explained: a guest that died is explained from its console.
    pub fn request(
        &mut self,
        message: Message,
        timeout: Duration,
        stage: &'static str,
    ) -> Result<Message, Error> {
        match self.session.request(message, timeout) {
            Ok(reply) => Ok(reply),
            Err(Error::AgentTimeout { seconds, .. }) => {
                let detail = match self.vm.failure(stage) {
                    bulkhead_vmm::Error::GuestPanic(line) => format!("; guest kernel panicked: {line}"),
                    bulkhead_vmm::Error::QemuExited { detail, .. } => detail,
                    other => format!("; {other}"),
                };
                Err(Error::AgentTimeout { stage, seconds, detail })
            }
            Err(e) if self.session.closed().is_some() => {
                tracing::debug!(error = %e, "agent channel closed");
                Err(self.vm.failure(stage).into())
            }
            Err(e) => Err(e),
        }
    }

    /// Round trip to the agent; returns how long it took.
    pub fn ping(&mut self) -> Result<Duration, Error> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let start = Instant::now();
        match self.request(Message::Ping { seq }, REQUEST_TIMEOUT, "answer a ping")? {
            Message::Pong { seq: got } if got == seq => Ok(start.elapsed()),
            Message::Pong { seq: got } => Err(Error::Agent(format!("pong {got} does not answer ping {seq}"))),
            other => Err(Error::Agent(format!("expected pong, the guest sent {}", other.kind()))),
        }
    }

    /// Asks the guest to flush its filesystems and ends the VM once it has; if the guest does not
    /// answer, waits up to `timeout` for it to power off and stops it hard after that. Returns how
    /// long the graceful part took.
    pub fn shutdown(mut self, timeout: Duration) -> Result<Duration, Error> {
        let start = Instant::now();
        // The guest answers once everything it wrote has reached QEMU, which writes it to the
        // host (and, for a qcow2 disk, its metadata) before `quit` lets it exit. Waiting for the
        // guest's own reboot would add nothing but time.
        if let Ok(Message::ShuttingDown) = self.session.request(Message::Shutdown, timeout) {
            self.vm.hard_stop()?;
            return Ok(start.elapsed());
        }
        let left = timeout.saturating_sub(start.elapsed());
        if self.vm.wait_timeout(left)?.is_some() {
            return Ok(start.elapsed());
        }
        self.vm.hard_stop()?;
        Err(Error::AgentTimeout {
            stage: "power off after shutdown",
            seconds: timeout.as_secs(),
            detail: String::new(),
        })
    }

    /// Kills the VM's process outright; for a VM whose disks are about to be deleted.
    pub fn kill(mut self) -> Result<(), Error> {
        self.vm.kill()?;
        Ok(())
    }

    /// Ends the VM now, without asking the guest.
    pub fn hard_stop(mut self) -> Result<(), Error> {
        self.vm.hard_stop()?;
        Ok(())
    }
}
