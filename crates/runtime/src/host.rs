//! What this host offers, without booting anything (`bulkhead info`).

use std::path::PathBuf;

use bulkhead_vmm::{choose_accel, find_qemu, qemu_version, AccelChoice, AccelRequest, HostFacts};
use serde::Serialize;

use crate::{guest, Paths};

/// The host facts bulkhead depends on. Each lookup that failed carries its error text instead.
#[derive(Debug, Serialize)]
pub struct HostInfo {
    pub bulkhead_version: String,
    pub qemu: Result<QemuInfo, String>,
    pub host: HostFacts,
    pub accelerator: Result<AccelChoice, String>,
    pub default_kernel: Result<KernelInfo, String>,
    pub guest_init: Result<PathBuf, String>,
    pub store_root: PathBuf,
    pub run_root: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct QemuInfo {
    pub path: PathBuf,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct KernelInfo {
    pub reference: String,
    pub version: String,
    pub digest: String,
}

/// Looks everything up; never fails as a whole.
pub fn info(paths: &Paths, accel: AccelRequest) -> HostInfo {
    let host = HostFacts::probe();
    HostInfo {
        bulkhead_version: env!("CARGO_PKG_VERSION").into(),
        qemu: qemu().map_err(|e| e.to_string()),
        accelerator: choose_accel(accel, &host).map_err(|e| e.to_string()),
        host,
        default_kernel: default_kernel(paths).map_err(|e| e.to_string()),
        guest_init: guest::find_guest_binary().map_err(|e| e.to_string()),
        store_root: paths.root.clone(),
        run_root: paths.run_root.clone(),
    }
}

pub(crate) fn qemu() -> Result<QemuInfo, bulkhead_vmm::Error> {
    let path = find_qemu()?;
    let version = qemu_version(&path)?;
    Ok(QemuInfo { path, version })
}

fn default_kernel(paths: &Paths) -> Result<KernelInfo, crate::Error> {
    let store = bulkhead_image::Store::open(&paths.root)?;
    let default = bulkhead_image::kernel::list(&store)?
        .into_iter()
        .find(|k| k.is_default)
        .ok_or_else(|| crate::Error::NoDefaultKernel { root: paths.root.clone() })?;
    Ok(KernelInfo { reference: default.reference, version: default.version, digest: default.digest })
}
