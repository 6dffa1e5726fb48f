//! Images from and to files: `import` (a root filesystem tarball becomes a one-layer image),
//! `load` (docker-archive, oci-archive, OCI layout directory) and `save` (oci-archive).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize;
use serde_json::json;

use crate::compress::decompress;
use crate::store::MAX_DOCUMENT_SIZE;
use crate::{media, Digest, Error, Reference, Store};

/// Stores a config and layer blobs (already in the store) as an OCI image manifest and returns
/// the manifest digest.
pub(crate) fn write_manifest(
    store: &Store,
    config: &[u8],
    layers: &[(Digest, u64, &str)],
) -> Result<Digest, Error> {
    let config_digest = store.write_blob(config, None)?;
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, size, mt)| json!({ "mediaType": mt, "digest": d.as_str(), "size": size }))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": { "mediaType": media::OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len() },
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::json("manifest", e))?;
    store.write_blob(&bytes, None)
}

/// Imports a root filesystem tarball (plain, gzip or zstd) as a one-layer linux/amd64 image
/// named `reference`, like `docker import`. Returns the manifest digest.
pub fn import(store: &Store, tarball: &Path, reference: &str) -> Result<Digest, Error> {
    let reference = Reference::parse(reference)?;
    let _gc = store.gc_lock(false)?;
    let file = File::open(tarball).map_err(|e| Error::io("opening", tarball, e))?;
    let (_, mut reader) = decompress(file).map_err(|e| Error::io("reading", tarball, e))?;
    let mut writer = store.blob_writer()?;
    io::copy(&mut reader, &mut writer).map_err(|e| Error::io("decompressing", tarball, e))?;
    let size = writer.size();
    let layer = writer.commit(None, None, "imported layer")?;
    // Reject what is not a tar before naming it an image.
    let mut blob = store.open_blob(&layer)?;
    let mut count = 0usize;
    for e in tar::Archive::new(&mut blob).entries().map_err(|e| not_tar(tarball, e))? {
        e.map_err(|e| not_tar(tarball, e))?;
        count += 1;
    }
    if count == 0 {
        return Err(Error::Archive {
            path: tarball.to_owned(),
            reason: "not a tar archive, or an empty one".into(),
        });
    }
    let created = rfc3339_now();
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer.as_str()] },
        "history": [ { "created": created, "created_by": "bulkhead import" } ],
    });
    let config = serde_json::to_vec(&config).map_err(|e| Error::json("config", e))?;
    let digest = write_manifest(store, &config, &[(layer, size, media::OCI_LAYER_TAR)])?;
    store.set_reference(&reference, &digest, None)?;
    Ok(digest)
}

fn not_tar(path: &Path, e: io::Error) -> Error {
    Error::Archive { path: path.to_owned(), reason: format!("not a tar archive: {e}") }
}

/// An image `load` stored.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The reference recorded.
    pub reference: Reference,
    /// Its manifest digest.
    pub digest: Digest,
}

/// Files of an archive: small JSON documents kept in memory, everything else stored as a blob.
#[derive(Default)]
struct ArchiveFiles {
    docs: HashMap<PathBuf, Vec<u8>>,
    blobs: HashMap<PathBuf, (Digest, u64)>,
    links: HashMap<PathBuf, PathBuf>,
}

impl ArchiveFiles {
    fn blob(&self, path: &Path) -> Option<(Digest, u64)> {
        let mut p = path.to_owned();
        for _ in 0..8 {
            if let Some(b) = self.blobs.get(&p) {
                return Some(b.clone());
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

/// Loads every image of a docker-archive, oci-archive (tar, optionally compressed) or OCI layout
/// directory. Names come from the archive (`RepoTags`, `io.containerd.image.name`,
/// `org.opencontainers.image.ref.name`); a bare tag is recorded as `localhost/<file stem>:<tag>`.
pub fn load(store: &Store, path: &Path) -> Result<Vec<Loaded>, Error> {
    let _gc = store.gc_lock(false)?;
    let files = if path.is_dir() { read_layout_dir(store, path)? } else { read_tar(store, path)? };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .map(|s| s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect::<String>())
        .map(|s| s.trim_matches('-').to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "loaded".into());
    let archive_err = |reason: String| Error::Archive { path: path.to_owned(), reason };
    if let Some(index) = files.docs.get(Path::new("index.json")) {
        let index: ImageIndex = serde_json::from_slice(index)
            .map_err(|e| Error::json(format!("{}: index.json", path.display()), e))?;
        let mut out = Vec::new();
        for desc in index.manifests() {
            let digest = Digest::parse(desc.digest().as_ref())?;
            let (manifest_digest, index_digest) = select_manifest(store, &digest)?;
            check_image(store, &manifest_digest)?;
            let ann = desc.annotations().clone().unwrap_or_default();
            let name = ann.get("io.containerd.image.name").or_else(|| ann.get(media::ANNOTATION_REF_NAME));
            let reference = match name {
                Some(n) if n.contains(['/', ':', '@']) => Reference::parse(n)?,
                Some(tag) => Reference::parse(&format!("localhost/{stem}:{tag}"))?,
                None => Reference::parse(&format!("localhost/{stem}@{manifest_digest}"))?,
            };
            store.set_reference(&reference, &manifest_digest, index_digest.as_ref())?;
            out.push(Loaded { reference, digest: manifest_digest });
        }
        return Ok(out);
    }
    let Some(manifest) = files.docs.get(Path::new("manifest.json")) else {
        return Err(archive_err("neither index.json (OCI) nor manifest.json (docker-archive) found".into()));
    };
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct DockerEntry {
        config: PathBuf,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<PathBuf>,
    }
    let entries: Vec<DockerEntry> = serde_json::from_slice(manifest)
        .map_err(|e| Error::json(format!("{}: manifest.json", path.display()), e))?;
    let mut out = Vec::new();
    for entry in entries {
        let config = match files.docs.get(&normalize(&entry.config)) {
            Some(c) => c.clone(),
            None => {
                let (d, _) = files
                    .blob(&normalize(&entry.config))
                    .ok_or_else(|| archive_err(format!("config {} missing", entry.config.display())))?;
                store.read_blob(&d, MAX_DOCUMENT_SIZE)?
            }
        };
        #[derive(Deserialize)]
        struct Rootfs {
            diff_ids: Vec<String>,
        }
        #[derive(Deserialize)]
        struct Cfg {
            rootfs: Rootfs,
        }
        let cfg: Cfg = serde_json::from_slice(&config)
            .map_err(|e| Error::json(format!("{}: config {}", path.display(), entry.config.display()), e))?;
        if cfg.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(archive_err(format!(
                "config lists {} layers, manifest.json {}",
                cfg.rootfs.diff_ids.len(),
                entry.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in entry.layers.iter().zip(&cfg.rootfs.diff_ids) {
            let (d, size) = files
                .blob(&normalize(layer))
                .ok_or_else(|| archive_err(format!("layer {} missing", layer.display())))?;
            let mut blob = store.open_blob(&d)?;
            let mut head = [0u8; 4];
            let n = blob.read(&mut head).map_err(|e| Error::io("reading", store.blob_path(&d), e))?;
            let compressed = head[..n].starts_with(&[0x1f, 0x8b]);
            let media_type = if compressed { media::OCI_LAYER_GZIP } else { media::OCI_LAYER_TAR };
            if !compressed && d.as_str() != diff_id {
                return Err(archive_err(format!(
                    "layer {} hashes to {d}, config says {diff_id}",
                    layer.display()
                )));
            }
            layers.push((d, size, media_type));
        }
        let digest = write_manifest(store, &config, &layers)?;
        let tags = entry.repo_tags.unwrap_or_default();
        let refs: Vec<Reference> = if tags.is_empty() {
            vec![Reference::parse(&format!("localhost/{stem}@{digest}"))?]
        } else {
            tags.iter().map(|t| Reference::parse(t)).collect::<Result<_, _>>()?
        };
        for reference in refs {
            store.set_reference(&reference, &digest, None)?;
            out.push(Loaded { reference, digest: digest.clone() });
        }
    }
    Ok(out)
}

/// For an index, the linux/amd64 manifest; for a manifest, itself.
fn select_manifest(store: &Store, digest: &Digest) -> Result<(Digest, Option<Digest>), Error> {
    let data = store.read_blob(digest, MAX_DOCUMENT_SIZE)?;
    let value: serde_json::Value =
        serde_json::from_slice(&data).map_err(|e| Error::json(format!("manifest {digest}"), e))?;
    if value.get("manifests").is_none() {
        return Ok((digest.clone(), None));
    }
    let index: ImageIndex =
        serde_json::from_value(value).map_err(|e| Error::json(format!("index {digest}"), e))?;
    let chosen = crate::platform::select(&index, &crate::platform::Platform::default())
        .ok_or_else(|| Error::Manifest(format!("index {digest} has no linux/amd64 manifest")))?;
    Ok((chosen, Some(digest.clone())))
}

/// Checks a stored manifest's config and layers are all present with the right sizes.
pub(crate) fn check_image(store: &Store, digest: &Digest) -> Result<ImageManifest, Error> {
    let manifest = store.read_manifest(digest)?;
    let config = std::iter::once(manifest.config());
    for desc in config.chain(manifest.layers().iter()) {
        let d = Digest::parse(desc.digest().as_ref())?;
        let size = store.blob_size(&d)?;
        if size != desc.size() {
            return Err(Error::SizeMismatch {
                what: format!("blob {d} of image {digest}"),
                expected: desc.size(),
                actual: size,
            });
        }
    }
    Ok(manifest)
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn is_doc(path: &Path) -> bool {
    matches!(path.to_str(), Some("index.json" | "oci-layout" | "manifest.json" | "repositories"))
}

/// Blob files named `blobs/sha256/<hex>` must hash to their name.
fn check_named_blob(archive: &Path, path: &Path, digest: &Digest) -> Result<(), Error> {
    let mut comps = path.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    if let (Some(b), Some(alg), Some(hex), None) = (comps.next(), comps.next(), comps.next(), comps.next()) {
        if b == "blobs" && alg == "sha256" && hex != digest.hex() {
            return Err(Error::DigestMismatch {
                what: format!("{}: {}", archive.display(), path.display()),
                expected: format!("sha256:{hex}"),
                actual: digest.to_string(),
            });
        }
    }
    Ok(())
}

fn read_tar(store: &Store, path: &Path) -> Result<ArchiveFiles, Error> {
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let (_, reader) = decompress(file).map_err(|e| Error::io("reading", path, e))?;
    let mut archive = tar::Archive::new(reader);
    let mut files = ArchiveFiles::default();
    let bad = |e: io::Error| Error::Archive { path: path.to_owned(), reason: e.to_string() };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = normalize(&entry.path().map_err(bad)?);
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if is_doc(&name) {
                    if entry.size() > MAX_DOCUMENT_SIZE {
                        return Err(Error::TooLarge {
                            what: format!("{}: {}", path.display(), name.display()),
                            size: entry.size(),
                            limit: MAX_DOCUMENT_SIZE,
                        });
                    }
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).map_err(bad)?;
                    files.docs.insert(name, data);
                } else {
                    let mut w = store.blob_writer()?;
                    io::copy(&mut entry, &mut w).map_err(bad)?;
                    let size = w.size();
                    let digest = Digest::from_hasher(w.hasher_clone());
                    check_named_blob(path, &name, &digest)?;
                    w.commit(Some(&digest), Some(size), &name.display().to_string())?;
                    files.blobs.insert(name, (digest, size));
                }
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(target) = entry.link_name().map_err(bad)? {
                    let target = if entry.header().entry_type() == tar::EntryType::Symlink {
                        normalize(&name.parent().unwrap_or(Path::new("")).join(target))
                    } else {
                        normalize(&target)
                    };
                    files.links.insert(name, target);
                }
            }
            _ => {}
        }
    }
    Ok(files)
}

fn read_layout_dir(store: &Store, dir: &Path) -> Result<ArchiveFiles, Error> {
    let mut files = ArchiveFiles::default();
    for doc in ["index.json", "oci-layout"] {
        let p = dir.join(doc);
        if p.is_file() {
            let data = fs::read(&p).map_err(|e| Error::io("reading", &p, e))?;
            files.docs.insert(PathBuf::from(doc), data);
        }
    }
    if !files.docs.contains_key(Path::new("index.json")) {
        return Err(Error::Archive {
            path: dir.to_owned(),
            reason: "not an OCI layout: no index.json".into(),
        });
    }
    let blobs = dir.join("blobs").join("sha256");
    for e in fs::read_dir(&blobs).map_err(|e| Error::io("listing", &blobs, e))? {
        let e = e.map_err(|e| Error::io("listing", &blobs, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(expected) = Digest::parse(&format!("sha256:{name}")) else {
            continue;
        };
        if store.has_blob(&expected) {
            let size = store.blob_size(&expected)?;
            files.blobs.insert(PathBuf::from("blobs/sha256").join(&name), (expected, size));
            continue;
        }
        let mut f = File::open(e.path()).map_err(|err| Error::io("opening", e.path(), err))?;
        let mut w = store.blob_writer()?;
        io::copy(&mut f, &mut w).map_err(|err| Error::io("reading", e.path(), err))?;
        let size = w.size();
        let digest = w.commit(Some(&expected), None, &e.path().display().to_string())?;
        files.blobs.insert(PathBuf::from("blobs/sha256").join(&name), (digest, size));
    }
    Ok(files)
}

/// Writes the images `references` name as an oci-archive at `output` (atomically: a temporary
/// file beside it is renamed into place).
pub fn save(store: &Store, references: &[&str], output: &Path) -> Result<(), Error> {
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io("creating temporary file in", dir, e))?;
    let mut tar = tar::Builder::new(io::BufWriter::new(tmp));
    let mut manifests = Vec::new();
    let mut written = std::collections::HashSet::new();
    for r in references {
        let (reference, digest) = store.lookup(r)?;
        let manifest = check_image(store, &digest)?;
        let raw = store.read_blob(&digest, MAX_DOCUMENT_SIZE)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
        let mut digests = vec![digest.clone(), Digest::parse(manifest.config().digest().as_ref())?];
        for l in manifest.layers() {
            digests.push(Digest::parse(l.digest().as_ref())?);
        }
        for d in digests {
            if written.insert(d.clone()) {
                let size = store.blob_size(&d)?;
                let mut blob = store.open_blob(&d)?;
                append(&mut tar, &format!("blobs/sha256/{}", d.hex()), size, &mut blob, output)?;
                blob.finish()?;
            }
        }
        let mut annotations = serde_json::Map::new();
        annotations.insert("io.containerd.image.name".into(), reference.to_string().into());
        if let Some(tag) = reference.tag() {
            annotations.insert(media::ANNOTATION_REF_NAME.into(), tag.into());
        }
        manifests.push(json!({ "mediaType": media_type, "digest": digest.as_str(), "size": raw.len(), "annotations": annotations }));
    }
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append(&mut tar, "oci-layout", layout.len() as u64, &mut &layout[..], output)?;
    let index = json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests });
    let index = serde_json::to_vec(&index).map_err(|e| Error::json("index.json", e))?;
    append(&mut tar, "index.json", index.len() as u64, &mut &index[..], output)?;
    let buf = tar.into_inner().map_err(|e| Error::io("writing", output, e))?;
    let tmp = buf.into_inner().map_err(|e| Error::io("writing", output, e.into_error()))?;
    tmp.as_file().sync_all().map_err(|e| Error::io("syncing", output, e))?;
    tmp.persist(output).map_err(|e| Error::io("renaming into", output, e.error))?;
    Ok(())
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: &mut dyn Read,
    output: &Path,
) -> Result<(), Error> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    tar.append_data(&mut header, name, data).map_err(|e| Error::io("writing", output, e))
}

/// Now as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's published algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
