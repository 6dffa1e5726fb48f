//! The CLI end of an attached or exec'd process: local stdin to the container, its output to
//! local stdout/stderr, terminal size and signals forwarded, the exit code back.

use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use bulkhead_proto::{encode, Frame, FrameReader, Message, WindowSize};
use nix::sys::signal::{SigSet, Signal};

use super::control::{STDERR, STDIN, STDOUT};
use crate::Error;

/// How the local side is wired.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Forward local stdin (`-i`).
    pub stdin: bool,
    /// The process runs on a terminal (`-t`): put the local terminal in raw mode and forward its
    /// size; signals then travel as keystrokes.
    pub tty: bool,
}

/// Streams a framed connection until the process ends; returns its exit code (Docker's
/// numbering: the code, or 128 + signal).
pub fn stream(connection: BufReader<UnixStream>, options: StreamOptions) -> Result<i32, Error> {
    let writer =
        Arc::new(Mutex::new(connection.get_ref().try_clone().map_err(|e| Error::Agent(e.to_string()))?));
    let _raw = if options.tty { RawTerminal::enter() } else { None };
    // Signals are taken by a thread (sigwait) rather than handlers; blocked here first so no
    // thread started below sees them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGWINCH] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    {
        let writer = Arc::clone(&writer);
        let tty = options.tty;
        std::thread::spawn(move || forward_signals(&signals, &writer, tty));
    }
    if options.tty {
        if let Some(size) = terminal_size() {
            let _ = send(&writer, &Frame::Message(Message::Resize { id: 0, size }));
        }
    }
    if options.stdin {
        let writer = Arc::clone(&writer);
        std::thread::spawn(move || forward_stdin(&writer));
    }
    let mut frames = FrameReader::new(connection);
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    loop {
        match frames.read_frame() {
            Ok(Some(Frame::Data { stream: STDOUT, bytes })) => {
                let _ = stdout.write_all(&bytes).and_then(|()| stdout.flush());
            }
            Ok(Some(Frame::Data { stream: STDERR, bytes })) => {
                let _ = stderr.write_all(&bytes);
            }
            Ok(Some(Frame::Message(Message::Exited { status, .. }))) => return Ok(status.code()),
            Ok(Some(Frame::Message(Message::StartFailed { exit_code, message, .. }))) => {
                return Err(Error::StartFailed { exit_code, message });
            }
            Ok(Some(Frame::Message(Message::Error { message }))) => return Err(Error::Agent(message)),
            Ok(Some(_)) => {}
            Ok(None) => return Err(Error::Agent("the container's monitor closed the connection".into())),
            Err(e) => return Err(Error::Agent(format!("from the monitor: {e}"))),
        }
    }
}

fn send(writer: &Mutex<UnixStream>, frame: &Frame) -> std::io::Result<()> {
    let mut buf = Vec::new();
    encode(frame, &mut buf).map_err(std::io::Error::other)?;
    writer.lock().unwrap_or_else(|e| e.into_inner()).write_all(&buf)
}

fn forward_stdin(writer: &Mutex<UnixStream>) {
    let mut stdin = std::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = send(writer, &Frame::Data { stream: STDIN, bytes: Vec::new() });
                return;
            }
            Ok(n) => {
                if send(writer, &Frame::Data { stream: STDIN, bytes: buf[..n].to_vec() }).is_err() {
                    return;
                }
            }
        }
    }
}

fn forward_signals(signals: &SigSet, writer: &Mutex<UnixStream>, tty: bool) {
    while let Ok(signal) = signals.wait() {
        let frame = match signal {
            Signal::SIGWINCH => match terminal_size() {
                Some(size) if tty => Frame::Message(Message::Resize { id: 0, size }),
                _ => continue,
            },
            // With a terminal, Ctrl-C arrives as a keystroke through raw mode; these come from
            // outside (kill), and go to the container like Docker's signal proxy.
            other => Frame::Message(Message::Signal { id: 0, signal: other as i32 }),
        };
        if send(writer, &frame).is_err() {
            return;
        }
    }
}

fn terminal_size() -> Option<WindowSize> {
    let mut size = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer, which points to a live local.
    let rc = unsafe { nix::libc::ioctl(nix::libc::STDIN_FILENO, nix::libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0).then_some(WindowSize { rows: size.ws_row, cols: size.ws_col })
}

/// The local terminal in raw mode for as long as this lives.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}
