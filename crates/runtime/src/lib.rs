//! Containers and the VMs under them: store paths, the guest init and its initramfs, booting a
//! sandbox VM and talking to its agent, and the host check.

pub mod check;
pub mod container;
mod error;
pub mod guest;
pub mod host;
pub mod network;
pub mod paths;
pub mod sandbox;
pub mod session;
pub mod tcg;
pub mod template;

pub use error::Error;
pub use paths::Paths;
