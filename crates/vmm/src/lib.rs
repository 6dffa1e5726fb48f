//! One microVM on QEMU.
//!
//! [`Vm::start`] builds the `qemu-system-x86_64 -M microvm` command line from a [`VmConfig`]
//! (direct kernel boot, initramfs, command line, memory, vCPUs, virtio-blk disks, the agent
//! channel, the console), starts QEMU, and connects QMP and the agent channel. The caller speaks
//! whatever protocol it likes over [`Vm::agent`]; this crate knows nothing of containers.
//!
//! Both host-side sockets are listeners *we* create before QEMU starts; QEMU connects to them as a
//! client. So there is no polling for QEMU's sockets, and they are ours to remove. QEMU gets
//! `PR_SET_PDEATHSIG`, so it dies with the process that started it, whatever kills that process.

mod accel;
mod config;
mod console;
mod elf;
mod error;
mod net;
mod qemu;
mod qmp;
mod vm;

pub use accel::{choose_accel, Accel, AccelChoice, AccelRequest, HostFacts};
pub use config::{Disk, DiskFormat, MemoryFile, VmConfig};
pub use config::{MAX_VCPUS, MIN_MEMORY_MIB};
pub use console::find_panic;
pub use elf::check_kernel;
pub use error::Error;
pub use net::{HostForward, NetDevice, USER_DNS, USER_GATEWAY, USER_GUEST_ADDRESS, USER_PREFIX_LEN};
pub use qemu::{find_qemu, qemu_version};
pub use vm::{StartTimes, Vm};
