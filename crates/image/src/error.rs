//! The crate's error type: every variant names what failed and with which value.

use std::path::PathBuf;

/// Errors from the image crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{op} {path}: {err}")]
    Io { op: &'static str, path: PathBuf, err: std::io::Error },
    /// A digest string is malformed or uses an unsupported algorithm.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    /// An image reference could not be parsed.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: &'static str },
    /// Content did not hash to the digest it claims.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    /// Content size differs from its descriptor.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    /// A blob is missing from the store.
    #[error("blob {0} is not in the store")]
    BlobNotFound(String),
    /// A reference is not in the store.
    #[error("image {0} not found in the store")]
    ImageNotFound(String),
    /// A JSON document (manifest, config, index) is malformed.
    #[error("malformed {what}: {err}")]
    Json { what: String, err: serde_json::Error },
    /// A document or blob exceeded a size bound.
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge { what: String, size: u64, limit: u64 },
    /// A kernel file or kernel image is not acceptable.
    #[error("{0}")]
    Kernel(String),
    /// Manifest content we do not handle.
    #[error("{0}")]
    Manifest(String),
    /// A layer entry was rejected while unpacking.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Unpack { layer: String, entry: String, reason: String },
    /// An archive (docker-archive, oci-archive, OCI layout) is malformed.
    #[error("archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    /// A registry operation failed.
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },
    /// Input that is not acceptable, with the reason.
    #[error("{0}")]
    Invalid(String),
    /// An external tool (mke2fs, debugfs) failed.
    #[error("{tool} failed: {reason}")]
    Tool { tool: &'static str, reason: String },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), err: source }
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json { what: what.into(), err: source }
    }
}
