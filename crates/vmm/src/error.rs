use std::path::PathBuf;

/// What went wrong with a VM, with the value that made it go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("QEMU not found: no {binary} in {searched} (install the qemu-system-x86 package or set BULKHEAD_QEMU)")]
    QemuNotFound { binary: String, searched: String },
    #[error("QEMU at {path} is not usable: {reason}")]
    QemuUnusable { path: PathBuf, reason: String },
    #[error("kernel {0} does not exist")]
    KernelMissing(PathBuf),
    #[error("kernel {path} is not a bootable x86_64 vmlinux: {reason}")]
    NotAKernel { path: PathBuf, reason: String },
    #[error("initramfs {0} does not exist")]
    InitrdMissing(PathBuf),
    #[error("disk {0} does not exist")]
    DiskMissing(PathBuf),
    #[error("accelerator {accel} is not available: {reason}")]
    AccelUnavailable { accel: &'static str, reason: String },
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting QEMU {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited ({status}) before {stage}{detail}")]
    QemuExited { status: String, stage: &'static str, detail: String },
    #[error("QEMU did not {stage} within {seconds} s")]
    Timeout { stage: &'static str, seconds: u64 },
    #[error("guest kernel panicked: {0}")]
    GuestPanic(String),
    #[error("QMP: {0}")]
    Qmp(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
