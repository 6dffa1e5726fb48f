use std::path::PathBuf;

use crate::Accel;

/// A virtio-blk disk backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
    pub format: DiskFormat,
}

impl Disk {
    /// A raw disk image.
    pub fn raw(path: impl Into<PathBuf>, read_only: bool) -> Disk {
        Disk { path: path.into(), read_only, format: DiskFormat::Raw }
    }

    /// The size the guest sees: the file's for a raw image, the virtual size in the header for
    /// qcow2.
    pub fn guest_size(&self) -> Result<u64, crate::Error> {
        let io = |e| crate::Error::Io { what: "reading disk", path: self.path.clone(), source: e };
        match self.format {
            DiskFormat::Raw => Ok(std::fs::metadata(&self.path).map_err(io)?.len()),
            DiskFormat::Qcow2 => {
                use std::io::Read;
                // QFI\xfb, version, backing file offset and size, cluster bits, then the size.
                let mut header = [0u8; 32];
                std::fs::File::open(&self.path).and_then(|mut f| f.read_exact(&mut header)).map_err(io)?;
                if header[..4] != *b"QFI\xfb" {
                    return Err(crate::Error::InvalidConfig(format!(
                        "disk {} is not a qcow2 image",
                        self.path.display()
                    )));
                }
                let mut size = [0u8; 8];
                size.copy_from_slice(&header[24..32]);
                Ok(u64::from_be_bytes(size))
            }
        }
    }
}

/// How a disk's file stores its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    /// Copy-on-write over a backing file named in its header (each container's root disk).
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Everything that shapes one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// `qemu-system-x86_64`; found on `PATH` (or `BULKHEAD_QEMU`) when `None`.
    pub qemu: Option<PathBuf>,
    /// An uncompressed x86_64 `vmlinux` with a PVH entry note.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to the command line this crate needs (console, reboot and panic behaviour).
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Attached in order: the guest sees them as `/dev/vda`, `/dev/vdb`, …
    pub disks: Vec<Disk>,
    pub accel: Accel,
    /// A directory the caller owns for this VM's sockets and QEMU's stderr; it must exist.
    pub run_dir: PathBuf,
    /// Where the guest's serial console is written.
    pub console_log: PathBuf,
    /// The network card, if any (`-nodefaults` gives the guest none otherwise).
    pub net: Option<crate::NetDevice>,
    /// Restore the VM from this saved state (see [`crate::Vm::save`]) instead of booting it.
    /// The rest of the configuration must describe the same machine the state was saved from.
    pub incoming: Option<PathBuf>,
    /// Guest RAM in a file instead of anonymous memory (see [`MemoryFile`]).
    pub memory_file: Option<MemoryFile>,
}

/// Guest RAM backed by a file of exactly the VM's memory size.
///
/// A VM saved with `shared` RAM leaves its memory in the file and only its device state in the
/// saved state (QEMU's `x-ignore-shared`); a VM restored with the same file unshared maps it
/// privately: it starts with that memory without reading it, pages it never writes stay shared
/// with every other VM restored from the file (the host's page cache), and what it writes is its
/// own and never reaches the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryFile {
    pub path: PathBuf,
    pub shared: bool,
}

/// Below this the kernel and init do not come up.
pub const MIN_MEMORY_MIB: u32 = 64;
/// The microvm machine's limit with an MP table and no ACPI.
pub const MAX_VCPUS: u32 = 32;

impl VmConfig {
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        use crate::Error::InvalidConfig;
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(InvalidConfig(format!(
                "memory {} MiB is below the {MIN_MEMORY_MIB} MiB the guest kernel needs",
                self.memory_mib
            )));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(InvalidConfig(format!("vCPU count {} is outside 1..={MAX_VCPUS}", self.vcpus)));
        }
        if self.cmdline.contains('\n') {
            return Err(InvalidConfig("kernel command line contains a newline".into()));
        }
        if !self.kernel.exists() {
            return Err(crate::Error::KernelMissing(self.kernel.clone()));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.exists() {
                return Err(crate::Error::InitrdMissing(initrd.clone()));
            }
        }
        for disk in &self.disks {
            if !disk.path.exists() {
                return Err(crate::Error::DiskMissing(disk.path.clone()));
            }
            // QEMU's -drive syntax splits on commas; a path with one would be misparsed.
            if disk.path.to_string_lossy().contains(',') {
                return Err(InvalidConfig(format!("disk path {} contains a comma", disk.path.display())));
            }
        }
        if let Some(net) = &self.net {
            net.validate()?;
        }
        for path in [&self.kernel, &self.run_dir, &self.console_log] {
            if path.to_string_lossy().contains(',') {
                return Err(InvalidConfig(format!(
                    "path {} contains a comma, which QEMU options cannot carry",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_sizes_come_from_the_file_or_the_qcow2_header_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.img");
        std::fs::File::create(&raw).unwrap().set_len(3 << 20).unwrap();
        assert_eq!(Disk::raw(&raw, false).guest_size().unwrap(), 3 << 20);

        // A real qcow2 image over the raw one, as containers get.
        let cow = dir.path().join("cow.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&raw)
            .arg(&cow)
            .status()
            .expect("qemu-img (qemu-utils) is installed");
        assert!(made.success());
        let qcow2 = |path: &std::path::Path| Disk {
            path: path.to_owned(),
            read_only: false,
            format: DiskFormat::Qcow2,
        };
        assert_eq!(qcow2(&cow).guest_size().unwrap(), 3 << 20);

        for (name, bytes) in
            [("empty", &b""[..]), ("short", b"QFI\xfb\0\0\0\x03"), ("raw-bytes", &[0u8; 64][..])]
        {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = qcow2(&path).guest_size().unwrap_err().to_string();
            assert!(err.contains(name) && !err.contains('\n'), "{err}");
        }
        assert!(qcow2(&dir.path().join("missing")).guest_size().is_err());
    }
}
