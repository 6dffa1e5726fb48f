//! Root disks: an image's flattened layers as an ext4 filesystem image, built once per manifest
//! digest into `disks/<hex>.ext4` and never written again. Each container gets a copy-on-write
//! disk (qcow2) backed by it, which its VM mounts read-write as the root: the filesystem has
//! [`ROOT_DISK_BYTES`] of room (sparse: only what the image holds takes space) and a journal.
//!
//! ext4 because Debian 12's `mke2fs -d` builds it from a tree in about a second and `debugfs`
//! can both add what the host refused to create (device nodes, ownership an unprivileged unpack
//! could not set) and read the result back without mounting it. erofs-utils 1.5 can do neither.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::store::{lock_file, sync_dir};
use crate::unpack::{unpack_image, UnpackOptions, UnpackReport};
use crate::{Digest, Error, Store};

const BLOCK: u64 = 4096;

/// The size of a root filesystem (more if the image needs it): what a container can write.
pub const ROOT_DISK_BYTES: u64 = 8 << 30;

/// The cached root disk of the image whose manifest digest is `image_digest` (a reference is
/// accepted too), building it first if needed. Safe to call concurrently: one caller builds,
/// the others wait for it and get the same file.
pub fn root_disk(store: &Store, image_digest: &str) -> Result<PathBuf, Error> {
    let digest = match Digest::parse(image_digest) {
        Ok(d) => d,
        Err(_) => store.lookup(image_digest)?.1,
    };
    let disks = store.root().join("disks");
    let path = disks.join(format!("{}.ext4", digest.hex()));
    if path.is_file() {
        return Ok(path);
    }
    let _lock = lock_file(&disks.join(format!("{}.lock", digest.hex())))?;
    if path.is_file() {
        return Ok(path);
    }
    let work = tempfile::Builder::new()
        .prefix("disk-")
        .tempdir_in(store.tmp_dir())
        .map_err(|e| Error::io("creating temporary directory in", store.tmp_dir(), e))?;
    let tree = work.path().join("rootfs");
    let report = unpack_image(store, &digest, &tree, &UnpackOptions::default())?;
    add_mount_points(&tree)?;
    let image = work.path().join("disk.img");
    build_ext4(&tree, &report, &image)?;
    fs::set_permissions(&image, fs::Permissions::from_mode(0o444))
        .map_err(|e| Error::io("setting mode of", &image, e))?;
    fs::rename(&image, &path).map_err(|e| Error::io("renaming root disk into", &path, e))?;
    sync_dir(&disks)?;
    Ok(path)
}

/// Creates what the guest mounts over (`/proc`, `/dev`, `/sys`, `/etc/hosts`, `/etc/hostname`,
/// `/etc/resolv.conf`) where the image has nothing at all, so that starting a container writes
/// nothing to its disk. Whatever the image has at those paths (even a symlink) stays as it is.
fn add_mount_points(tree: &Path) -> Result<(), Error> {
    let absent =
        |p: &Path| matches!(fs::symlink_metadata(p), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    for dir in ["proc", "dev", "sys", "etc"] {
        let path = tree.join(dir);
        if absent(&path) {
            fs::create_dir(&path).map_err(|e| Error::io("creating", &path, e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io("setting mode of", &path, e))?;
        }
    }
    let etc = tree.join("etc");
    if fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
        for name in ["hosts", "hostname", "resolv.conf"] {
            let path = etc.join(name);
            if absent(&path) {
                File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                    .map_err(|e| Error::io("setting mode of", &path, e))?;
            }
        }
    }
    Ok(())
}

/// Builds an ext4 image at `image` from `tree` with [`ROOT_DISK_BYTES`] of room, then adds the
/// report's device nodes and ownership with `debugfs`.
pub fn build_ext4(tree: &Path, report: &UnpackReport, image: &Path) -> Result<(), Error> {
    let (bytes, inodes) = measure(tree)?;
    // Data blocks, one 256-byte inode each, plus room for directories' extent and htree blocks,
    // group descriptors, bitmaps and the journal; then room to write, and one inode per 16 KiB.
    let needed = (bytes + (inodes + report.devices.len() as u64) * 256) / 10 * 11 + (256 << 20);
    let size = needed.max(ROOT_DISK_BYTES).div_ceil(BLOCK) * BLOCK;
    let inodes = (inodes + report.devices.len() as u64 + 64).max(size / 16384);
    let file = File::create(image).map_err(|e| Error::io("creating", image, e))?;
    file.set_len(size).map_err(|e| Error::io("sizing", image, e))?;
    drop(file);
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0", "-L", "bulkhead-root"])
        // Inode tables and journal are left unwritten (the file stays sparse); the guest mounts
        // with `noinit_itable` so that it does not zero them either.
        .args(["-O", "^resize_inode,^metadata_csum_seed"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(tree)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Tool {
            tool: "mke2fs",
            reason: format!("cannot run it (install e2fsprogs): {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "mke2fs",
            reason: format!(
                "{} building {}: {}",
                out.status,
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let script = fixup_script(report)?;
    if !script.is_empty() {
        debugfs(image, &script, true)?;
    }
    File::open(image).and_then(|f| f.sync_all()).map_err(|e| Error::io("syncing", image, e))
}

/// Total bytes (rounded to blocks) and inode count of a tree, not following symlinks.
fn measure(dir: &Path) -> Result<(u64, u64), Error> {
    let mut bytes = BLOCK;
    let mut inodes = 1;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| Error::io("listing", &d, e))? {
            let e = e.map_err(|e| Error::io("listing", &d, e))?;
            let m = e.metadata().map_err(|err| Error::io("inspecting", e.path(), err))?;
            inodes += 1;
            bytes += m.len().div_ceil(BLOCK) * BLOCK + BLOCK * u64::from(m.is_dir());
            if m.is_dir() {
                stack.push(e.path());
            } else if m.nlink() > 1 {
                // Counted once per link; the slight overestimate is harmless.
            }
        }
    }
    Ok((bytes, inodes))
}

fn quote(path: &Path) -> Result<String, Error> {
    let s = path.to_str().ok_or_else(|| {
        Error::Invalid(format!("path {} is not UTF-8; debugfs cannot name it", path.display()))
    })?;
    if s.chars().any(|c| c == '"' || c.is_control()) {
        return Err(Error::Invalid(format!(
            "path {s:?} has a quote or control character; debugfs cannot name it"
        )));
    }
    Ok(format!("\"/{s}\""))
}

fn fixup_script(report: &UnpackReport) -> Result<String, Error> {
    let mut script = String::new();
    for (path, dev) in &report.devices {
        let p = quote(path)?;
        let type_bits = if dev.kind == 'c' { 0o020000 } else { 0o060000 };
        // debugfs's mknod only names entries in its current directory.
        let parent = quote(path.parent().unwrap_or(Path::new("")))?;
        let name = quote(Path::new(path.file_name().unwrap_or_default()))?;
        let name = name.replacen("\"/", "\"", 1);
        script.push_str(&format!("cd {parent}\nmknod {name} {} {} {}\n", dev.kind, dev.major, dev.minor));
        script.push_str(&format!("sif {p} mode 0{:o}\n", type_bits | (dev.mode & 0o7777)));
        script.push_str(&format!("sif {p} uid {}\nsif {p} gid {}\n", dev.uid, dev.gid));
    }
    for (path, (uid, gid)) in &report.owners {
        let p = quote(path)?;
        script.push_str(&format!("sif {p} uid {uid}\nsif {p} gid {gid}\n"));
    }
    Ok(script)
}

/// Runs a `debugfs` command script against `image`; any diagnostic it prints is an error.
pub fn debugfs(image: &Path, script: &str, write: bool) -> Result<String, Error> {
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    let mut child = cmd
        .arg("-f")
        .arg("-")
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool {
            tool: "debugfs",
            reason: format!("cannot run it (install e2fsprogs): {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Tool { tool: "debugfs", reason: format!("writing its script: {e}") })?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Tool { tool: "debugfs", reason: e.to_string() })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> =
        stderr.lines().filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()).collect();
    if !out.status.success() || !problems.is_empty() {
        return Err(Error::Tool {
            tool: "debugfs",
            reason: format!("on {}: {}", image.display(), problems.join("; ")),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One inode as the root disk records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskEntry {
    /// Full `st_mode`, type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (0 for directories).
    pub size: u64,
}

/// Lists every path on an ext4 root disk with its mode, owner and size, read with `debugfs`
/// (no mount), so the disk can be checked against the image from the host.
pub fn read_tree(image: &Path) -> Result<std::collections::BTreeMap<String, DiskEntry>, Error> {
    let mut out = std::collections::BTreeMap::new();
    let mut level = vec![String::new()];
    while !level.is_empty() {
        let mut script = String::new();
        for dir in &level {
            script.push_str(&format!("ls -p \"{}/\"\n", dir));
        }
        let listing = debugfs(image, &script, false)?;
        let mut next = Vec::new();
        let mut current: Option<&String> = None;
        let mut dirs = level.iter();
        for line in listing.lines() {
            if line.starts_with("debugfs: ") {
                current = dirs.next();
                continue;
            }
            let (Some(dir), Some(rest)) = (current, line.strip_prefix('/')) else {
                continue;
            };
            let fields: Vec<&str> = rest.splitn(6, '/').collect();
            let [_ino, mode, uid, gid, name, size] = fields.as_slice() else {
                continue;
            };
            if *name == "." || *name == ".." || name.is_empty() {
                continue;
            }
            let mode = u32::from_str_radix(mode, 8).map_err(|_| Error::Tool {
                tool: "debugfs",
                reason: format!("unparsable mode in {line:?}"),
            })?;
            let path = format!("{dir}/{name}");
            let entry = DiskEntry {
                mode,
                uid: uid.parse().unwrap_or(u32::MAX),
                gid: gid.parse().unwrap_or(u32::MAX),
                size: size.trim_end_matches('/').parse().unwrap_or(0),
            };
            if mode & 0o170000 == 0o040000 && *name != "lost+found" {
                next.push(path.clone());
            }
            out.insert(path, entry);
        }
        level = next;
    }
    out.remove("/lost+found");
    Ok(out)
}
