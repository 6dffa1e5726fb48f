//! The content store: blobs by digest under `content/sha256/`, written temp → fsync → rename and
//! verified on write, plus `images.json` mapping references to manifest digests.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::ImageManifest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use crate::{media, Digest, Error, Reference};

/// Manifests, indexes and configs larger than this are refused.
pub const MAX_DOCUMENT_SIZE: u64 = 8 << 20;

/// A content store opened on its root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What an image in the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// A container image.
    Image,
    /// A bulkhead guest kernel.
    Kernel,
}

/// One reference in the store's index.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    /// The normalized reference (`docker.io/library/busybox:latest`).
    pub reference: Reference,
    /// The image manifest digest.
    pub digest: Digest,
    /// The index digest it was selected from, when pulled through a multi-platform index.
    pub index_digest: Option<Digest>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    pub images: BTreeMap<String, IndexEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_default: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
}

impl Store {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Store, Error> {
        let store = Store { root: root.to_owned() };
        for dir in [store.blob_dir(), store.tmp_dir(), store.root.join("disks"), store.root.join("kernels")] {
            fs::create_dir_all(&dir).map_err(|e| Error::io("creating store directory", &dir, e))?;
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("content").join("sha256")
    }

    /// Scratch space on the store's filesystem, so finished files can be renamed into place.
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The path a blob lives at (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// Whether the store holds the blob.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The stored size of a blob.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64, Error> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobNotFound(digest.to_string())),
            Err(e) => Err(Error::io("reading metadata of", path, e)),
        }
    }

    /// Starts writing a blob whose digest is computed as it is written.
    pub fn blob_writer(&self) -> Result<BlobWriter, Error> {
        let file = NamedTempFile::new_in(self.tmp_dir())
            .map_err(|e| Error::io("creating temporary blob in", self.tmp_dir(), e))?;
        Ok(BlobWriter {
            store: self.clone(),
            file: BufWriter::with_capacity(256 << 10, file),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Writes `data` as a blob; if `expected` is given the data must hash to it.
    pub fn write_blob(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest, Error> {
        if let Some(d) = expected {
            if self.has_blob(d) {
                let actual = Digest::of(data);
                if &actual != d {
                    return Err(Error::DigestMismatch {
                        what: "blob".into(),
                        expected: d.to_string(),
                        actual: actual.to_string(),
                    });
                }
                return Ok(actual);
            }
        }
        let mut w = self.blob_writer()?;
        w.write_all(data).map_err(|e| Error::io("writing blob to", self.tmp_dir(), e))?;
        w.commit(expected, Some(data.len() as u64), "blob")
    }

    /// Opens a blob for reading; the reader fails at end of file if the content does not match.
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifyingReader, Error> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::BlobNotFound(digest.to_string()))
            }
            Err(e) => return Err(Error::io("opening blob", path, e)),
        };
        Ok(VerifyingReader {
            inner: BufReader::with_capacity(256 << 10, file),
            hasher: Sha256::new(),
            expected: digest.clone(),
            checked: false,
        })
    }

    /// Reads a whole blob (at most `limit` bytes) and verifies its digest.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, Error> {
        let size = self.blob_size(digest)?;
        if size > limit {
            return Err(Error::TooLarge { what: format!("blob {digest}"), size, limit });
        }
        let path = self.blob_path(digest);
        let data = fs::read(&path).map_err(|e| Error::io("reading blob", &path, e))?;
        let actual = Digest::of(&data);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("stored blob {}", path.display()),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(data)
    }

    /// Reads and parses an image manifest blob.
    pub fn read_manifest(&self, digest: &Digest) -> Result<ImageManifest, Error> {
        let data = self.read_blob(digest, MAX_DOCUMENT_SIZE)?;
        serde_json::from_slice(&data).map_err(|e| Error::json(format!("manifest {digest}"), e))
    }

    /// Every reference in the index, sorted.
    pub fn list(&self) -> Result<Vec<ImageEntry>, Error> {
        let index = self.read_index()?;
        let mut out = Vec::with_capacity(index.images.len());
        for (name, entry) in &index.images {
            out.push(ImageEntry {
                reference: Reference::parse(name)?,
                digest: Digest::parse(&entry.digest)?,
                index_digest: entry.index_digest.as_deref().map(Digest::parse).transpose()?,
            });
        }
        Ok(out)
    }

    /// The manifest digest a reference points to. Accepts a reference, a full digest, or a
    /// unique prefix of at least 4 hex digits of a stored image's digest.
    pub fn lookup(&self, reference: &str) -> Result<(Reference, Digest), Error> {
        let index = self.read_index()?;
        if let Ok(r) = Reference::parse(reference) {
            if let Some(e) = index.images.get(&r.to_string()) {
                return Ok((r, Digest::parse(&e.digest)?));
            }
            if let Some(d) = r.digest() {
                if let Some((name, _)) =
                    index.images.iter().find(|(n, e)| e.digest == d.as_str() && n.starts_with(&r.name()))
                {
                    return Ok((Reference::parse(name)?, d.clone()));
                }
            }
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found: Vec<(&String, &IndexEntry)> = index
                .images
                .iter()
                .filter(|(_, e)| e.digest["sha256:".len()..].starts_with(prefix))
                .collect();
            found.dedup_by(|a, b| a.1.digest == b.1.digest);
            if let [(name, e)] = found.as_slice() {
                return Ok((Reference::parse(name)?, Digest::parse(&e.digest)?));
            }
        }
        Err(Error::ImageNotFound(reference.to_owned()))
    }

    /// The kind of image a manifest describes.
    pub fn kind_of(manifest: &ImageManifest) -> ImageKind {
        let kernel = manifest.annotations().as_ref().is_some_and(|a| {
            a.get(media::ANNOTATION_KIND).is_some_and(|k| k == "kernel")
                || a.contains_key(media::ANNOTATION_KERNEL_VERSION)
        });
        if kernel {
            ImageKind::Kernel
        } else {
            ImageKind::Image
        }
    }

    /// Points `reference` at `digest` in the index.
    pub fn set_reference(
        &self,
        reference: &Reference,
        digest: &Digest,
        index_digest: Option<&Digest>,
    ) -> Result<(), Error> {
        self.update_index(|idx| {
            idx.images.insert(
                reference.to_string(),
                IndexEntry { digest: digest.to_string(), index_digest: index_digest.map(|d| d.to_string()) },
            );
            Ok(())
        })
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    pub(crate) fn read_index(&self) -> Result<Index, Error> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| Error::json(path.display().to_string(), e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(Error::io("reading", path, e)),
        }
    }

    /// Serializes a read-modify-write of `images.json` under an exclusive lock; the new index
    /// replaces the old atomically.
    pub(crate) fn update_index<R>(&self, f: impl FnOnce(&mut Index) -> Result<R, Error>) -> Result<R, Error> {
        let _lock = self.lock("images.lock")?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        let data = serde_json::to_vec_pretty(&index).map_err(|e| Error::json("index", e))?;
        write_atomic(&self.index_path(), &data)?;
        Ok(out)
    }

    /// The store-wide write lock: shared by anything that adds content (pull, load, import),
    /// exclusive for `prune`, so garbage collection never deletes blobs of a transfer in flight.
    pub fn gc_lock(&self, exclusive: bool) -> Result<Flock<File>, Error> {
        let path = self.root.join("gc.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening lock file", &path, e))?;
        let arg = if exclusive { FlockArg::LockExclusive } else { FlockArg::LockShared };
        Flock::lock(file, arg).map_err(|(_, errno)| Error::io("locking", path, errno.into()))
    }

    /// Takes an exclusive lock on `<root>/<name>`, held until the returned guard drops.
    pub(crate) fn lock(&self, name: &str) -> Result<Flock<File>, Error> {
        let path = self.root.join(name);
        lock_file(&path)
    }
}

/// Takes an exclusive `flock` on `path` (created if needed).
pub(crate) fn lock_file(path: &Path) -> Result<Flock<File>, Error> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening lock file", path, e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::io("locking", path, errno.into()))
}

/// Writes `data` to `path` via a temporary file in the same directory, fsync and rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = NamedTempFile::new_in(dir).map_err(|e| Error::io("creating temporary file in", dir, e))?;
    tmp.write_all(data).map_err(|e| Error::io("writing", tmp.path().to_owned(), e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io("syncing", tmp.path().to_owned(), e))?;
    tmp.persist(path).map_err(|e| Error::io("renaming into", path, e.error))?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("syncing directory", dir, e))
}

/// Writes a blob into a temporary file while hashing it; [`BlobWriter::commit`] checks digest
/// and size before the blob appears in the store, so a partial or corrupt blob never does.
pub struct BlobWriter {
    store: Store,
    file: BufWriter<NamedTempFile>,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    /// The digest of what has been written so far.
    pub fn hasher_clone(&self) -> Sha256 {
        self.hasher.clone()
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies the content against `expected` digest and size (when given), then fsyncs and
    /// renames it into the store. `what` names the blob in errors.
    pub fn commit(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<Digest, Error> {
        let actual = Digest::from_hasher(self.hasher);
        if let Some(size) = expected_size {
            if size != self.size {
                return Err(Error::SizeMismatch { what: what.to_owned(), expected: size, actual: self.size });
            }
        }
        if let Some(d) = expected {
            if *d != actual {
                return Err(Error::DigestMismatch {
                    what: what.to_owned(),
                    expected: d.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        let tmp = self
            .file
            .into_inner()
            .map_err(|e| Error::io("flushing temporary blob", self.store.tmp_dir(), e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| Error::io("syncing", tmp.path().to_owned(), e))?;
        let dest = self.store.blob_path(&actual);
        tmp.persist(&dest).map_err(|e| Error::io("renaming blob into", &dest, e.error))?;
        sync_dir(&self.store.blob_dir())?;
        Ok(actual)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Reads a stored blob, hashing as it goes; reaching end of file with the wrong digest is an
/// `InvalidData` error, so consumers that read to the end never accept corrupt content.
pub struct VerifyingReader {
    inner: BufReader<File>,
    hasher: Sha256,
    expected: Digest,
    checked: bool,
}

impl VerifyingReader {
    /// Reads the rest of the blob and checks its digest.
    pub fn finish(mut self) -> Result<(), Error> {
        let expected = self.expected.clone();
        io::copy(&mut self, &mut io::sink())
            .map(|_| ())
            .map_err(|e| Error::Manifest(format!("verifying blob {expected}: {e}")))
    }
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.checked {
            self.checked = true;
            let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("stored blob {} is corrupt: its content hashes to {actual}", self.expected),
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_on_write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.write_blob(b"hello", None).unwrap();
        assert_eq!(store.read_blob(&d, 100).unwrap(), b"hello");
        let wrong = Digest::of(b"other");
        assert!(matches!(store.write_blob(b"hello", Some(&wrong)), Err(Error::DigestMismatch { .. })));
        assert!(!store.has_blob(&wrong));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0, "temporary files left behind");
        fs::write(store.blob_path(&d), b"hellO").unwrap();
        assert!(matches!(store.read_blob(&d, 100), Err(Error::DigestMismatch { .. })));
        let mut r = store.open_blob(&d).unwrap();
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn index_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.write_blob(b"{}", None).unwrap();
        let r = Reference::parse("busybox").unwrap();
        store.set_reference(&r, &d, None).unwrap();
        assert_eq!(store.lookup("busybox:latest").unwrap().1, d);
        assert_eq!(store.lookup(&d.hex()[..8]).unwrap().1, d);
        assert!(matches!(store.lookup("nothere"), Err(Error::ImageNotFound(_))));
    }
}
