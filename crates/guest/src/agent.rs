//! The agent: the guest end of the host channel.
//!
//! One loop reads frames and answers each request in order. Nothing in it waits on a process or
//! a stream: stdin bytes go to per-stream threads, output and copies run on their own threads,
//! and credits only wake them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_proto::{
    check_version, BootTimes, Frame, FrameReader, Message, AGENT_PORT_NAME, PROTOCOL_VERSION,
};

use crate::container::{Container, Launch};
use crate::port::{Port, Windows};
use crate::spawn::Spawner;
use crate::{copy, stats, Error};

/// Finds the virtio-serial port named [`AGENT_PORT_NAME`] and opens it. Ports appear shortly
/// after the driver talks to QEMU, so this waits up to `timeout`.
pub fn open_port(timeout: Duration) -> Result<File, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(dev) = find_port(Path::new("/sys/class/virtio-ports")) {
            let path = format!("/dev/{dev}");
            return OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| Error::OpenPort { path, source });
        }
        if Instant::now() > deadline {
            return Err(Error::NoPort { name: AGENT_PORT_NAME, seconds: timeout.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn find_port(class: &Path) -> Option<String> {
    std::fs::read_dir(class).ok()?.flatten().find_map(|entry| {
        let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (name.trim_end() == AGENT_PORT_NAME).then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

/// Serves the host until it asks for a shutdown (`Ok`) or the channel fails (`Err`).
pub fn serve(port: File, spawner: Spawner, boot: BootTimes) -> Result<(), Error> {
    let writer = port.try_clone().map_err(|source| Error::OpenPort { path: "agent port".into(), source })?;
    let port_out = Arc::new(Port::new(writer));
    let mut reader = FrameReader::new(port);

    // Pings may come before the handshake: the host probes a VM it is about to save as a
    // template, whose first Hello then comes from whichever host restores it.
    loop {
        match reader.read_frame()?.ok_or(Error::HostGone)? {
            Frame::Message(Message::Ping { seq }) => port_out.message(Message::Pong { seq })?,
            Frame::Message(Message::MountRoot { device, programs, path }) => {
                let reply = match crate::rootfs::premount(&device, &programs, &path) {
                    Ok(()) => Message::SetupDone,
                    Err(e) => Message::Error { message: format!("mounting the root: {e}") },
                };
                port_out.message(reply)?;
            }
            Frame::Message(Message::Hello { version, unix_time_ns, entropy }) => {
                if let Err(mismatch) = check_version(version) {
                    port_out.message(Message::Error { message: mismatch.to_string() })?;
                    return Err(mismatch.into());
                }
                // Re-identification, for a VM restored from a template as much as a fresh one:
                // randomness the template never saw, and the host's clock.
                crate::identity::reseed(&entropy);
                set_clock(unix_time_ns);
                port_out.message(Message::Ready {
                    version: PROTOCOL_VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    boot,
                })?;
                break;
            }
            other => return Err(Error::NoHandshake(describe(&other))),
        }
    }

    let mut agent = Agent {
        port: port_out,
        windows: Arc::new(Windows::default()),
        inputs: HashMap::new(),
        container: None,
        spawner: Some(spawner),
    };
    loop {
        match reader.read_frame()?.ok_or(Error::HostGone)? {
            Frame::Data { stream, bytes } => agent.data(stream, bytes)?,
            Frame::Message(Message::Shutdown) => {
                // Everything written is on the host's side once this returns; the host may end
                // the VM as soon as it has the reply, without waiting for the guest to reboot.
                nix::unistd::sync();
                agent.port.message(Message::ShuttingDown)?;
                return Ok(());
            }
            Frame::Message(message) => agent.message(message)?,
        }
    }
}

struct Agent {
    port: Arc<Port>,
    windows: Arc<Windows>,
    /// Host → guest streams that are open: stdin of processes, archives of `CopyIn`.
    inputs: HashMap<u32, Sender<Vec<u8>>>,
    container: Option<Container>,
    /// Made at boot; the container takes it at `Setup`.
    spawner: Option<Spawner>,
}

impl Agent {
    fn data(&mut self, stream: u32, bytes: Vec<u8>) -> Result<(), Error> {
        let len = bytes.len();
        let end = bytes.is_empty();
        let delivered = self.inputs.get(&stream).is_some_and(|input| input.send(bytes).is_ok());
        if end {
            self.inputs.remove(&stream);
        } else if !delivered {
            // Nobody reads this stream (any more): drop the bytes but keep the host's window open.
            let bytes = u32::try_from(len).unwrap_or(u32::MAX);
            self.port.message(Message::Credit { stream, bytes })?;
        }
        Ok(())
    }

    fn message(&mut self, message: Message) -> Result<(), Error> {
        let reply = match message {
            Message::Ping { seq } => Message::Pong { seq },
            Message::Credit { stream, bytes } => {
                self.windows.grant(stream, bytes);
                return Ok(());
            }
            Message::Signal { id, signal } => {
                if let Some(container) = &self.container {
                    container.signal(id, signal);
                }
                return Ok(());
            }
            Message::Resize { id, size } => {
                if let Some(container) = &self.container {
                    container.resize(id, size);
                }
                return Ok(());
            }
            Message::Setup { container } => match (&self.container, self.spawner.take()) {
                (Some(_), _) | (None, None) => error("setup: the container is already set up"),
                (None, Some(spawner)) => match Container::setup(&container, spawner) {
                    Ok(c) => {
                        self.container = Some(c);
                        Message::SetupDone
                    }
                    Err((e, spawner)) => {
                        self.spawner = Some(spawner);
                        error(format!("setup: {e}"))
                    }
                },
            },
            Message::Start { id, process } => {
                let Some(container) = &mut self.container else {
                    return self.port.message(Message::StartFailed {
                        id,
                        exit_code: crate::lookup::EXIT_OTHER,
                        message: "no container: setup has not been done".into(),
                    });
                };
                match container.start(id, &process) {
                    Ok((pid, launch)) => return self.launch(id, pid, launch),
                    Err(failure) => {
                        Message::StartFailed { id, exit_code: failure.exit_code, message: failure.message }
                    }
                }
            }
            Message::Stats => {
                let ns = self.container.as_ref().and_then(|c| c.pid_namespace().cloned());
                match stats::stats(ns.as_deref()) {
                    Ok(stats) => Message::StatsReply { stats },
                    Err(e) => error(format!("stats: {e}")),
                }
            }
            Message::Top => {
                let ns = self.container.as_ref().and_then(|c| c.pid_namespace().cloned());
                let passwd =
                    self.container.as_ref().and_then(|c| c.rootfs().read("/etc/passwd")).unwrap_or_default();
                Message::TopReply { processes: stats::top(ns.as_deref(), &passwd) }
            }
            Message::CopyIn { stream, path } => return self.copy_in(stream, &path),
            Message::CopyOut { stream, path } => return self.copy_out(stream, &path),
            Message::Hello { .. } => error("hello: the session is already established"),
            other => error(format!("unexpected message {}", other.kind())),
        };
        self.port.message(reply)
    }

    fn launch(&mut self, id: u32, pid: i32, launch: Launch) -> Result<(), Error> {
        // The reply goes first, so the process's `Exited` cannot overtake its `Started`.
        let sent = self.port.message(Message::Started { id, pid });
        launch.run(&self.port, &self.windows, &mut self.inputs);
        sent
    }

    fn copy_in(&mut self, stream: u32, path: &str) -> Result<(), Error> {
        let Some(container) = &self.container else {
            return self.port.message(error("copy: no container: setup has not been done"));
        };
        if self.inputs.contains_key(&stream) {
            return self.port.message(error(format!("copy: stream {stream} is already in use")));
        }
        let destination = match copy::resolve_destination(container.rootfs(), path) {
            Ok(d) => d,
            Err(e) => return self.port.message(error(e)),
        };
        self.port.message(Message::CopyStarted { stream })?;
        let (tx, rx) = mpsc::channel();
        self.inputs.insert(stream, tx);
        let port = Arc::clone(&self.port);
        spawn("copy-in", move || copy::copy_in(&destination, stream, rx, &port));
        Ok(())
    }

    fn copy_out(&mut self, stream: u32, path: &str) -> Result<(), Error> {
        let Some(container) = &self.container else {
            return self.port.message(error("copy: no container: setup has not been done"));
        };
        let source = match copy::resolve_source(container.rootfs(), path) {
            Ok(s) => s,
            Err(e) => return self.port.message(error(e)),
        };
        self.port.message(Message::CopyStarted { stream })?;
        let (port, windows) = (Arc::clone(&self.port), Arc::clone(&self.windows));
        spawn("copy-out", move || copy::copy_out(&source, stream, &port, &windows));
        Ok(())
    }
}

fn error(message: impl Into<String>) -> Message {
    Message::Error { message: message.into() }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    crate::workers::run(name, f);
}

/// Sets the wall clock from the host's, so the guest's time is right before anything runs.
fn set_clock(unix_time_ns: u64) {
    use nix::sys::time::TimeSpec;
    use nix::time::{clock_settime, ClockId};
    let secs = i64::try_from(unix_time_ns / 1_000_000_000).unwrap_or(i64::MAX);
    let nanos = i64::try_from(unix_time_ns % 1_000_000_000).unwrap_or(0);
    if let Err(e) = clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::new(secs, nanos)) {
        eprintln!("bulkhead-guest: setting the clock: {e}");
    }
}

fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Message(message) => format!("message {}", message.kind()),
        Frame::Data { stream, bytes } => {
            format!("{} bytes of data on stream {stream}", bytes.len())
        }
    }
}
