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

/// Replaces the small cache file `path` with `contents` (temporary file, rename), creating its
/// directory. Best effort: a cache that cannot be written only costs recomputing its value.
pub(crate) fn write_cache_file(path: &Path, contents: &str) {
    use std::io::Write;
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_ok() {
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
            if tmp.write_all(contents.as_bytes()).is_ok() {
                let _ = tmp.persist(path);
            }
        }
    }
}
