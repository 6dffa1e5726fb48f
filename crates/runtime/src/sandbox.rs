//! A sandbox: one VM running our init, with a live agent session.
//!
//! This is the layer containers are built on: boot the VM, shake hands with the agent (which
//! reports its boot timestamps), then exchange requests until a graceful shutdown or a hard stop.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulkhead_proto::{check_version, encode, Frame, FrameReader, Message, PROTOCOL_VERSION};
use bulkhead_vmm::{Accel, Disk, Vm, VmConfig};
use serde::Serialize;

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
}

/// Where a boot's time went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BootPhases {
    /// Spawning QEMU until its monitor answered.
    pub vm_process_ms: f64,
    /// Kernel start until our init ran (the guest's own clock).
    pub kernel_to_init_ms: f64,
    /// Init start until the agent was ready to answer (the guest's own clock).
    pub init_to_ready_ms: f64,
    /// Spawning QEMU until the host had the agent's `Ready`: what a user waits for.
    pub boot_to_ready_ms: f64,
}

/// A booted VM with a live agent session.
pub struct Sandbox {
    vm: Vm,
    reader: FrameReader<UnixStream>,
    writer: UnixStream,
    phases: BootPhases,
    agent_version: String,
    next_seq: u64,
}

/// The guest has this long to answer a request once it is up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Sandbox {
    /// Boots the VM and completes the handshake.
    pub fn boot(config: &SandboxConfig) -> Result<Sandbox, Error> {
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
        })?;
        let stream = vm.agent();
        let writer =
            stream.try_clone().map_err(|e| Error::Agent(format!("cloning the agent socket: {e}")))?;
        let reader = FrameReader::new(
            stream.try_clone().map_err(|e| Error::Agent(format!("cloning the agent socket: {e}")))?,
        );
        let mut sandbox = Sandbox {
            vm,
            reader,
            writer,
            phases: BootPhases {
                vm_process_ms: 0.0,
                kernel_to_init_ms: 0.0,
                init_to_ready_ms: 0.0,
                boot_to_ready_ms: 0.0,
            },
            agent_version: String::new(),
            next_seq: 1,
        };
        sandbox.handshake(config.ready_timeout)?;
        Ok(sandbox)
    }

    fn handshake(&mut self, timeout: Duration) -> Result<(), Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let unix_time_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.send(Message::Hello { version: PROTOCOL_VERSION, unix_time_ns })?;
        let remaining = timeout.saturating_sub(self.vm.spawned_at().elapsed()).max(Duration::from_millis(1));
        match self.receive(remaining, "report ready")? {
            Message::Ready { version, agent_version, boot } => {
                check_version(version).map_err(|e| Error::Agent(e.to_string()))?;
                let ms = |ns: u64| Duration::from_nanos(ns).as_secs_f64() * 1e3;
                self.phases = BootPhases {
                    vm_process_ms: self.vm.times().process_start.as_secs_f64() * 1e3,
                    kernel_to_init_ms: ms(boot.init_start_ns),
                    init_to_ready_ms: ms(boot.ready_ns.saturating_sub(boot.init_start_ns)),
                    boot_to_ready_ms: self.vm.spawned_at().elapsed().as_secs_f64() * 1e3,
                };
                self.agent_version = agent_version.chars().take(64).collect();
                Ok(())
            }
            Message::Error { message } => {
                Err(Error::Agent(format!("guest refused the handshake: {}", clip(&message))))
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

    /// Round trip to the agent; returns how long it took.
    pub fn ping(&mut self) -> Result<Duration, Error> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let start = Instant::now();
        self.send(Message::Ping { seq })?;
        match self.receive(REQUEST_TIMEOUT, "answer a ping")? {
            Message::Pong { seq: got } if got == seq => Ok(start.elapsed()),
            Message::Pong { seq: got } => Err(Error::Agent(format!("pong {got} does not answer ping {seq}"))),
            other => Err(Error::Agent(format!("expected pong, the guest sent {}", other.kind()))),
        }
    }

    /// Asks the guest to flush and power off, and waits up to `timeout` for the VM to end;
    /// stops it hard after that. Returns how long the graceful part took.
    pub fn shutdown(mut self, timeout: Duration) -> Result<Duration, Error> {
        let start = Instant::now();
        self.send(Message::Shutdown)?;
        if self.vm.wait_timeout(timeout)?.is_some() {
            return Ok(start.elapsed());
        }
        self.vm.hard_stop()?;
        Err(Error::AgentTimeout {
            stage: "power off after shutdown",
            seconds: timeout.as_secs(),
            detail: String::new(),
        })
    }

    /// Ends the VM now, without asking the guest.
    pub fn hard_stop(mut self) -> Result<(), Error> {
        self.vm.hard_stop()?;
        Ok(())
    }

    fn send(&mut self, message: Message) -> Result<(), Error> {
        let mut buf = Vec::new();
        encode(&Frame::Message(message), &mut buf).map_err(|e| Error::Agent(e.to_string()))?;
        match self.writer.write_all(&buf) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Err(self.vm.failure("accepting a request").into())
            }
            Err(e) => Err(Error::Agent(format!("sending to the guest: {e}"))),
        }
    }

    /// The next control message, within `timeout`. A guest that dies or hangs meanwhile is
    /// explained from its console.
    fn receive(&mut self, timeout: Duration, stage: &'static str) -> Result<Message, Error> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| Error::Agent(format!("setting a timeout: {e}")))?;
        loop {
            match self.reader.read_frame() {
                Ok(Some(Frame::Message(message))) => return Ok(message),
                // No streams are open yet; stray data is dropped.
                Ok(Some(Frame::Data { .. })) => continue,
                // The guest end closed: QEMU exited (a panic, a crash) or is about to.
                Ok(None) | Err(bulkhead_proto::FrameError::Truncated(_)) => {
                    return Err(self.vm.failure(stage).into())
                }
                Err(bulkhead_proto::FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(self.vm.failure(stage).into())
                }
                Err(bulkhead_proto::FrameError::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    let detail = match self.vm.failure(stage) {
                        bulkhead_vmm::Error::GuestPanic(line) => {
                            format!("; guest kernel panicked: {line}")
                        }
                        bulkhead_vmm::Error::QemuExited { detail, .. } => detail,
                        other => format!("; {other}"),
                    };
                    return Err(Error::AgentTimeout { stage, seconds: timeout.as_secs(), detail });
                }
                Err(e) => return Err(Error::Agent(e.to_string())),
            }
        }
    }
}

/// Guest-supplied text, bounded and stripped of control characters before it reaches a terminal.
fn clip(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}
