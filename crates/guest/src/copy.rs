//! `CopyIn` and `CopyOut`: tar archives into and out of the container's filesystem.
//!
//! The path the host names is resolved inside the container (its symlinks cannot lead out), and
//! archives are unpacked with the `tar` crate's checks: no entry lands outside the destination
//! through `..`, an absolute path or a symlinked parent.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use bulkhead_proto::{Frame, Message};
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode, SFlag};

use crate::port::{Port, StreamWriter, Windows};
use crate::rootfs::Rootfs;

/// Where `CopyIn` unpacks: `path` must name a directory inside the container.
pub fn resolve_destination(rootfs: &Rootfs, path: &str) -> Result<PathBuf, String> {
    let fd = rootfs
        .open(path, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(|e| format!("copy into {path:?}: {e}"))?;
    rootfs.host_path(&fd).map_err(|e| format!("copy into {path:?}: {e}"))
}

/// What `CopyOut` archives: `path` itself (a symlink stays a symlink), under its own name.
pub struct Source {
    path: PathBuf,
    name: PathBuf,
    is_dir: bool,
}

pub fn resolve_source(rootfs: &Rootfs, path: &str) -> Result<Source, String> {
    let fd = rootfs
        .open(path, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty())
        .map_err(|e| format!("copy from {path:?}: {e}"))?;
    let stat = fstat(fd.as_raw_fd()).map_err(|e| format!("copy from {path:?}: {e}"))?;
    let is_dir = stat.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
    let host = rootfs.host_path(&fd).map_err(|e| format!("copy from {path:?}: {e}"))?;
    let name = match host.strip_prefix(rootfs.path()).ok().and_then(Path::file_name) {
        Some(name) => PathBuf::from(name),
        None => PathBuf::from("."),
    };
    Ok(Source { path: host, name, is_dir })
}

/// The host's chunks on one stream as a reader, granting each chunk back once it is consumed.
struct Incoming<'a> {
    chunks: Receiver<Vec<u8>>,
    current: Vec<u8>,
    offset: usize,
    ended: bool,
    port: &'a Port,
    stream: u32,
}

impl Incoming<'_> {
    fn grant_current(&mut self) {
        if !self.current.is_empty() {
            let bytes = u32::try_from(self.current.len()).unwrap_or(u32::MAX);
            self.port.message_or_log(Message::Credit { stream: self.stream, bytes });
            self.current.clear();
            self.offset = 0;
        }
    }
}

impl Read for Incoming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            self.grant_current();
            if self.ended {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(chunk) if !chunk.is_empty() => self.current = chunk,
                _ => self.ended = true,
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// Unpacks the archive arriving on `stream` into `destination`, reads the stream to its end
/// whatever happens (so the host's writer is never left waiting), and reports `CopyDone`.
pub fn copy_in(destination: &Path, stream: u32, chunks: Receiver<Vec<u8>>, port: &Port) {
    let mut incoming = Incoming { chunks, current: Vec::new(), offset: 0, ended: false, port, stream };
    let result = {
        let mut archive = tar::Archive::new(&mut incoming);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(true);
        archive.unpack(destination)
    };
    let _ = io::copy(&mut incoming, &mut io::sink());
    let error = result.err().map(|e| format!("unpacking into {}: {e}", destination.display()));
    port.message_or_log(Message::CopyDone { stream, error });
}

/// Sends `source` as a tar archive on `stream`, then the end of the stream and `CopyDone`.
pub fn copy_out(source: &Source, stream: u32, port: &Port, windows: &Windows) {
    windows.open(stream);
    let result = {
        let writer = StreamWriter { port, windows, stream };
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        let appended = if source.is_dir {
            builder.append_dir_all(&source.name, &source.path)
        } else {
            builder.append_path_with_name(&source.path, &source.name)
        };
        appended.and_then(|()| builder.into_inner().map(drop))
    };
    windows.close(stream);
    if let Err(e) = port.send(&Frame::Data { stream, bytes: Vec::new() }) {
        eprintln!("bulkhead-guest: ending copy stream {stream}: {e}");
    }
    let error = result.err().map(|e| format!("archiving {}: {e}", source.name.display()));
    port.message_or_log(Message::CopyDone { stream, error });
}
