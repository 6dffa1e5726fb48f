//! The container log: JSON lines `{"log":…,"stream":"stdout"|"stderr","time":RFC3339}` like
//! Docker's json-file driver, rotated by size.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A log file grows to this size before it is rotated.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Rotated files kept besides the current one (`log.json.1` is the newest of them).
pub const KEEP_FILES: usize = 2;
/// A line longer than this is split into several entries.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// Appends entries, one per output line, rotating by size.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter { path: path.to_owned(), file, size, partial: [Vec::new(), Vec::new()] })
    }

    /// Adds output of `stream` (1 stdout, 2 stderr); complete lines are written at once.
    pub fn write(&mut self, stream: usize, bytes: &[u8]) -> std::io::Result<()> {
        let slot = stream.clamp(1, 2) - 1;
        let mut buf = std::mem::take(&mut self.partial[slot]);
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = buf[start..].iter().position(|&b| b == b'\n').map(|i| start + i + 1) {
            self.entry(slot, &buf[start..end])?;
            start = end;
        }
        while buf.len() - start >= MAX_LINE {
            self.entry(slot, &buf[start..start + MAX_LINE])?;
            start += MAX_LINE;
        }
        buf.drain(..start);
        self.partial[slot] = buf;
        Ok(())
    }

    /// Writes out partial lines (at the end of a stream).
    pub fn flush_partial(&mut self) -> std::io::Result<()> {
        for slot in 0..2 {
            let buf = std::mem::take(&mut self.partial[slot]);
            if !buf.is_empty() {
                self.entry(slot, &buf)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, slot: usize, line: &[u8]) -> std::io::Result<()> {
        let entry = Entry {
            log: String::from_utf8_lossy(line).into_owned(),
            stream: if slot == 0 { "stdout" } else { "stderr" }.into(),
            time: now_rfc3339(),
        };
        let mut json = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        json.push(b'\n');
        if self.size + json.len() as u64 > MAX_FILE_BYTES && self.size > 0 {
            self.rotate()?;
        }
        self.file.write_all(&json)?;
        self.size += json.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        for n in (1..KEEP_FILES).rev() {
            let _ = std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// How to print the log.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Prefix each line with its time.
    pub timestamps: bool,
}

/// Prints the log to `stdout`/`stderr` by stream; returns the position reached in the current
/// file, for following.
pub fn print(
    path: &Path,
    options: ReadOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u64> {
    let mut entries = Vec::new();
    for n in (1..=KEEP_FILES).rev() {
        read_entries(&numbered(path, n), 0, &mut entries)?;
    }
    let end = read_entries(path, 0, &mut entries)?;
    let skip = options.tail.map_or(0, |n| entries.len().saturating_sub(n));
    for entry in &entries[skip..] {
        emit(entry, options, out, err)?;
    }
    Ok(end)
}

/// Follows the current log file from `position` until `done()` says the writer has finished and
/// everything is printed.
pub fn follow(
    path: &Path,
    mut position: u64,
    options: ReadOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
    done: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    loop {
        let finished = done();
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < position {
            position = 0; // rotated
        }
        let mut entries = Vec::new();
        position = read_entries(path, position, &mut entries)?;
        for entry in &entries {
            emit(entry, options, out, err)?;
        }
        out.flush()?;
        if finished {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn emit(
    entry: &Entry,
    options: ReadOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<()> {
    let target: &mut dyn Write = if entry.stream == "stderr" { err } else { out };
    if options.timestamps {
        write!(target, "{} ", entry.time)?;
    }
    target.write_all(entry.log.as_bytes())
}

/// Reads whole lines from `start`; returns the offset after the last whole line.
fn read_entries(path: &Path, start: u64, into: &mut Vec<Entry>) -> std::io::Result<u64> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::new(file);
    let mut position = start;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(position);
        }
        position += n as u64;
        // A damaged line (a crash mid-write) is skipped rather than failing the whole log.
        if let Ok(entry) = serde_json::from_slice::<Entry>(&line) {
            into.push(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_streams_tail_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let mut w = LogWriter::open(&path).unwrap();
        w.write(1, b"one\ntw").unwrap();
        w.write(2, b"err\n").unwrap();
        w.write(1, b"o\nthree").unwrap();
        w.flush_partial().unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        print(&path, ReadOptions::default(), &mut out, &mut err).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo\nthree");
        assert_eq!(String::from_utf8(err).unwrap(), "err\n");

        let (mut out, mut err) = (Vec::new(), Vec::new());
        print(&path, ReadOptions { tail: Some(1), timestamps: true }, &mut out, &mut err).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.ends_with("Z three") && out.starts_with("20"), "{out}");

        // Damaged lines are skipped, not fatal.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{garbage\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        print(&path, ReadOptions::default(), &mut out, &mut err).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo\nthree");

        let big = vec![b'x'; 1000];
        let mut w = LogWriter::open(&path).unwrap();
        for _ in 0..(3 * MAX_FILE_BYTES / 1000) {
            w.write(1, &big).unwrap();
            w.write(1, b"\n").unwrap();
        }
        assert!(numbered(&path, 1).exists() && numbered(&path, 2).exists() && !numbered(&path, 3).exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= MAX_FILE_BYTES);
    }
}
