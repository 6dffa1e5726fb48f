//! A process's standard streams: pipes or a pseudo-terminal on the process's side, and on the
//! agent's side one thread per stream, so a slow stream never stalls the agent loop or another
//! stream.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use bulkhead_proto::{stream_id, Message, ProcessSpec, Stdio, WindowSize};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::port::{Port, Windows, CHUNK};
use crate::rootfs::Rootfs;

/// Both ends of a process's standard streams.
pub struct Streams {
    /// What the child gets as 0, 1 and 2.
    pub child: [OwnedFd; 3],
    /// Where the host's stdin bytes go, with its stream number, when the process has stdin.
    pub input: Option<(u32, OwnedFd)>,
    /// What the agent reads and sends, with stream numbers.
    pub outputs: Vec<(u32, OwnedFd)>,
    /// The terminal's master side, for `Resize`.
    pub master: Option<Arc<OwnedFd>>,
}

/// Creates the streams `spec` asks for: with a terminal, a pty from the container's own devpts
/// (stdout and stderr are then one stream, sent as stdout); without, pipes, and `/dev/null` as
/// stdin unless the host keeps stdin open.
pub fn create(rootfs: &Rootfs, id: u32, spec: &ProcessSpec) -> io::Result<Streams> {
    let stdin_stream = stream_id(id, Stdio::Stdin);
    let stdout_stream = stream_id(id, Stdio::Stdout);
    let stderr_stream = stream_id(id, Stdio::Stderr);
    if let Some(size) = spec.tty {
        let (master, slave) = open_pty(rootfs)?;
        resize(&master, size)?;
        let child = [slave.try_clone()?, slave.try_clone()?, slave];
        let input = if spec.stdin { Some((stdin_stream, master.try_clone()?)) } else { None };
        let outputs = vec![(stdout_stream, master.try_clone()?)];
        return Ok(Streams { child, input, outputs, master: Some(Arc::new(master)) });
    }
    let (stdin_child, input) = if spec.stdin {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        (read, Some((stdin_stream, write)))
    } else {
        (OwnedFd::from(File::open("/dev/null")?), None)
    };
    let (stdout_read, stdout_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stderr_read, stderr_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok(Streams {
        child: [stdin_child, stdout_write, stderr_write],
        input,
        outputs: vec![(stdout_stream, stdout_read), (stderr_stream, stderr_read)],
        master: None,
    })
}

/// A new pty pair from the container's `/dev/pts`, so the process sees `/dev/pts/N` as its tty.
fn open_pty(rootfs: &Rootfs) -> Result<(OwnedFd, OwnedFd), Errno> {
    let master = rootfs.open("/dev/pts/ptmx", OFlag::O_RDWR | OFlag::O_NOCTTY, Mode::empty())?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which is valid for the call.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor or -1.
    let slave = Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: the ioctl just returned this descriptor; nothing else owns it.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// Sets the terminal's window size (the process gets SIGWINCH).
pub fn resize(master: &OwnedFd, size: WindowSize) -> Result<(), Errno> {
    let winsize = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which is valid for the call.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) }).map(drop)
}

/// Sends what `source` yields on `stream` within the stream's window, then the empty frame that
/// ends it. End of file, or EIO from a pty master whose last slave closed, is the end.
pub fn pump(source: OwnedFd, stream: u32, port: &Port, windows: &Windows) {
    windows.open(stream);
    let mut file = File::from(source);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let allowed = windows.take(stream, CHUNK);
        if allowed == 0 {
            break;
        }
        let got = loop {
            match file.read(&mut buf[..allowed]) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break 0,
            }
        };
        windows.give_back(stream, allowed - got);
        if got == 0 {
            break;
        }
        port.data_or_log(stream, &buf[..got]);
    }
    windows.close(stream);
    port.data_or_log(stream, &[]);
}

/// Writes the host's chunks for `stream` into `sink` and grants each back once written; an
/// empty chunk ends the input (closing a pipe; a pty stays open, it is also the output).
/// Bytes the process no longer reads are dropped and granted all the same, so the host's
/// writer never waits forever.
pub fn feed(sink: OwnedFd, stream: u32, chunks: Receiver<Vec<u8>>, port: &Port) {
    let mut sink = Some(File::from(sink));
    for chunk in chunks {
        if chunk.is_empty() {
            break;
        }
        if let Some(file) = &mut sink {
            if file.write_all(&chunk).is_err() {
                sink = None;
            }
        }
        let bytes = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        port.message_or_log(Message::Credit { stream, bytes });
    }
}
