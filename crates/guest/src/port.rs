//! The send side of the agent port, shared by every thread, and the windows of the streams the
//! guest sends (see "Flow control" in the protocol crate).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Condvar, Mutex, MutexGuard};

use bulkhead_proto::{encode, Frame, Message, INITIAL_CREDIT};

use crate::Error;

/// Largest data frame the guest sends; well under the frame limit.
pub const CHUNK: usize = 64 * 1024;

/// Writes whole frames; one writer at a time, so frames never interleave.
pub struct Port {
    file: Mutex<File>,
}

impl Port {
    pub fn new(file: File) -> Port {
        Port { file: Mutex::new(file) }
    }

    pub fn send(&self, frame: &Frame) -> Result<(), Error> {
        let mut buf = Vec::new();
        encode(frame, &mut buf)?;
        lock(&self.file).write_all(&buf).map_err(|e| Error::Frame(e.into()))
    }

    pub fn message(&self, message: Message) -> Result<(), Error> {
        self.send(&Frame::Message(message))
    }

    /// For threads that have no one to tell when the host is gone: the agent loop notices.
    pub fn message_or_log(&self, message: Message) {
        let kind = message.kind();
        if let Err(e) = self.message(message) {
            eprintln!("bulkhead-guest: sending {kind}: {e}");
        }
    }

    pub fn data_or_log(&self, stream: u32, bytes: &[u8]) {
        if let Err(e) = self.send(&Frame::Data { stream, bytes: bytes.to_vec() }) {
            eprintln!("bulkhead-guest: sending data on stream {stream}: {e}");
        }
    }
}

/// How many bytes the host still accepts on each guest → host stream.
#[derive(Default)]
pub struct Windows {
    credit: Mutex<HashMap<u32, u32>>,
    changed: Condvar,
}

impl Windows {
    /// Starts `stream` with the initial window.
    pub fn open(&self, stream: u32) {
        lock(&self.credit).insert(stream, INITIAL_CREDIT);
    }

    pub fn close(&self, stream: u32) {
        lock(&self.credit).remove(&stream);
    }

    /// The host consumed `bytes`. A window never grows past its initial size, whatever the
    /// host says, so the guest cannot overrun it.
    pub fn grant(&self, stream: u32, bytes: u32) {
        if let Some(credit) = lock(&self.credit).get_mut(&stream) {
            *credit = credit.saturating_add(bytes).min(INITIAL_CREDIT);
            self.changed.notify_all();
        }
    }

    /// Waits until `stream` may send, then takes up to `want` bytes of its window. Returns 0 if
    /// the stream is not open.
    pub fn take(&self, stream: u32, want: usize) -> usize {
        let mut credit = lock(&self.credit);
        loop {
            match credit.get_mut(&stream) {
                None => return 0,
                Some(0) => {}
                Some(c) => {
                    let n = want.min(usize::try_from(*c).unwrap_or(usize::MAX));
                    *c -= u32::try_from(n).expect("n is at most the u32 credit");
                    return n;
                }
            }
            credit = self.changed.wait(credit).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Returns window taken but not used.
    pub fn give_back(&self, stream: u32, bytes: usize) {
        if bytes > 0 {
            self.grant(stream, u32::try_from(bytes).unwrap_or(u32::MAX));
        }
    }
}

/// A guest → host stream as a writer: each write sends one data frame within the window.
pub struct StreamWriter<'a> {
    pub port: &'a Port,
    pub windows: &'a Windows,
    pub stream: u32,
}

impl Write for StreamWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.windows.take(self.stream, buf.len().min(CHUNK));
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"));
        }
        self.port
            .send(&Frame::Data { stream: self.stream, bytes: buf[..n].to_vec() })
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No invariant spans a panic inside these short critical sections.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_never_exceed_the_initial_credit() {
        let w = Windows::default();
        w.open(5);
        assert_eq!(w.take(5, usize::MAX), INITIAL_CREDIT as usize);
        w.grant(5, 10);
        assert_eq!(w.take(5, 4), 4);
        w.give_back(5, 4);
        w.grant(5, u32::MAX);
        assert_eq!(w.take(5, usize::MAX), INITIAL_CREDIT as usize);
        assert_eq!(w.take(6, 1), 0);
    }
}
