//! Safe layer unpacking. Layers are hostile: every entry path is cleaned and checked, no entry is
//! written through a symlink or outside the destination, device nodes are recorded rather than
//! created, and decompressed sizes are bounded. OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) are
//! applied against the layers below.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use crate::compress::decompress;
use crate::{Digest, Error, Store};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Bounds on what one image may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Total bytes of file content a layer may hold once decompressed.
    pub max_layer_bytes: u64,
    /// Entries a layer may hold.
    pub max_entries: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions { max_layer_bytes: 64 << 30, max_entries: 10_000_000 }
    }
}

/// A special file the host did not create: device nodes live only on the root disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// `c` (character) or `b` (block).
    pub kind: char,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
}

/// What the host could not apply itself and the root disk must carry.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct UnpackReport {
    /// Device nodes by path relative to the root.
    pub devices: BTreeMap<PathBuf, DeviceNode>,
    /// Ownership that could not be applied on the host (unprivileged unpack), relative paths.
    pub owners: BTreeMap<PathBuf, (u64, u64)>,
}

impl UnpackReport {
    fn forget_under(&mut self, rel: &Path) {
        self.devices.retain(|p, _| !p.starts_with(rel));
        self.owners.retain(|p, _| !p.starts_with(rel));
    }
}

/// Unpacks every layer of the image whose manifest is `manifest_digest` into `dest` (an empty or
/// missing directory), in order, verifying each layer blob against its digest.
pub fn unpack_image(
    store: &Store,
    manifest_digest: &Digest,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, Error> {
    let manifest = store.read_manifest(manifest_digest)?;
    fs::create_dir_all(dest).map_err(|e| Error::io("creating unpack directory", dest, e))?;
    let mut report = UnpackReport::default();
    for layer in manifest.layers() {
        let digest = Digest::parse(layer.digest().as_ref())?;
        let size = store.blob_size(&digest)?;
        if size != layer.size() {
            return Err(Error::SizeMismatch {
                what: format!("layer {digest}"),
                expected: layer.size(),
                actual: size,
            });
        }
        let mut blob = store.open_blob(&digest)?;
        unpack_layer(&mut blob, digest.as_str(), dest, &mut report, opts)?;
        blob.finish()?;
    }
    Ok(report)
}

/// Applies one layer (gzip, zstd or plain tar) onto `dest`. `layer` names it in errors.
pub fn unpack_layer<R: Read>(
    reader: R,
    layer: &str,
    dest: &Path,
    report: &mut UnpackReport,
    opts: &UnpackOptions,
) -> Result<(), Error> {
    let io_err = |entry: &str, e: io::Error| Error::Unpack {
        layer: layer.to_owned(),
        entry: entry.to_owned(),
        reason: e.to_string(),
    };
    let (_, decoded) = decompress(reader).map_err(|e| io_err("(layer header)", e))?;
    let mut archive = tar::Archive::new(decoded.take(opts.max_layer_bytes.saturating_add(1 << 30)));
    let mut layer_state = LayerState { dest, layer, created: HashSet::new(), dir_modes: Vec::new() };
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    for entry in archive.entries().map_err(|e| io_err("(archive)", e))? {
        let mut entry = entry.map_err(|e| io_err("(next entry)", e))?;
        count += 1;
        let raw_path = entry.path().map_err(|e| io_err("(entry path)", e))?.into_owned();
        let shown = raw_path.display().to_string();
        if count > opts.max_entries {
            return Err(
                layer_state.reject(&shown, format!("layer has more than {} entries", opts.max_entries))
            );
        }
        total = total.saturating_add(entry.size());
        if entry.size() > opts.max_layer_bytes || total > opts.max_layer_bytes {
            return Err(layer_state.reject(
                &shown,
                format!(
                    "size {} bytes takes the layer past its {}-byte limit",
                    entry.size(),
                    opts.max_layer_bytes
                ),
            ));
        }
        layer_state.apply(&mut entry, &raw_path, report).map_err(|e| match e {
            Error::Unpack { .. } => e,
            other => layer_state.reject(&shown, other.to_string()),
        })?;
    }
    for (path, mode) in layer_state.dir_modes.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .map_err(|e| Error::io("setting mode of", path, e))?;
    }
    Ok(())
}

struct LayerState<'a> {
    dest: &'a Path,
    layer: &'a str,
    /// Paths (relative) this layer created, which its own opaque markers must not remove.
    created: HashSet<PathBuf>,
    /// Directory modes applied after the layer, so a read-only directory can still be filled.
    dir_modes: Vec<(PathBuf, u32)>,
}

impl LayerState<'_> {
    fn reject(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::Unpack { layer: self.layer.to_owned(), entry: entry.to_owned(), reason: reason.into() }
    }

    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &Path,
        report: &mut UnpackReport,
    ) -> Result<(), Error> {
        let shown = raw_path.display().to_string();
        let rel = clean_path(raw_path).map_err(|r| self.reject(&shown, r))?;
        let header = entry.header().clone();
        let entry_type = header.entry_type();
        let (uid, gid, xattrs) =
            pax_overrides(entry, &header).map_err(|e| self.reject(&shown, e.to_string()))?;
        let mode = header.mode().map_err(|e| self.reject(&shown, e.to_string()))? & 0o7777;

        let Some(name) = rel.file_name() else {
            // The root directory itself: take its ownership and mode.
            if entry_type.is_dir() {
                set_owner(self.dest, &rel, uid, gid, report)?;
                self.dir_modes.push((self.dest.to_owned(), mode));
            }
            return Ok(());
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let name_str = name.to_string_lossy();

        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            let Some(parent) = self.existing_dir(parent_rel, &shown)? else {
                return Ok(());
            };
            if name_str == OPAQUE_MARKER {
                self.make_opaque(&parent, parent_rel, report)?;
            } else {
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(self.reject(&shown, "whiteout names no file"));
                }
                let victim_rel = parent_rel.join(hidden);
                remove_any(&parent.join(hidden))?;
                report.forget_under(&victim_rel);
            }
            return Ok(());
        }

        let parent = self.ensure_parent(parent_rel, &shown, report)?;
        let target = parent.join(name);
        let existing = fs::symlink_metadata(&target).ok();
        if let Some(meta) = &existing {
            if !(meta.is_dir() && entry_type.is_dir()) {
                remove_any(&target)?;
            }
        }
        report.forget_under(&rel);
        self.created.insert(rel.clone());

        match entry_type {
            tar::EntryType::Directory => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&target).map_err(|e| Error::io("creating directory", &target, e))?;
                }
                set_owner(&target, &rel, uid, gid, report)?;
                self.dir_modes.push((target.clone(), mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                    .open(&target)
                    .map_err(|e| Error::io("creating", &target, e))?;
                let written = io::copy(entry, &mut file)
                    .map_err(|e| self.reject(&shown, format!("reading content: {e}")))?;
                if written != header.entry_size().unwrap_or(written) {
                    return Err(self.reject(&shown, "content is shorter than its header says"));
                }
                if let Ok(mtime) = header.mtime() {
                    let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
                }
                drop(file);
                set_owner(&target, &rel, uid, gid, report)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io("setting mode of", &target, e))?;
            }
            tar::EntryType::Symlink => {
                let link = header
                    .link_name_bytes()
                    .ok_or_else(|| self.reject(&shown, "symlink without a target"))?;
                if link.is_empty() {
                    return Err(self.reject(&shown, "symlink with an empty target"));
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(|e| Error::io("creating symlink", &target, e))?;
                set_owner(&target, &rel, uid, gid, report)?;
            }
            tar::EntryType::Link => {
                let link = header.link_name().map_err(|e| self.reject(&shown, e.to_string()))?;
                let link = link.ok_or_else(|| self.reject(&shown, "hardlink without a target"))?;
                let src_rel = clean_path(&link)
                    .map_err(|r| self.reject(&shown, format!("hardlink target {}: {r}", link.display())))?;
                let src_parent = self.existing_dir(src_rel.parent().unwrap_or(Path::new("")), &shown)?;
                let src = match (src_parent, src_rel.file_name()) {
                    (Some(p), Some(n)) => p.join(n),
                    _ => {
                        return Err(
                            self.reject(&shown, format!("hardlink target {} does not exist", link.display()))
                        )
                    }
                };
                match fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {}
                    Ok(_) => {
                        return Err(
                            self.reject(&shown, format!("hardlink target {} is a directory", link.display()))
                        )
                    }
                    Err(_) if report.devices.contains_key(&src_rel) => {
                        let dev = report.devices[&src_rel].clone();
                        report.devices.insert(rel.clone(), dev);
                        return Ok(());
                    }
                    Err(_) => {
                        return Err(
                            self.reject(&shown, format!("hardlink target {} does not exist", link.display()))
                        )
                    }
                }
                fs::hard_link(&src, &target).map_err(|e| Error::io("creating hardlink", &target, e))?;
                if let Some(owner) = report.owners.get(&src_rel).copied() {
                    report.owners.insert(rel.clone(), owner);
                }
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let kind = if entry_type == tar::EntryType::Char { 'c' } else { 'b' };
                report.devices.insert(rel.clone(), DeviceNode { kind, major, minor, mode, uid, gid });
                return Ok(());
            }
            tar::EntryType::Fifo => {
                nix::unistd::mkfifo(&target, Mode::from_bits_truncate(0o600))
                    .map_err(|e| Error::io("creating fifo", &target, e.into()))?;
                set_owner(&target, &rel, uid, gid, report)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io("setting mode of", &target, e))?;
            }
            other => return Err(self.reject(&shown, format!("unsupported entry type {other:?}"))),
        }
        for (key, value) in xattrs {
            if let Err(e) = xattr::set(&target, &key, &value) {
                tracing::warn!("layer {}: {shown}: xattr {key} not applied: {e}", self.layer);
            }
        }
        Ok(())
    }

    /// Walks `rel` below the root, requiring every component to be a real directory; returns
    /// `None` when a component is missing.
    fn existing_dir(&self, rel: &Path, shown: &str) -> Result<Option<PathBuf>, Error> {
        let mut path = self.dest.to_owned();
        for c in rel.components() {
            path.push(c);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.reject(
                        shown,
                        format!(
                            "parent {} is a symlink; refusing to write through it",
                            strip(&path, self.dest)
                        ),
                    ))
                }
                Ok(m) if !m.is_dir() => {
                    return Err(
                        self.reject(shown, format!("parent {} is not a directory", strip(&path, self.dest)))
                    )
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io("inspecting", path, e)),
            }
        }
        Ok(Some(path))
    }

    /// Like [`existing_dir`], creating missing directories (0755, root-owned) on the way.
    fn ensure_parent(
        &mut self,
        rel: &Path,
        shown: &str,
        _report: &mut UnpackReport,
    ) -> Result<PathBuf, Error> {
        let mut path = self.dest.to_owned();
        let mut sub = PathBuf::new();
        for c in rel.components() {
            path.push(c);
            sub.push(c);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.reject(
                        shown,
                        format!("parent {} is a symlink; refusing to write through it", sub.display()),
                    ))
                }
                Ok(m) if !m.is_dir() => {
                    return Err(self.reject(shown, format!("parent {} is not a directory", sub.display())))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&path).map_err(|e| Error::io("creating directory", &path, e))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .map_err(|e| Error::io("setting mode of", &path, e))?;
                    self.created.insert(sub.clone());
                }
                Err(e) => return Err(Error::io("inspecting", path, e)),
            }
        }
        Ok(path)
    }

    /// Removes everything under `dir` that lower layers put there.
    fn make_opaque(&self, dir: &Path, rel: &Path, report: &mut UnpackReport) -> Result<(), Error> {
        let entries = fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io("listing", dir, e))?;
            let child_rel = rel.join(e.file_name());
            if !self.created.contains(&child_rel) {
                remove_any(&e.path())?;
                report.forget_under(&child_rel);
            }
        }
        let lower_devices: Vec<PathBuf> = report
            .devices
            .keys()
            .filter(|p| p.parent() == Some(rel) && !self.created.contains(*p))
            .cloned()
            .collect();
        for p in lower_devices {
            report.devices.remove(&p);
        }
        Ok(())
    }
}

/// Cleans an entry path to a relative path of normal components, or says why it cannot be.
pub fn clean_path(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("path has a '..' component".into()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
        }
    }
    Ok(out)
}

fn strip(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

fn remove_any(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| Error::io("removing", path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io("removing", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("inspecting", path, e)),
    }
}

fn set_owner(path: &Path, rel: &Path, uid: u64, gid: u64, report: &mut UnpackReport) -> Result<(), Error> {
    let (Ok(u), Ok(g)) = (u32::try_from(uid), u32::try_from(gid)) else {
        return Err(Error::Invalid(format!("{}: owner {uid}:{gid} out of range", rel.display())));
    };
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("inspecting", path, e))?;
    if meta.uid() == u && meta.gid() == g {
        return Ok(());
    }
    match std::os::unix::fs::lchown(path, Some(u), Some(g)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            report.owners.insert(rel.to_owned(), (uid, gid));
            Ok(())
        }
        Err(e) => Err(Error::io("changing owner of", path, e)),
    }
}

type Xattrs = Vec<(String, Vec<u8>)>;

/// uid, gid (PAX records win over the header) and `SCHILY.xattr.*` records.
fn pax_overrides<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    header: &tar::Header,
) -> io::Result<(u64, u64, Xattrs)> {
    let mut uid = header.uid()?;
    let mut gid = header.gid()?;
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            match key {
                "uid" => uid = ext.value().ok().and_then(|v| v.parse().ok()).unwrap_or(uid),
                "gid" => gid = ext.value().ok().and_then(|v| v.parse().ok()).unwrap_or(gid),
                k => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
    }
    Ok((uid, gid, xattrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path(Path::new("./a/./b")).unwrap(), PathBuf::from("a/b"));
        assert_eq!(clean_path(Path::new("./")).unwrap(), PathBuf::new());
        assert!(clean_path(Path::new("a/../../b")).is_err());
        assert!(clean_path(Path::new("/etc/passwd")).is_err());
    }
}
