//! The agent: the guest end of the host channel.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_proto::{
    check_version, encode, BootTimes, Frame, FrameReader, Message, AGENT_PORT_NAME, PROTOCOL_VERSION,
};

use crate::Error;

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
pub fn serve(port: File, boot: BootTimes) -> Result<(), Error> {
    let mut writer =
        port.try_clone().map_err(|source| Error::OpenPort { path: "agent port".into(), source })?;
    let mut reader = FrameReader::new(port);
    let mut send = |message: Message| -> Result<(), Error> {
        let mut buf = Vec::new();
        encode(&Frame::Message(message), &mut buf)?;
        writer.write_all(&buf).map_err(|e| Error::Frame(e.into()))
    };

    match reader.read_frame()?.ok_or(Error::HostGone)? {
        Frame::Message(Message::Hello { version, unix_time_ns }) => {
            if let Err(mismatch) = check_version(version) {
                send(Message::Error { message: mismatch.to_string() })?;
                return Err(mismatch.into());
            }
            set_clock(unix_time_ns);
            send(Message::Ready {
                version: PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                boot,
            })?;
        }
        other => return Err(Error::NoHandshake(describe(&other))),
    }

    loop {
        let frame = reader.read_frame()?.ok_or(Error::HostGone)?;
        match frame {
            Frame::Message(Message::Ping { seq }) => send(Message::Pong { seq })?,
            Frame::Message(Message::Shutdown) => {
                send(Message::ShuttingDown)?;
                return Ok(());
            }
            other => send(Message::Error { message: format!("unexpected {}", describe(&other)) })?,
        }
    }
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
