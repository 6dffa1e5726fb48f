//! The container's root filesystem (`Setup`): the container's own copy-on-write disk (what
//! containers get), or the image disk read-only under an overlay whose upper layer is a writable
//! disk or a tmpfs; with `/dev`, `/sys`, `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` and
//! the `--tmpfs` paths mounted in it.
//!
//! Everything is mounted in the init's mount namespace under [`ROOTFS`]; the main process copies
//! that tree into its own namespace, mounts its `/proc` and pivots into it. Paths inside the
//! container come from a hostile image and a user's spec, so they are resolved with
//! `openat2(RESOLVE_IN_ROOT)`: a symlink in the image never leads a mount or a read out of it.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bulkhead_proto::ContainerSpec;
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mkdirat, mknod, Mode, SFlag};

/// Where the container's pieces are mounted in the init's namespace.
const BASE: &str = "/run/bulkhead";
/// The container's root, as the init sees it.
pub const ROOTFS: &str = "/run/bulkhead/rootfs";

/// The container's `/dev` and `/sys`, made at boot (see [`prepare`]) and moved into the root
/// at `Setup`.
const STAGED_DEV: &str = "/run/bulkhead/staged/dev";
const STAGED_SYS: &str = "/run/bulkhead/staged/sys";
/// Whether the staged trees are there to be moved.
static STAGED: AtomicBool = AtomicBool::new(false);
/// What [`premount`] mounted at [`ROOTFS`] and prepared in it, if it ran.
static PREMOUNTED: std::sync::Mutex<Option<Premounted>> = std::sync::Mutex::new(None);
/// Where the container's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` come from.
const ETC: &str = "/run/bulkhead/etc";
/// The files of [`ETC`].
const ETC_FILES: [&str; 3] = ["hosts", "hostname", "resolv.conf"];

#[derive(Clone)]
struct Premounted {
    device: String,
    /// The /etc files bound from [`ETC`] already.
    bound: Vec<&'static str>,
}

/// Largest file read from the image for lookups (`/etc/passwd`, `/etc/group`).
const MAX_READ: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("root filesystem type {0:?} is not supported (use erofs or ext4)")]
    FsType(String),
    #[error("a writable root disk must be ext4 and comes without a writable-layer device")]
    WritableRoot,
    #[error("another root is mounted already (the VM's template mounted one)")]
    Premounted,
    #[error("{what} {path:?} is not a block device")]
    NotBlockDevice { what: &'static str, path: String },
    #[error("hostname {0:?} is not valid: at most 64 bytes, no NUL or '/'")]
    Hostname(String),
    #[error("tmpfs {0:?} is not valid: expected an absolute path, optionally followed by :options")]
    TmpfsSpec(String),
    #[error("mounting {what} on {target}: {errno}")]
    Mount { what: String, target: String, errno: Errno },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("{what} {path:?} inside the container: {errno}")]
    InRoot { what: &'static str, path: String, errno: Errno },
}

/// A mounted container root.
pub struct Rootfs {
    /// [`ROOTFS`]: the path under which the init sees the container's files.
    path: PathBuf,
    /// An `O_PATH` descriptor of it, the anchor of every in-container lookup.
    root: OwnedFd,
    hostname: String,
}

impl Rootfs {
    /// The root as the init sees it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Opens `path` (absolute or not, it is inside the container) with symlinks and `..`
    /// resolved as if the container's root were `/`.
    pub fn open(&self, path: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        let path = path.trim_start_matches('/');
        let path = if path.is_empty() { "." } else { path };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(self.root.as_raw_fd(), path, how)?;
        // SAFETY: openat2 just returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The contents of a small file inside the container; `None` when it cannot be read.
    pub fn read(&self, path: &str) -> Option<String> {
        let mut text = String::new();
        self.open_regular(path)?.take(MAX_READ).read_to_string(&mut text).ok()?;
        Some(text)
    }

    /// Opens `path` for reading if it is a regular file. A FIFO or a device an image puts where
    /// a file is expected is refused without blocking.
    pub fn open_regular(&self, path: &str) -> Option<File> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        let file = File::from(self.open(path, flags, Mode::empty()).ok()?);
        file.metadata().ok()?.is_file().then_some(file)
    }

    /// Creates the directory `path` and its missing parents inside the container (as `mkdir -p`
    /// does, 0755) and returns it opened with `O_PATH`.
    pub fn ensure_dir(&self, path: &str) -> Result<OwnedFd, Errno> {
        let mut current = String::from("/");
        for part in path.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..") {
            let parent = self.open(&current, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())?;
            match mkdirat(Some(parent.as_raw_fd()), part, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            current.push_str(part);
            current.push('/');
        }
        self.open(&current, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
    }

    /// Where the init sees the file behind `fd`, which must be inside the container.
    pub fn host_path(&self, fd: &OwnedFd) -> Result<PathBuf, Errno> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        if link.starts_with(&self.path) {
            Ok(link)
        } else {
            Err(Errno::EXDEV)
        }
    }

    /// `ensure_dir` then `host_path`, for mount targets.
    fn mount_point(&self, path: &str) -> Result<PathBuf, SetupError> {
        let in_root = |errno| SetupError::InRoot { what: "creating mount point", path: path.into(), errno };
        let fd = self.ensure_dir(path).map_err(in_root)?;
        self.host_path(&fd).map_err(in_root)
    }

    /// Creates an empty file at `path` unless something is there, for a bind mount.
    fn file_mount_point(&self, path: &str) -> Result<PathBuf, SetupError> {
        let in_root = |errno| SetupError::InRoot { what: "creating mount point", path: path.into(), errno };
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.ensure_dir(parent).map_err(in_root)?;
        }
        let fd = self
            .open(path, OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_NOCTTY, Mode::from_bits_truncate(0o644))
            .map_err(in_root)?;
        self.host_path(&fd).map_err(in_root)
    }
}

/// Makes the container's `/dev` (a tmpfs with its device nodes, its own devpts instance and
/// `/dev/shm`) and `/sys` (read-only) before the container is known, so that a template holds
/// them already and `Setup` only moves them into place. Nothing in them belongs to a container:
/// the devpts instance has no terminals yet and the tmpfs holds only the fixed nodes.
pub fn prepare() -> Result<(), SetupError> {
    create_dir(STAGED_DEV)?;
    create_dir(STAGED_SYS)?;
    make_dev(Path::new(STAGED_DEV))?;
    mount_at("sysfs", STAGED_SYS, "sysfs", MsFlags::MS_RDONLY | nosuid_nodev_noexec(), None)?;
    STAGED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Mounts `device` (ext4) read-write at [`ROOTFS`] before the container is known, for an
/// image's template; `setup` then finds it mounted. Then reads `programs` (see [`warm`]).
pub fn premount(device: &str, programs: &[String], path_env: &str) -> Result<(), SetupError> {
    let mut premounted = PREMOUNTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if premounted.is_some() {
        return Err(SetupError::Premounted);
    }
    check_block_device("root device", device)?;
    for dir in [ETC, ROOTFS] {
        create_dir(dir)?;
    }
    mount_writable_root(device, "ext4")?;
    let rootfs = open_root(String::new())?;
    let bound = furnish(&rootfs)?;
    warm(&rootfs, programs, path_env);
    *premounted = Some(Premounted { device: device.to_owned(), bound });
    Ok(())
}

/// Most of a container's first `exec` under emulation is reading its program from disk. Reads
/// each of `programs` (looked up in `path_env`), the ELF interpreter it names and the C library
/// next to that, and the user database, so that a template holds them in its page cache. Best
/// effort: what cannot be found or read is skipped, and at most [`WARM_BYTES`] are read.
fn warm(rootfs: &Rootfs, programs: &[String], path_env: &str) {
    let path_env = if path_env.is_empty() { crate::container::DEFAULT_PATH } else { path_env };
    let mut files: Vec<String> = vec!["/etc/passwd".into(), "/etc/group".into()];
    for name in programs {
        let Ok(program) = crate::lookup::find_program(rootfs, name, path_env, "/") else { continue };
        if let Some(interpreter) = elf_interpreter(rootfs, &program) {
            if let Some((dir, _)) = interpreter.rsplit_once('/') {
                files.push(format!("{dir}/libc.so.6"));
            }
            files.push(interpreter);
        }
        files.push(program);
    }
    let mut budget = WARM_BYTES;
    let mut buf = vec![0u8; 1 << 16];
    for file in files {
        let Some(mut file) = rootfs.open_regular(&file) else { continue };
        while budget > 0 {
            match file.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n as u64),
            }
        }
    }
}

/// At most this much is read by [`warm`].
const WARM_BYTES: u64 = 64 << 20;

/// The `PT_INTERP` path of the ELF64 executable at `path` inside the container, if it has one.
fn elf_interpreter(rootfs: &Rootfs, path: &str) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let file = rootfs.open_regular(path)?;
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0).ok()?;
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u64_at = |b: &[u8], at: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(raw)
    };
    let (phoff, phentsize, phnum) =
        (u64_at(&header, 32), u64::from(u16_at(&header, 54)), u16_at(&header, 56));
    if phentsize < 56 {
        return None;
    }
    for index in 0..u64::from(phnum.min(64)) {
        let mut ph = [0u8; 56];
        file.read_exact_at(&mut ph, phoff.checked_add(index.checked_mul(phentsize)?)?).ok()?;
        // PT_INTERP: p_offset at 8, p_filesz at 32; the path is NUL-terminated.
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == 3 {
            let len = usize::try_from(u64_at(&ph, 32)).ok().filter(|&l| l > 1 && l <= 4096)?;
            let mut name = vec![0u8; len];
            file.read_exact_at(&mut name, u64_at(&ph, 8)).ok()?;
            let name = name.split(|&b| b == 0).next()?;
            return String::from_utf8(name.to_vec()).ok().filter(|n| n.starts_with('/'));
        }
    }
    None
}

fn open_root(hostname: String) -> Result<Rootfs, SetupError> {
    let root = File::open(ROOTFS).map_err(|source| SetupError::Io {
        what: "opening",
        path: ROOTFS.into(),
        source,
    })?;
    Ok(Rootfs { path: PathBuf::from(ROOTFS), root: root.into(), hostname })
}

/// What a root gets whatever container it is for: the `/proc` mount point, `/dev` and `/sys`
/// (the staged ones moved in), and `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` bound
/// to files in [`ETC`] that start with the image's own content, for `setup` to fill in. Returns
/// the /etc files it bound; one the image makes impossible to bind (a dangling symlink, say) is
/// left for `setup`, which binds it only if it has content for it.
fn furnish(rootfs: &Rootfs) -> Result<Vec<&'static str>, SetupError> {
    rootfs.mount_point("/proc")?;
    // Each staged tree moves once; a setup after one that failed past this point makes its own.
    let dev = rootfs.mount_point("/dev")?;
    if STAGED.swap(false, Ordering::SeqCst) {
        mount_at(STAGED_DEV, &dev, "", MsFlags::MS_MOVE, None)?;
        let sys = rootfs.mount_point("/sys")?;
        mount_at(STAGED_SYS, &sys, "", MsFlags::MS_MOVE, None)?;
    } else {
        make_dev(&dev)?;
        let sys = rootfs.mount_point("/sys")?;
        mount_at("sysfs", &sys, "sysfs", MsFlags::MS_RDONLY | nosuid_nodev_noexec(), None)?;
    }
    let mut bound = Vec::new();
    for name in ETC_FILES {
        let source = format!("{ETC}/{name}");
        let original = rootfs.read(&format!("/etc/{name}")).unwrap_or_default();
        std::fs::write(&source, original).map_err(|source_err| SetupError::Io {
            what: "writing",
            path: source.clone(),
            source: source_err,
        })?;
        if let Ok(target) = rootfs.file_mount_point(&format!("/etc/{name}")) {
            mount_at(&source, &target, "", MsFlags::MS_BIND, None)?;
            bound.push(name);
        }
    }
    Ok(bound)
}

/// The container's own copy-on-write disk as its root: one mount, no overlay. The host makes the
/// filesystem with uninitialised inode tables; `noinit_itable` keeps ext4 from zeroing them in
/// the background, which under emulation costs most of a CPU for minutes.
fn mount_writable_root(device: &str, fstype: &str) -> Result<(), SetupError> {
    mount_at(device, ROOTFS, fstype, MsFlags::MS_NOATIME, Some("noinit_itable"))
}

/// Mounts the container's root filesystem as `spec` describes.
pub fn setup(spec: &ContainerSpec) -> Result<Rootfs, SetupError> {
    let fstype = match spec.root_fstype.as_str() {
        "erofs" => "erofs",
        "ext4" => "ext4",
        other => return Err(SetupError::FsType(other.into())),
    };
    check_block_device("root device", &spec.root_device)?;
    if spec.root_writable && (spec.rw_device.is_some() || fstype != "ext4") {
        return Err(SetupError::WritableRoot);
    }
    if let Some(rw) = &spec.rw_device {
        check_block_device("writable-layer device", rw)?;
    }
    let hostname = if spec.hostname.is_empty() { "localhost".to_owned() } else { spec.hostname.clone() };
    if hostname.len() > 64 || hostname.contains(['\0', '/', '\n']) {
        return Err(SetupError::Hostname(spec.hostname.clone()));
    }
    let tmpfs = spec.tmpfs.iter().map(|t| TmpfsMount::parse(t)).collect::<Result<Vec<_>, _>>()?;

    for dir in [ETC, ROOTFS] {
        create_dir(dir)?;
    }
    let premounted = PREMOUNTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let bound = match premounted {
        // An image's template mounted and furnished this very disk (the host gave the container
        // a copy of the one the template saw): what the kernel holds of it is what it holds.
        Some(Premounted { device, bound }) if spec.root_writable && device == spec.root_device => bound,
        Some(_) => return Err(SetupError::Premounted),
        None => {
            // A VM restored from a template may hold blocks it read from placeholder disks.
            for device in std::iter::once(&spec.root_device).chain(spec.rw_device.as_ref()) {
                crate::identity::forget_block_cache(device).map_err(|source| SetupError::Io {
                    what: "dropping the block cache of",
                    path: device.into(),
                    source,
                })?;
            }
            if spec.root_writable {
                mount_writable_root(&spec.root_device, fstype)?;
            } else {
                mount_overlay(spec, fstype)?;
            }
            furnish(&open_root(String::new())?)?
        }
    };
    let rootfs = open_root(hostname)?;

    // The container's own /etc files: written into the files bound over the image's.
    let hosts = if spec.hosts.is_empty() {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            rootfs.hostname
        )
    } else {
        spec.hosts.clone()
    };
    let mut files = vec![("hosts", hosts), ("hostname", format!("{}\n", rootfs.hostname))];
    if !spec.resolv_conf.is_empty() {
        files.push(("resolv.conf", spec.resolv_conf.clone()));
    }
    for (name, contents) in files {
        let source = format!("{ETC}/{name}");
        std::fs::write(&source, contents).map_err(|source_err| SetupError::Io {
            what: "writing",
            path: source.clone(),
            source: source_err,
        })?;
        if !bound.contains(&name) {
            let target = rootfs.file_mount_point(&format!("/etc/{name}"))?;
            mount_at(&source, &target, "", MsFlags::MS_BIND, None)?;
        }
    }

    for t in &tmpfs {
        let target = rootfs.mount_point(&t.path)?;
        mount_at("tmpfs", &target, "tmpfs", t.flags, (!t.data.is_empty()).then_some(t.data.as_str()))?;
    }

    if spec.read_only {
        // Per-mount read-only: the mounts on top (/dev, tmpfs paths, /etc files) stay writable.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount_at(ROOTFS, ROOTFS, "", flags, None)?;
    }
    Ok(rootfs)
}

/// The image's disk read-only under an overlay whose upper layer is the writable-layer disk (or
/// a tmpfs), mounted at [`ROOTFS`].
fn mount_overlay(spec: &ContainerSpec, fstype: &str) -> Result<(), SetupError> {
    let lower = format!("{BASE}/lower");
    let rw = format!("{BASE}/rw");
    create_dir(&lower)?;
    create_dir(&rw)?;
    mount_at(&spec.root_device, &lower, fstype, MsFlags::MS_RDONLY, None)?;
    match &spec.rw_device {
        Some(dev) => mount_at(dev, &rw, "ext4", MsFlags::MS_NOATIME, Some("noinit_itable"))?,
        None => mount_at("tmpfs", &rw, "tmpfs", MsFlags::empty(), Some("mode=0755"))?,
    }
    let upper = format!("{rw}/upper");
    let work = format!("{rw}/work");
    create_dir(&upper)?;
    create_dir(&work)?;
    let options = format!("lowerdir={lower},upperdir={upper},workdir={work}");
    mount_at("overlay", ROOTFS, "overlay", MsFlags::empty(), Some(&options))
}

fn nosuid_nodev_noexec() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// A minimal `/dev` at `dev`: a tmpfs with the usual character devices and links, its own
/// devpts instance (so the container's ptys are its own) and `/dev/shm`.
fn make_dev(dev: &Path) -> Result<(), SetupError> {
    let dev_str = dev.display().to_string();
    mount_at("tmpfs", dev, "tmpfs", MsFlags::MS_NOSUID, Some("mode=0755,size=65536k"))?;
    const NODES: &[(&str, u64, u64)] =
        &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];
    for &(name, major, minor) in NODES {
        let path = dev.join(name);
        let io = |source| SetupError::Io {
            what: "creating device node",
            path: path.display().to_string(),
            source,
        };
        mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(major, minor))
            .map_err(|e| io(e.into()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(io)?;
    }
    const LINKS: &[(&str, &str)] = &[
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ];
    for &(name, target) in LINKS {
        let path = dev.join(name);
        std::os::unix::fs::symlink(target, &path).map_err(|source| SetupError::Io {
            what: "creating symlink",
            path: path.display().to_string(),
            source,
        })?;
    }
    let pts = format!("{dev_str}/pts");
    let shm = format!("{dev_str}/shm");
    create_dir(&pts)?;
    create_dir(&shm)?;
    mount_at(
        "devpts",
        &pts,
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_at("shm", &shm, "tmpfs", nosuid_nodev_noexec(), Some("mode=1777,size=65536k"))?;
    Ok(())
}

/// One `--tmpfs PATH[:OPTIONS]`. Options follow `mount -o`; the flags among them become mount
/// flags and the rest (`size=`, `mode=`, …) go to tmpfs. Docker's defaults: nosuid, nodev, noexec.
#[derive(Debug, PartialEq, Eq)]
struct TmpfsMount {
    path: String,
    flags: MsFlags,
    data: String,
}

impl TmpfsMount {
    fn parse(spec: &str) -> Result<TmpfsMount, SetupError> {
        let (path, options) = spec.split_once(':').unwrap_or((spec, ""));
        if !path.starts_with('/') || path.contains('\0') || options.contains('\0') {
            return Err(SetupError::TmpfsSpec(spec.into()));
        }
        let mut flags = nosuid_nodev_noexec();
        let mut data = Vec::new();
        for option in options.split(',').filter(|o| !o.is_empty()) {
            match option {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" => flags &= !MsFlags::MS_RDONLY,
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "suid" => flags &= !MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "dev" => flags &= !MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                "exec" => flags &= !MsFlags::MS_NOEXEC,
                "noatime" => flags |= MsFlags::MS_NOATIME,
                other => data.push(other),
            }
        }
        Ok(TmpfsMount { path: path.into(), flags, data: data.join(",") })
    }
}

fn check_block_device(what: &'static str, path: &str) -> Result<(), SetupError> {
    let not_block = || SetupError::NotBlockDevice { what, path: path.into() };
    if !path.starts_with("/dev/") || path.contains("..") {
        return Err(not_block());
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(not_block()),
        Err(source) => Err(SetupError::Io { what, path: path.into(), source }),
    }
}

fn create_dir(path: &str) -> Result<(), SetupError> {
    std::fs::create_dir_all(path).map_err(|source| SetupError::Io {
        what: "creating",
        path: path.into(),
        source,
    })
}

fn mount_at(
    source: &str,
    target: impl AsRef<Path>,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SetupError> {
    let target = target.as_ref();
    let fstype = (!fstype.is_empty()).then_some(fstype);
    mount(Some(source), target, fstype, flags, data).map_err(|errno| SetupError::Mount {
        what: match fstype {
            Some(t) => format!("{t} {source}"),
            None => format!("bind {source}"),
        },
        target: target.display().to_string(),
        errno,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_interpreters_are_found_and_garbage_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = |path: &Path| Rootfs {
            path: path.to_owned(),
            root: File::open(path).unwrap().into(),
            hostname: String::new(),
        };
        let host = root(Path::new("/"));
        assert_eq!(elf_interpreter(&host, "/bin/ls").as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(elf_interpreter(&host, "/bin/busybox"), None, "static");
        let fake = root(dir.path());
        for (name, bytes) in
            [("empty", &b""[..]), ("text", b"#!/bin/sh\necho hi\n"), ("short-elf", b"\x7fELF\x02\x01\x01")]
        {
            std::fs::write(dir.path().join(name), bytes).unwrap();
            assert_eq!(elf_interpreter(&fake, name), None, "{name}");
        }
        // A header whose program headers point far past the end.
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        header[54..56].copy_from_slice(&56u16.to_le_bytes());
        header[56..58].copy_from_slice(&9u16.to_le_bytes());
        std::fs::write(dir.path().join("wild"), &header).unwrap();
        assert_eq!(elf_interpreter(&fake, "wild"), None);
        // A FIFO where a file should be is skipped, not waited on.
        nix::unistd::mkfifo(&dir.path().join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert!(fake.open_regular("fifo").is_none());
        assert_eq!(fake.read("fifo"), None);
    }

    #[test]
    fn tmpfs_options_split_into_flags_and_data() {
        let t = TmpfsMount::parse("/run").unwrap();
        assert_eq!(t, TmpfsMount { path: "/run".into(), flags: nosuid_nodev_noexec(), data: String::new() });
        let t = TmpfsMount::parse("/scratch:exec,size=64m,mode=1777,ro").unwrap();
        assert_eq!(t.path, "/scratch");
        assert_eq!(t.flags, MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RDONLY);
        assert_eq!(t.data, "size=64m,mode=1777");
        assert!(TmpfsMount::parse("relative").is_err());
        assert!(TmpfsMount::parse("").is_err());
    }
}
