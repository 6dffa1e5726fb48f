//! Where bulkhead keeps things (DESIGN.md, "Store").

use std::path::{Path, PathBuf};

/// The store root (persistent) and the run root (per boot of the host).
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub run_root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>, run_root: impl Into<PathBuf>) -> Paths {
        Paths { root: root.into(), run_root: run_root.into() }
    }

    /// Derived files that can be rebuilt at any time (initramfs images, extracted kernels).
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
