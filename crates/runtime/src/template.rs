//! VM templates: a VM booted to the point where its init waits for the first `Hello`, saved
//! (QMP `migrate`), and restored for each container instead of a cold boot.
//!
//! A template is keyed by everything that shapes the saved machine: the kernel image digest, the
//! initramfs (named by the init binary's digest), memory, vCPUs, the accelerator, the QEMU
//! version, the kernel command line, and the device layout (each disk's mode and size, the kind of
//! network card). A start whose key differs in anything gets another template, never this one.
//! Templates live in `<root>/templates/<key>/`: `memory` (the guest's RAM, which restored VMs
//! map privately instead of reading it: see [`bulkhead_vmm::MemoryFile`]), `state` (the devices'
//! state) and `meta.json`; one lock per key makes concurrent starts build a template once. The guest side of restoring (making the restored VM
//! its own machine: entropy, clock, block caches, MAC) is in the guest's `identity` module.

use std::fs::File;
use std::path::{Path, PathBuf};

use bulkhead_proto::Message;
use bulkhead_vmm::{Disk, DiskFormat, NetDevice};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::container::store::lock_file;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::{Error, Paths};

/// Bumped when what a template contains changes meaning.
const FORMAT: u32 = 3;
/// Read-only disks are presented to a template as this large, so no real root disk is larger
/// than the size the restored guest believes in. The placeholder is sparse.
const PLACEHOLDER_RO_BYTES: u64 = 64 << 30;

/// What a template was made from (its `meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TemplateMeta {
    pub format: u32,
    pub kernel_digest: String,
    pub initramfs: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: String,
    pub qemu_version: String,
    pub cmdline: String,
    /// Per disk: `ro` or `rw`, and the size the template saw.
    pub disks: Vec<(String, u64)>,
    /// `none`, `tap` or `user`.
    pub net: String,
}

impl TemplateMeta {
    pub fn key(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("plain data serializes");
        hex::encode(&Sha256::digest(&canonical)[..16])
    }
}

/// A template in the store.
#[derive(Debug, Clone, Serialize)]
pub struct Template {
    pub key: String,
    pub state: PathBuf,
    pub memory: PathBuf,
    /// The images it has a specialisation for (see [`ImageTemplate`]); filled in by [`list`].
    pub images: Vec<String>,
    pub meta: TemplateMeta,
    /// Bytes on disk (files are sparse); with the specialisations once [`list`] counted them.
    pub bytes: u64,
    pub created: Option<String>,
}

fn dir(paths: &Paths) -> PathBuf {
    paths.root.join("templates")
}

/// The device layout of `disks` as a template records it: per disk `ro` or `rw` and the size
/// the guest sees (for read-only disks, the placeholder's, which is at least as large).
pub fn layout(disks: &[Disk]) -> Result<Vec<(String, u64)>, Error> {
    let mut layout = Vec::new();
    for disk in disks {
        let size = disk.guest_size()?;
        if disk.read_only && size > PLACEHOLDER_RO_BYTES {
            return Err(Error::Invalid(format!(
                "disk {} is larger than a template's placeholder",
                disk.path.display()
            )));
        }
        let size = if disk.read_only { PLACEHOLDER_RO_BYTES } else { size };
        layout.push((if disk.read_only { "ro" } else { "rw" }.to_owned(), size));
    }
    Ok(layout)
}

/// The template description for a container VM described by `config`, whose disks have
/// `layout` (see [`layout`]).
pub fn meta_for(
    config: &SandboxConfig,
    disks: Vec<(String, u64)>,
    kernel_digest: &str,
    qemu_version: &str,
) -> TemplateMeta {
    let net = match &config.net {
        None => "none",
        Some(NetDevice::Tap { .. }) => "tap",
        Some(NetDevice::User { .. }) => "user",
    };
    TemplateMeta {
        format: FORMAT,
        kernel_digest: kernel_digest.to_owned(),
        initramfs: config.initramfs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        memory_mib: config.memory_mib,
        vcpus: config.vcpus,
        accel: config.accel.to_string(),
        qemu_version: qemu_version.to_owned(),
        cmdline: config.cmdline.clone(),
        disks,
        net: net.to_owned(),
    }
}

/// The template for `meta`, made now (from `config`'s kernel and init) if there is none.
pub fn ensure(paths: &Paths, config: &SandboxConfig, meta: &TemplateMeta) -> Result<Template, Error> {
    let key = meta.key();
    let root = dir(paths);
    let home = root.join(&key);
    if let Some(template) = load(&home) {
        return Ok(template);
    }
    std::fs::create_dir_all(&root).map_err(Error::io("creating", &root))?;
    let _lock = lock_file(&root.join(format!("{key}.lock")))?;
    // Whoever held the lock before us may have made it.
    if let Some(template) = load(&home) {
        return Ok(template);
    }
    // A directory that does not load (damaged description, missing state) is rebuilt.
    if home.exists() {
        std::fs::remove_dir_all(&home).map_err(Error::io("removing the damaged template", &home))?;
    }
    build(paths, config, meta, &home)?;
    load(&home).ok_or_else(|| Error::Corrupt(format!("template {key} was built but cannot be read back")))
}

fn load(home: &Path) -> Option<Template> {
    let meta: TemplateMeta = serde_json::from_slice(&std::fs::read(home.join("meta.json")).ok()?).ok()?;
    let state = home.join("state");
    let info = std::fs::metadata(&state).ok()?;
    let memory = home.join("memory");
    // A memory file of another size is damaged: QEMU would refuse it, or worse, grow it.
    let memory_info = std::fs::metadata(&memory).ok()?;
    if memory_info.len() != u64::from(meta.memory_mib) << 20 {
        return None;
    }
    // The file is sparse: count what it holds.
    let memory_bytes = std::os::unix::fs::MetadataExt::blocks(&memory_info) * 512;
    let created = info.modified().ok().map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339());
    let bytes = info.len() + memory_bytes;
    Some(Template { key: meta.key(), state, memory, images: Vec::new(), meta, bytes, created })
}

/// Fills in the image specialisations of the template at `home` and counts them in its size:
/// they go with it. Only for listing; a start has no use for it.
fn count_specialisations(home: &Path, template: &mut Template) {
    for entry in std::fs::read_dir(home.join("images")).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().is_dir() || name.starts_with('.') {
            continue;
        }
        for file in std::fs::read_dir(entry.path()).into_iter().flatten().flatten() {
            template.bytes +=
                file.metadata().map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap_or(0);
        }
        template.images.push(name);
    }
    template.images.sort();
}

/// Boots a VM on placeholder disks, waits for its init, and saves it.
fn build(paths: &Paths, config: &SandboxConfig, meta: &TemplateMeta, home: &Path) -> Result<(), Error> {
    let key = meta.key();
    let work = tempfile::Builder::new()
        .prefix(&format!(".build-{key}-"))
        .tempdir_in(dir(paths))
        .map_err(Error::io("creating a build directory in", dir(paths)))?;
    let mut disks = Vec::new();
    for (index, (mode, size)) in meta.disks.iter().enumerate() {
        let path = work.path().join(format!("placeholder-{index}.img"));
        File::create(&path).and_then(|f| f.set_len(*size)).map_err(Error::io("creating", &path))?;
        disks.push(Disk::raw(path, mode == "ro"));
    }
    let (net, tap) = placeholder_net(config, &key)?;
    let build_config = SandboxConfig {
        disks,
        net,
        run_dir: work.path().to_owned(),
        console_log: work.path().join("console.log"),
        ..config.clone()
    };
    let memory = work.path().join("memory");
    let mut sandbox = Sandbox::boot_unintroduced(&build_config, &memory)?;
    let state = work.path().join("state");
    let saved = sandbox.vm().save(&state, work.path());
    let _ = sandbox.hard_stop();
    drop(tap);
    saved?;
    File::open(&memory).and_then(|f| f.sync_all()).map_err(Error::io("syncing", &memory))?;
    let meta_path = work.path().join("meta.json");
    std::fs::write(&meta_path, serde_json::to_vec_pretty(meta).expect("plain data serializes"))
        .map_err(Error::io("writing", &meta_path))?;
    // Only the state and its description move into place; the scratch disks go with `work`.
    install(work.path(), &["state", "memory", "meta.json"], home)
}

/// Moves the files `names` of the build directory `work` into a directory that then becomes
/// `home` in one rename: a template is there whole or not at all.
fn install(work: &Path, names: &[&str], home: &Path) -> Result<(), Error> {
    let parent = home.parent().unwrap_or(Path::new("."));
    let name = home.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staged = parent.join(format!(".staged-{name}"));
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir(&staged).map_err(Error::io("creating", &staged))?;
    for name in names {
        std::fs::rename(work.join(name), staged.join(name))
            .map_err(Error::io("moving", staged.join(name)))?;
    }
    std::fs::rename(&staged, home).map_err(Error::io("installing template", home))
}

/// The network card a template is made with: like `config`'s, on a scratch TAP device named
/// after `build` (removed when the returned guard drops) or a user-mode stack, with a
/// placeholder MAC. Builds that may run at the same time need different `build` names.
fn placeholder_net(
    config: &SandboxConfig,
    build: &str,
) -> Result<(Option<NetDevice>, Option<ScratchTap>), Error> {
    Ok(match &config.net {
        None => (None, None),
        Some(NetDevice::User { .. }) => {
            (Some(NetDevice::User { mac: PLACEHOLDER_MAC.into(), forwards: Vec::new() }), None)
        }
        Some(NetDevice::Tap { .. }) => {
            // Interface names have at most 15 bytes.
            let name = format!("bhtpl{}", &hex::encode(Sha256::digest(build.as_bytes()))[..10]);
            let tap = ScratchTap::create(&name)?;
            (Some(NetDevice::Tap { ifname: name, mac: PLACEHOLDER_MAC.into() }), Some(tap))
        }
    })
}

/// A template specialised for one image: its base template restored on a fresh copy-on-write
/// disk of the image, the disk mounted as the container root (`MountRoot`), and saved again with
/// that disk (`disk`, a qcow2 image over the image's root disk). A container whose disk is a copy
/// of `disk` and that is restored from it finds its root mounted; the kernel's view of the disk
/// is exactly the copy's content, since the save waited for every write the guest made.
/// Specialisations live in `<template>/images/<image>/` and go with their template.
#[derive(Debug, Clone)]
pub struct ImageTemplate {
    pub state: PathBuf,
    pub memory: PathBuf,
    pub disk: PathBuf,
}

/// What an image's specialisation is made for.
#[derive(Debug, Clone)]
pub struct ImageSpec<'a> {
    /// Names the image, for the specialisation's directory.
    pub name: &'a str,
    /// An empty copy-on-write disk over the image's root disk.
    pub cow: &'a Path,
    /// The disk's name in the guest.
    pub device: &'a str,
    /// Programs to have in memory (the first container's command), looked up in `path`.
    pub programs: Vec<String>,
    pub path: String,
}

/// The specialisation of `base` for `image`, made now if there is none. `config` describes the
/// containers' VMs.
pub fn ensure_image(
    paths: &Paths,
    config: &SandboxConfig,
    base: &Template,
    spec: &ImageSpec,
) -> Result<ImageTemplate, Error> {
    let image = spec.name;
    let images = dir(paths).join(&base.key).join("images");
    let home = images.join(image);
    if let Some(found) = load_image(&home, base) {
        return Ok(found);
    }
    std::fs::create_dir_all(&images).map_err(Error::io("creating", &images))?;
    let _lock = lock_file(&images.join(format!("{image}.lock")))?;
    if let Some(found) = load_image(&home, base) {
        return Ok(found);
    }
    if home.exists() {
        std::fs::remove_dir_all(&home).map_err(Error::io("removing the damaged template", &home))?;
    }
    build_image(config, base, spec, &images, &home)?;
    load_image(&home, base).ok_or_else(|| {
        Error::Corrupt(format!("image template {} was built but cannot be read back", home.display()))
    })
}

fn load_image(home: &Path, base: &Template) -> Option<ImageTemplate> {
    let found = ImageTemplate {
        state: home.join("state"),
        memory: home.join("memory"),
        disk: home.join("disk.qcow2"),
    };
    let memory = std::fs::metadata(&found.memory).ok()?;
    (memory.len() == u64::from(base.meta.memory_mib) << 20 && found.state.is_file() && found.disk.is_file())
        .then_some(found)
}

fn build_image(
    config: &SandboxConfig,
    base: &Template,
    spec: &ImageSpec,
    images: &Path,
    home: &Path,
) -> Result<(), Error> {
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(images)
        .map_err(Error::io("creating a build directory in", images))?;
    // The base's memory, copied (holes and all) for this VM to change: it is mapped shared.
    let memory = work.path().join("memory");
    let status = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(&base.memory)
        .arg(&memory)
        .status()
        .map_err(Error::io("copying template memory to", &memory))?;
    if !status.success() {
        return Err(Error::Invalid(format!("copying {} failed ({status})", base.memory.display())));
    }
    let disk = work.path().join("disk.qcow2");
    std::fs::copy(spec.cow, &disk).map_err(Error::io("copying a disk to", &disk))?;
    let (net, tap) = placeholder_net(config, &format!("{}/{}", base.key, spec.name))?;
    let build_config = SandboxConfig {
        disks: vec![Disk { path: disk.clone(), read_only: false, format: DiskFormat::Qcow2 }],
        net,
        run_dir: work.path().to_owned(),
        console_log: work.path().join("console.log"),
        ..config.clone()
    };
    let mut sandbox = Sandbox::restore_unintroduced(&build_config, &base.state, &memory)?;
    let mounted = sandbox.request(
        Message::MountRoot {
            device: spec.device.to_owned(),
            programs: spec.programs.clone(),
            path: spec.path.clone(),
        },
        crate::sandbox::REQUEST_TIMEOUT,
        "mount the image's root",
    );
    let state = work.path().join("state");
    let saved = match mounted {
        Ok(Message::SetupDone) => sandbox.vm().save(&state, work.path()).map(drop).map_err(Error::from),
        Ok(other) => Err(Error::Agent(format!("expected setup_done, the guest sent {}", other.kind()))),
        Err(e) => Err(e),
    };
    // `quit` lets QEMU write out what it holds of the qcow2 disk.
    let _ = sandbox.hard_stop();
    drop(tap);
    saved?;
    for path in [&memory, &disk] {
        File::open(path).and_then(|f| f.sync_all()).map_err(Error::io("syncing", path))?;
    }
    install(work.path(), &["state", "memory", "disk.qcow2"], home)
}

/// Forgets an image template that failed to restore.
pub fn discard_image(paths: &Paths, base: &Template, image: &str) {
    let _ = std::fs::remove_dir_all(dir(paths).join(&base.key).join("images").join(image));
}

/// The MAC a template's card has; a restored guest replaces it with the container's.
const PLACEHOLDER_MAC: &str = "02:42:00:00:00:01";

/// A TAP device for a template VM's card, on no bridge, removed on drop.
struct ScratchTap(String);

impl ScratchTap {
    fn create(name: &str) -> Result<ScratchTap, Error> {
        let out = std::process::Command::new("ip")
            .args(["tuntap", "add", "dev", name, "mode", "tap"])
            .output()
            .map_err(Error::io("running", "ip tuntap"))?;
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("exists") {
            return Err(Error::Invalid(format!(
                "creating TAP device {name} for a template: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(ScratchTap(name.to_owned()))
    }
}

impl Drop for ScratchTap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "delete", &self.0]).output();
    }
}

/// The QEMU version (part of every template key), cached by the binary's path, size and
/// modification time, so a start does not run `qemu -version` each time.
pub fn qemu_version(paths: &Paths) -> Result<String, Error> {
    use std::os::unix::fs::MetadataExt;
    let qemu = bulkhead_vmm::find_qemu()?;
    let meta = std::fs::metadata(&qemu).map_err(Error::io("reading", &qemu))?;
    let stamp = format!("{}:{}:{}", qemu.display(), meta.len(), meta.mtime());
    let cache = paths.cache_dir().join("qemu-version");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some(version) = text.strip_prefix(&format!("{stamp}\n")) {
            return Ok(version.trim().to_owned());
        }
    }
    let version = bulkhead_vmm::qemu_version(&qemu)?;
    crate::paths::write_cache_file(&cache, &format!("{stamp}\n{version}\n"));
    Ok(version)
}

/// Every template in the store.
pub fn list(paths: &Paths) -> Result<Vec<Template>, Error> {
    let root = dir(paths);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io { what: "listing", path: root, source: e }),
    };
    let mut out: Vec<Template> = entries
        .flatten()
        .filter_map(|e| {
            let mut template = load(&e.path())?;
            count_specialisations(&e.path(), &mut template);
            Some(template)
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Removes the templates whose key starts with `prefix` (all with ""); returns their keys.
pub fn remove(paths: &Paths, prefix: &str) -> Result<Vec<String>, Error> {
    let mut removed = Vec::new();
    for template in list(paths)? {
        if template.key.starts_with(prefix) {
            let home = dir(paths).join(&template.key);
            std::fs::remove_dir_all(&home).map_err(Error::io("removing", &home))?;
            removed.push(template.key);
        }
    }
    if removed.is_empty() && !prefix.is_empty() {
        return Err(Error::NotFound(format!("no template {prefix}")));
    }
    Ok(removed)
}

/// Forgets a template that failed to restore, so the next start builds a fresh one.
pub fn discard(paths: &Paths, key: &str) {
    let _ = std::fs::remove_dir_all(dir(paths).join(key));
}

/// Whether containers start from templates: on unless `BULKHEAD_TEMPLATES=0` or the store's
/// `settings.json` says `{"templates": false}`.
pub fn enabled(paths: &Paths) -> bool {
    if let Ok(value) = std::env::var("BULKHEAD_TEMPLATES") {
        return !matches!(value.as_str(), "0" | "false" | "no" | "off");
    }
    std::fs::read(paths.root.join("settings.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v.get("templates").and_then(serde_json::Value::as_bool))
        .unwrap_or(true)
}
