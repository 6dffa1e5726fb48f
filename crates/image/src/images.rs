//! Images in the store: resolving a reference to its manifest and run configuration, listing,
//! tagging, removal and garbage collection.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Serialize;

use crate::store::{IndexEntry, MAX_DOCUMENT_SIZE};
use crate::{media, Digest, Error, ImageKind, Reference, Store};

/// What the runtime needs to start a container from an image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The reference the image was found under.
    pub reference: Reference,
    /// Manifest digest: the image's identity, and the key of its root disk.
    pub digest: Digest,
    /// Config blob digest (Docker's "image id").
    pub config_digest: Digest,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// The full parsed OCI image configuration.
    pub image_config: ImageConfiguration,
    /// The process defaults from the configuration, with absent fields empty.
    pub config: RunConfig,
    /// Container image or kernel.
    pub kind: ImageKind,
}

/// Process defaults of an image (`config` in the OCI image configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir` (empty: `/`).
    pub working_dir: String,
    /// `User` (empty: root).
    pub user: String,
    /// `ExposedPorts`, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
}

/// One row of `bulkhead images`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Familiar repository name (`busybox`, `127.0.0.1:5000/x`).
    pub repository: String,
    /// Tag, or `<none>` for a digest-only reference.
    pub tag: String,
    /// Config digest (Docker's image id).
    pub id: String,
    /// Manifest digest.
    pub digest: String,
    /// Bytes of manifest, config and layers (compressed, as stored).
    pub size: u64,
    /// `created` from the configuration.
    pub created: Option<String>,
    /// `image` or `kernel`.
    pub kind: ImageKind,
}

/// What `prune` removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    /// Blobs deleted.
    pub blobs: usize,
    /// Root disks and extracted kernels deleted.
    pub caches: usize,
    /// Bytes freed.
    pub bytes: u64,
}

impl Store {
    /// Resolves a reference (or digest, or unique digest prefix) to its manifest and config.
    pub fn resolve_image(&self, reference: &str) -> Result<ImageInfo, Error> {
        let (reference, digest) = self.lookup(reference)?;
        let manifest = self.read_manifest(&digest)?;
        let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
        let data = self.read_blob(&config_digest, MAX_DOCUMENT_SIZE)?;
        let image_config: ImageConfiguration = serde_json::from_slice(&data)
            .map_err(|e| Error::json(format!("image config {config_digest}"), e))?;
        let config = run_config(&image_config);
        let kind = Store::kind_of(&manifest);
        Ok(ImageInfo { reference, digest, config_digest, manifest, image_config, config, kind })
    }

    /// Every stored reference with its size and creation time.
    pub fn images(&self) -> Result<Vec<ImageSummary>, Error> {
        let mut out = Vec::new();
        for entry in self.list()? {
            let info = self.resolve_image(&entry.reference.to_string())?;
            let size = self.blob_size(&info.digest)?
                + info.manifest.config().size()
                + info.manifest.layers().iter().map(|l| l.size()).sum::<u64>();
            out.push(ImageSummary {
                repository: entry.reference.familiar_name(),
                tag: entry.reference.tag().unwrap_or("<none>").to_owned(),
                id: info.config_digest.to_string(),
                digest: info.digest.to_string(),
                size,
                created: info.image_config.created().clone(),
                kind: info.kind,
            });
        }
        Ok(out)
    }

    /// Adds `target` as another reference to the image `source` names.
    pub fn tag(&self, source: &str, target: &str) -> Result<Reference, Error> {
        let (src, digest) = self.lookup(source)?;
        let target = Reference::parse(target)?;
        let index_digest =
            self.read_index()?.images.get(&src.to_string()).and_then(|e| e.index_digest.clone());
        self.update_index(|idx| {
            idx.images.insert(target.to_string(), IndexEntry { digest: digest.to_string(), index_digest });
            Ok(())
        })?;
        Ok(target)
    }

    /// Removes a reference. Given a digest or id prefix naming an image with several references,
    /// removes them all only when `force` is set. Blobs stay until [`Store::prune`].
    pub fn remove_image(&self, reference: &str, force: bool) -> Result<Vec<Reference>, Error> {
        let (found, digest) = self.lookup(reference)?;
        let by_name = Reference::parse(reference).is_ok_and(|r| r.to_string() == found.to_string());
        self.update_index(|idx| {
            let names: Vec<String> = if by_name {
                vec![found.to_string()]
            } else {
                idx.images
                    .iter()
                    .filter(|(_, e)| e.digest == digest.as_str())
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            if names.len() > 1 && !force {
                return Err(Error::Invalid(format!(
                    "image {reference} is referenced by {} names ({}); remove them by name or force",
                    names.len(),
                    names.join(", ")
                )));
            }
            let mut removed = Vec::new();
            for n in names {
                idx.images.remove(&n);
                if idx.kernel_default.as_deref() == Some(n.as_str()) {
                    idx.kernel_default = None;
                }
                removed.push(Reference::parse(&n)?);
            }
            Ok(removed)
        })
    }

    /// Deletes blobs, root disks and extracted kernels no reference needs. Holds the store's
    /// write lock exclusively, so it waits for pulls and imports in flight and they wait for it.
    pub fn prune(&self) -> Result<PruneReport, Error> {
        self.prune_keeping(&HashSet::new())
    }

    /// [`Store::prune`], but the root disks and extracted kernels of the images named in `keep`
    /// (digest hex) stay even when no reference names them: containers use them (a container's
    /// disk is copy-on-write over its image's root disk).
    pub fn prune_keeping(&self, keep: &HashSet<String>) -> Result<PruneReport, Error> {
        let _gc = self.gc_lock(true)?;
        let _index = self.lock("images.lock")?;
        let index = self.read_index()?;
        let mut live: HashSet<String> = HashSet::new();
        let mut live_images: HashSet<String> = keep.clone();
        for entry in index.images.values() {
            let digest = Digest::parse(&entry.digest)?;
            live_images.insert(digest.hex().to_owned());
            self.mark(&digest, &mut live)?;
            if let Some(i) = &entry.index_digest {
                let d = Digest::parse(i)?;
                live.insert(d.hex().to_owned());
            }
        }
        let mut report = PruneReport::default();
        let blob_dir = self.root().join("content").join("sha256");
        for e in fs::read_dir(&blob_dir).map_err(|e| Error::io("listing", &blob_dir, e))? {
            let e = e.map_err(|e| Error::io("listing", &blob_dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                remove_path(&e.path())?;
                report.blobs += 1;
            }
        }
        // `.img` disks are an older, read-only layout, removed with their image like the others.
        for (dir, suffix) in [("disks", ".ext4"), ("disks", ".img"), ("kernels", "")] {
            let dir = self.root().join(dir);
            for e in fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))? {
                let e = e.map_err(|e| Error::io("listing", &dir, e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(hex) = name.strip_suffix(suffix) else {
                    continue;
                };
                if !live_images.contains(hex) {
                    report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                    remove_path(&e.path())?;
                    report.caches += 1;
                }
            }
        }
        let tmp = self.tmp_dir();
        for e in fs::read_dir(&tmp).map_err(|e| Error::io("listing", &tmp, e))?.flatten() {
            remove_path(&e.path())?;
        }
        Ok(report)
    }

    /// Marks a manifest or index and everything it references.
    fn mark(&self, digest: &Digest, live: &mut HashSet<String>) -> Result<(), Error> {
        live.insert(digest.hex().to_owned());
        let data = match self.read_blob(digest, MAX_DOCUMENT_SIZE) {
            Ok(d) => d,
            Err(Error::BlobNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| Error::json(format!("manifest {digest}"), e))?;
        let media_type = value.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
        if media::is_index(media_type) || value.get("manifests").is_some() {
            let index: ImageIndex =
                serde_json::from_value(value).map_err(|e| Error::json(format!("index {digest}"), e))?;
            for m in index.manifests() {
                let d = Digest::parse(m.digest().as_ref())?;
                if self.has_blob(&d) {
                    self.mark(&d, live)?;
                }
            }
        } else {
            let manifest: ImageManifest =
                serde_json::from_value(value).map_err(|e| Error::json(format!("manifest {digest}"), e))?;
            live.insert(Digest::parse(manifest.config().digest().as_ref())?.hex().to_owned());
            for l in manifest.layers() {
                live.insert(Digest::parse(l.digest().as_ref())?.hex().to_owned());
            }
        }
        Ok(())
    }
}

fn remove_path(path: &std::path::Path) -> Result<(), Error> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| Error::io("removing", path, e))
}

fn run_config(c: &ImageConfiguration) -> RunConfig {
    let Some(cfg) = c.config() else {
        return RunConfig::default();
    };
    RunConfig {
        entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
        cmd: cfg.cmd().clone().unwrap_or_default(),
        env: cfg.env().clone().unwrap_or_default(),
        working_dir: cfg.working_dir().clone().unwrap_or_default(),
        user: cfg.user().clone().unwrap_or_default(),
        exposed_ports: cfg.exposed_ports().clone().unwrap_or_default(),
        labels: cfg.labels().clone().unwrap_or_default().into_iter().collect(),
        stop_signal: cfg.stop_signal().clone(),
    }
}
