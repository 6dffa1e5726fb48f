//! OCI references, a verified content store, kernel images, registry transfers, archive
//! load/save, safe layer unpack and read-only root disks.
//!
//! Everything that arrives from outside (registries, archives, layers) is hostile: digests and
//! sizes are checked before anything lands in the store, and unpacking never writes outside its
//! destination.
#![forbid(unsafe_code)]

pub mod archive;
pub mod auth;
mod compress;
mod digest;
pub mod disk;
mod error;
mod images;
pub mod kernel;
pub mod media;
pub mod platform;
mod reference;
pub mod registry;
mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::Error;
pub use images::{ImageInfo, ImageSummary, PruneReport, RunConfig};
pub use reference::Reference;
pub use store::{BlobWriter, ImageEntry, ImageKind, Store, VerifyingReader};
