//! OCI references, a verified content store, kernel images, registry transfers, archive
//! load/save, safe layer unpack and read-only root disks.
//!
//! Everything that arrives from outside (registries, archives, layers) is hostile: digests and
//! sizes are checked before anything lands in the store, and unpacking never writes outside its
//! destination.
#![forbid(unsafe_code)]

mod compress;
mod digest;
mod error;
pub mod kernel;
pub mod media;
mod reference;
mod store;

pub use digest::Digest;
pub use error::Error;
pub use reference::Reference;
pub use store::{BlobWriter, ImageEntry, ImageKind, Store, VerifyingReader};
