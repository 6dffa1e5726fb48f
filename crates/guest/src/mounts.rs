//! The filesystems every guest gets before anything else runs.

use nix::mount::{mount, MsFlags};

use crate::Error;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// In order: each target's parent is mounted before it.
const MOUNTS: &[Mount] = &[
    Mount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: None },
    Mount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: None },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    Mount {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// Moves the init's root from the initramfs onto a tmpfs, as `switch_root` does.
///
/// The kernel's initramfs is the root of the mount tree, and `pivot_root` refuses to move that
/// one away: with the init rooted on a tmpfs mounted over it instead, each container's main
/// process can `pivot_root` into its root filesystem and detach everything else.
pub fn leave_initramfs() -> Result<(), Error> {
    use nix::unistd::{chdir, chroot};
    const NEW_ROOT: &str = "/sysroot";
    let fail = |step| move |source| Error::SwitchRoot { step, source };
    std::fs::create_dir_all(NEW_ROOT).map_err(|source| Error::Mkdir { path: NEW_ROOT.into(), source })?;
    mount(Some("rootfs"), NEW_ROOT, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
        .map_err(fail("mounting a tmpfs"))?;
    chdir(NEW_ROOT).map_err(fail("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(fail("moving the tmpfs to /"))?;
    chroot(".").map_err(fail("chroot"))?;
    chdir("/").map_err(fail("chdir"))
}

/// Mounts `/proc`, `/sys`, `/dev`, `/dev/pts`, `/dev/shm`, `/run` and the cgroup2 hierarchy.
pub fn mount_all() -> Result<(), Error> {
    for m in MOUNTS {
        std::fs::create_dir_all(m.target).map_err(|source| Error::Mkdir { path: m.target.into(), source })?;
        mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data).map_err(|source| Error::Mount {
            fstype: m.fstype,
            target: m.target,
            source,
        })?;
    }
    Ok(())
}
