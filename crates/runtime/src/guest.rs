//! The guest init binary and the initramfs that carries it.
//!
//! The initramfs holds only `/init` (the static `bulkhead-guest`), `/dev/console` (the kernel opens
//! it for init's stdio before init runs) and the mount points init needs. It is built once per
//! init binary, keyed by the binary's SHA-256, and reused by every VM.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Paths};

const GUEST_BINARY: &str = "bulkhead-guest";

/// Finds `bulkhead-guest`: `BULKHEAD_GUEST`, else beside the running executable, else in
/// `../lib/bulkhead/` relative to it (the installed layout).
pub fn find_guest_binary() -> Result<PathBuf, Error> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("BULKHEAD_GUEST") {
        candidates.push(PathBuf::from(path));
    } else if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(GUEST_BINARY));
            candidates.push(dir.join("../lib/bulkhead").join(GUEST_BINARY));
        }
    }
    candidates.iter().find(|path| path.is_file()).cloned().ok_or_else(|| Error::GuestMissing {
        searched: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// The initramfs for `guest`, built into the cache on first use.
pub fn initramfs(paths: &Paths, guest: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::MetadataExt;
    let dir = paths.cache_dir().join("initramfs");
    // Hashing the binary on every start costs more than the rest of the lookup: remember which
    // image this very file (same inode, size and change time) went into.
    let info = std::fs::metadata(guest).map_err(Error::io("reading guest init", guest))?;
    let stamp = format!(
        "{}:{}:{}:{}:{}.{}",
        guest.display(),
        info.dev(),
        info.ino(),
        info.len(),
        info.ctime(),
        info.ctime_nsec()
    );
    let stamp_path = dir.join(format!("by-file-{}", hex::encode(&Sha256::digest(stamp.as_bytes())[..12])));
    if let Ok(key) = std::fs::read_to_string(&stamp_path) {
        // Anything but a key as written below is a damaged cache entry: hash again.
        let key = key.trim();
        let path = dir.join(format!("{key}.cpio"));
        if key.len() == 24 && key.bytes().all(|b| b.is_ascii_hexdigit()) && path.is_file() {
            return Ok(path);
        }
    }
    let binary = std::fs::read(guest).map_err(Error::io("reading guest init", guest))?;
    let key = hex::encode(&Sha256::digest(&binary)[..12]);
    let path = dir.join(format!("{key}.cpio"));
    let remember = || crate::paths::write_cache_file(&stamp_path, &key);
    if path.is_file() {
        remember();
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let tmp =
        tempfile::NamedTempFile::new_in(&dir).map_err(Error::io("creating a temporary file in", &dir))?;
    write_cpio(tmp.as_file(), &binary).map_err(Error::io("writing initramfs", tmp.path()))?;
    tmp.as_file().sync_all().map_err(Error::io("syncing", tmp.path()))?;
    // Concurrent builders write identical bytes; whichever rename lands last wins harmlessly.
    tmp.persist(&path).map_err(|e| Error::Io { what: "installing", path: path.clone(), source: e.error })?;
    remember();
    Ok(path)
}

fn write_cpio(file: &File, init: &[u8]) -> std::io::Result<()> {
    use cpio::newc::Builder;
    const DIR: u32 = 0o040_755;
    let mut out = BufWriter::new(file);
    let mut ino = 1;
    let mut entry = |name: &str, mode: u32| {
        ino += 1;
        Builder::new(name).ino(ino).mode(mode).nlink(1)
    };
    for dir in ["dev", "proc", "sys", "run", "tmp", "mnt"] {
        entry(dir, DIR).write(&mut out, 0).finish()?;
    }
    // Character device 5:1, the console.
    entry("dev/console", 0o020_600).rdev_major(5).rdev_minor(1).write(&mut out, 0).finish()?;
    let size =
        u32::try_from(init.len()).map_err(|_| std::io::Error::other("guest init larger than 4 GiB"))?;
    let mut writer = entry("init", 0o100_755).write(&mut out, size);
    writer.write_all(init)?;
    writer.finish()?;
    let mut out = cpio::newc::trailer(out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn initramfs_holds_init_console_and_mount_points_and_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("root"), dir.path().join("run"));
        let guest = dir.path().join("bulkhead-guest");
        std::fs::write(&guest, b"\x7fELF pretend init").unwrap();
        let first = initramfs(&paths, &guest).unwrap();
        assert_eq!(initramfs(&paths, &guest).unwrap(), first, "same binary, same cached file");

        let mut file = File::open(&first).unwrap();
        let mut entries = Vec::new();
        loop {
            let mut reader = cpio::NewcReader::new(&mut file).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let (name, mode, rdev) =
                (reader.entry().name().to_owned(), reader.entry().mode(), reader.entry().rdev_minor());
            let mut body = Vec::new();
            reader.read_to_end(&mut body).unwrap();
            entries.push((name, mode, rdev, body));
            reader.finish().unwrap();
        }
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(find("init").1, 0o100_755);
        assert_eq!(find("init").3, b"\x7fELF pretend init");
        assert_eq!((find("dev/console").1, find("dev/console").2), (0o020_600, 1));
        for dir in ["dev", "proc", "sys", "run"] {
            assert_eq!(find(dir).1, 0o040_755);
        }

        // Damaged "this file went into that image" entries are ignored: the binary is hashed.
        let stamps = || {
            std::fs::read_dir(paths.cache_dir().join("initramfs"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("by-file-"))
                .map(|e| e.path())
                .collect::<Vec<_>>()
        };
        assert_eq!(stamps().len(), 1);
        for garbage in ["", "../../../../etc/passwd", "zzzzzzzzzzzzzzzzzzzzzzzz", "0123456789abcdef01234567"]
        {
            std::fs::write(&stamps()[0], garbage).unwrap();
            assert_eq!(initramfs(&paths, &guest).unwrap(), first, "{garbage:?}");
        }

        std::fs::write(&guest, b"another init").unwrap();
        assert_ne!(initramfs(&paths, &guest).unwrap(), first, "a new binary gets a new initramfs");
    }
}
