//! The monitor's control socket: how CLI commands talk to a running container.
//!
//! A client connects to `<run_root>/<id>/monitor.sock` and sends one JSON [`Request`] line.
//! Simple requests get one JSON [`Reply`] line. `Attach`, `Exec`, `CopyIn` and `CopyOut` switch
//! the connection to agent frames after the reply: stdin as data on stream 0, stdout and stderr
//! on streams 1 and 2, `Resize` and `Signal` from the client, and `Exited` (or `Error`) last.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use bulkhead_proto::{GuestStats, ProcessInfo, ProcessSpec};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Stream numbers on a client connection.
pub const STDIN: u32 = 0;
pub const STDOUT: u32 = 1;
pub const STDERR: u32 = 2;
/// The tar stream of a copy.
pub const COPY: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Stream the main process's output (and feed its stdin if `stdin`). If the monitor was
    /// started waiting for an attach, the main process starts now.
    Attach {
        stdin: bool,
    },
    /// Start another process in the container and stream it.
    Exec {
        process: ProcessSpec,
    },
    /// Stop the main process: `signal`, then SIGKILL after `timeout_s`, then the VM.
    Stop {
        timeout_s: u64,
        signal: i32,
    },
    Kill {
        signal: i32,
    },
    Stats,
    Top,
    CopyIn {
        path: String,
    },
    CopyOut {
        path: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Error { message: String, exit_code: Option<i32> },
    Stats { guest: GuestStats, vm_rss_bytes: u64, monitor_rss_bytes: u64 },
    Top { processes: Vec<ProcessInfo> },
}

/// Connects to a container's monitor and sends `request`; returns the reply and the connection
/// (positioned after the reply, for framed requests).
pub fn call(socket: &Path, request: &Request) -> Result<(Reply, BufReader<UnixStream>), Error> {
    let mut stream =
        UnixStream::connect(socket).map_err(Error::io("connecting to the container monitor at", socket))?;
    let mut line = serde_json::to_vec(request).map_err(|e| Error::Invalid(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(Error::io("writing to", socket))?;
    let mut reader = BufReader::new(stream);
    let reply =
        read_line(&mut reader).map_err(|e| Error::Agent(format!("monitor at {}: {e}", socket.display())))?;
    Ok((reply, reader))
}

/// One JSON line, bounded.
pub fn read_line<T: for<'de> Deserialize<'de>>(reader: &mut BufReader<UnixStream>) -> Result<T, String> {
    use std::io::Read;
    let mut line = Vec::new();
    reader.by_ref().take(1 << 20).read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Err("connection closed".into());
    }
    serde_json::from_slice(&line).map_err(|e| format!("bad message: {e}"))
}

pub fn write_line<T: Serialize>(stream: &mut impl Write, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}
