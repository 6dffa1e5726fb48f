//! Guest kernels stored as ordinary OCI images: one uncompressed layer holding `vmlinux` (and
//! its `config`), a config blob, and manifest annotations giving version and flavour.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::compress::decompress;
use crate::store::sync_dir;
use crate::{media, Digest, Error, ImageKind, Reference, Store};

/// Repository used for kernels imported without a name.
pub const DEFAULT_REPOSITORY: &str = "bulkhead/kernel";
/// Flavour recorded when the import names none.
pub const DEFAULT_FLAVOUR: &str = "bulkhead";
/// A vmlinux larger than this is refused.
pub const MAX_VMLINUX_SIZE: u64 = 1 << 30;
const MAX_CONFIG_SIZE: u64 = 4 << 20;

/// A kernel image in the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelImage {
    /// Reference in familiar form (`bulkhead/kernel:6.1.0`).
    pub reference: String,
    /// Manifest digest, `sha256:…`.
    pub digest: String,
    /// Kernel release.
    pub version: String,
    /// Which configuration the kernel was built with.
    pub flavour: String,
    /// Bytes in the store: manifest, config and layer blobs.
    pub size: u64,
    /// Whether `bulkhead run` uses this kernel when none is named.
    pub is_default: bool,
}

/// An extracted kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFile {
    /// The `vmlinux` on disk, in the store's cache.
    pub path: PathBuf,
    /// Manifest digest of the kernel image.
    pub digest: String,
    /// Kernel release.
    pub version: String,
}

/// Imports a `vmlinux` (and optionally its `.config`) as a kernel image named `name`
/// (default `bulkhead/kernel:<version>`). The first kernel in a store becomes the default.
///
/// The version comes from a `version` file beside the vmlinux, else from its `Linux version`
/// banner. A `config` file beside the vmlinux is used when `config` is `None`.
pub fn import(
    store: &Store,
    vmlinux: &Path,
    config: Option<&Path>,
    name: Option<&str>,
) -> Result<KernelImage, Error> {
    let data = read_bounded(vmlinux, MAX_VMLINUX_SIZE)?;
    check_vmlinux(&data).map_err(|reason| Error::Kernel(format!("{}: {reason}", vmlinux.display())))?;
    let dir = vmlinux.parent().unwrap_or(Path::new("."));
    let version = match read_optional(&dir.join("version"), 256)? {
        Some(v) => String::from_utf8_lossy(&v).trim().to_owned(),
        None => banner_version(&data).ok_or_else(|| {
            Error::Kernel(format!(
                "{}: no \"Linux version\" banner and no version file beside it",
                vmlinux.display()
            ))
        })?,
    };
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Kernel(format!(
            "{}: kernel version {version:?} is not printable ASCII",
            vmlinux.display()
        )));
    }
    let config_data = match config {
        Some(p) => Some(read_bounded(p, MAX_CONFIG_SIZE)?),
        None => read_optional(&dir.join("config"), MAX_CONFIG_SIZE)?,
    };
    let reference = match name {
        Some(n) => Reference::parse(n)?,
        None => Reference::parse(&format!("{DEFAULT_REPOSITORY}:{}", tag_from_version(&version)))?,
    };

    let _gc = store.gc_lock(false)?;
    let mut writer = store.blob_writer()?;
    {
        let mut tar = tar::Builder::new(&mut writer);
        append_file(&mut tar, "vmlinux", &data)?;
        if let Some(c) = &config_data {
            append_file(&mut tar, "config", c)?;
        }
        tar.finish().map_err(|e| Error::io("writing kernel layer in", store.tmp_dir(), e))?;
    }
    let layer_size = writer.size();
    let layer = writer.commit(None, None, "kernel layer")?;

    let config_json = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { media::ANNOTATION_KERNEL_VERSION: version, media::ANNOTATION_KERNEL_FLAVOUR: DEFAULT_FLAVOUR } },
        "rootfs": { "type": "layers", "diff_ids": [layer.as_str()] },
    });
    let config_bytes = serde_json::to_vec(&config_json).map_err(|e| Error::json("kernel config", e))?;
    let config_digest = store.write_blob(&config_bytes, None)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": { "mediaType": media::OCI_CONFIG, "digest": config_digest.as_str(), "size": config_bytes.len() },
        "layers": [ { "mediaType": media::OCI_LAYER_TAR, "digest": layer.as_str(), "size": layer_size } ],
        "annotations": {
            media::ANNOTATION_KIND: "kernel",
            media::ANNOTATION_KERNEL_VERSION: version,
            media::ANNOTATION_KERNEL_FLAVOUR: DEFAULT_FLAVOUR,
        },
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| Error::json("kernel manifest", e))?;
    let digest = store.write_blob(&manifest_bytes, None)?;

    let full = reference.to_string();
    let is_default = store.update_index(|idx| {
        idx.images.insert(
            full.clone(),
            crate::store::IndexEntry { digest: digest.to_string(), index_digest: None },
        );
        let default_valid = idx.kernel_default.as_ref().is_some_and(|d| idx.images.contains_key(d));
        if !default_valid {
            idx.kernel_default = Some(full.clone());
        }
        Ok(idx.kernel_default.as_deref() == Some(full.as_str()))
    })?;
    Ok(KernelImage {
        reference: reference.familiar(),
        digest: digest.to_string(),
        version,
        flavour: DEFAULT_FLAVOUR.to_owned(),
        size: manifest_bytes.len() as u64 + config_bytes.len() as u64 + layer_size,
        is_default,
    })
}

/// Every kernel image in the store, sorted by reference.
pub fn list(store: &Store) -> Result<Vec<KernelImage>, Error> {
    let index = store.read_index()?;
    let mut out = Vec::new();
    for entry in store.list()? {
        let manifest = store.read_manifest(&entry.digest)?;
        if Store::kind_of(&manifest) != ImageKind::Kernel {
            continue;
        }
        let (version, flavour) = annotations(&manifest);
        let mut size = store.blob_size(&entry.digest)?;
        size += manifest.config().size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
        out.push(KernelImage {
            reference: entry.reference.familiar(),
            digest: entry.digest.to_string(),
            version,
            flavour,
            size,
            is_default: index.kernel_default.as_deref() == Some(entry.reference.to_string().as_str()),
        });
    }
    Ok(out)
}

/// Makes `reference` the default kernel.
pub fn set_default(store: &Store, reference: &str) -> Result<(), Error> {
    let (r, digest) = store.lookup(reference)?;
    let manifest = store.read_manifest(&digest)?;
    if Store::kind_of(&manifest) != ImageKind::Kernel {
        return Err(Error::Kernel(format!("{reference} is not a kernel image")));
    }
    store.update_index(|idx| {
        idx.kernel_default = Some(r.to_string());
        Ok(())
    })
}

/// Finds a kernel (`None`: the default) and returns its `vmlinux`, extracted once into
/// `<root>/kernels/<digest>/` and verified against the layer digest on the way.
pub fn resolve(store: &Store, reference: Option<&str>) -> Result<KernelFile, Error> {
    let (shown, digest) = match reference {
        Some(r) => (r.to_owned(), store.lookup(r)?.1),
        None => {
            let default = store.read_index()?.kernel_default.ok_or_else(|| {
                Error::Kernel("no default kernel: import one with `bulkhead kernel import`".into())
            })?;
            let digest = store
                .lookup(&default)
                .map_err(|_| Error::Kernel(format!("default kernel {default} is no longer in the store")))?
                .1;
            (default, digest)
        }
    };
    let manifest = store.read_manifest(&digest)?;
    if Store::kind_of(&manifest) != ImageKind::Kernel {
        return Err(Error::Kernel(format!("{shown} is not a kernel image")));
    }
    let (version, _) = annotations(&manifest);
    let dir = store.root().join("kernels").join(digest.hex());
    let path = dir.join("vmlinux");
    if path.is_file() {
        return Ok(KernelFile { path, digest: digest.to_string(), version });
    }

    let tmp = tempfile::Builder::new()
        .prefix("kernel-")
        .tempdir_in(store.tmp_dir())
        .map_err(|e| Error::io("creating temporary directory in", store.tmp_dir(), e))?;
    let extracted = tmp.path().join("vmlinux");
    let mut found = false;
    for layer in manifest.layers() {
        let layer_digest = Digest::parse(layer.digest().as_ref())?;
        let stored = store.blob_size(&layer_digest)?;
        if stored != layer.size() {
            return Err(Error::SizeMismatch {
                what: format!("kernel layer {layer_digest}"),
                expected: layer.size(),
                actual: stored,
            });
        }
        found |= extract_vmlinux(store, &layer_digest, &extracted)?;
        if found {
            break;
        }
    }
    if !found {
        return Err(Error::Kernel(format!("kernel image {shown} ({digest}) has no vmlinux in its layers")));
    }
    let data = read_bounded(&extracted, MAX_VMLINUX_SIZE)?;
    check_vmlinux(&data)
        .map_err(|reason| Error::Kernel(format!("kernel image {shown}: vmlinux: {reason}")))?;
    match fs::rename(tmp.path(), &dir) {
        Ok(()) => {
            let _ = tmp.keep();
            sync_dir(&store.root().join("kernels"))?;
        }
        // Another resolver finished first; its copy is identical.
        Err(_) if path.is_file() => {}
        Err(e) => return Err(Error::io("renaming extracted kernel into", &dir, e)),
    }
    Ok(KernelFile { path, digest: digest.to_string(), version })
}

fn extract_vmlinux(store: &Store, layer: &Digest, dest: &Path) -> Result<bool, Error> {
    let mut blob = store.open_blob(layer)?;
    let what = |e: io::Error| Error::Kernel(format!("reading kernel layer {layer}: {e}"));
    let mut found = false;
    {
        let (_, reader) = decompress(&mut blob).map_err(what)?;
        let mut archive = tar::Archive::new(reader.take(MAX_VMLINUX_SIZE + MAX_CONFIG_SIZE + (1 << 20)));
        for entry in archive.entries().map_err(what)? {
            let mut entry = entry.map_err(what)?;
            let name = entry.path().map_err(what)?.into_owned();
            let name = name.strip_prefix(".").unwrap_or(&name);
            if name != Path::new("vmlinux") || found {
                continue;
            }
            if entry.header().entry_type() != tar::EntryType::Regular || entry.size() > MAX_VMLINUX_SIZE {
                return Err(Error::Kernel(format!(
                    "kernel layer {layer}: vmlinux is not a regular file under 1 GiB"
                )));
            }
            let mut out = File::create(dest).map_err(|e| Error::io("creating", dest, e))?;
            io::copy(&mut entry, &mut out).map_err(what)?;
            out.sync_all().map_err(|e| Error::io("syncing", dest, e))?;
            found = true;
        }
    }
    blob.finish()?;
    Ok(found)
}

fn annotations(manifest: &oci_spec::image::ImageManifest) -> (String, String) {
    let get = |k: &str| manifest.annotations().as_ref().and_then(|a| a.get(k).cloned()).unwrap_or_default();
    (get(media::ANNOTATION_KERNEL_VERSION), get(media::ANNOTATION_KERNEL_FLAVOUR))
}

fn append_file<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<(), Error> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    tar.append_data(&mut header, name, data).map_err(|e| Error::io("writing kernel layer entry", name, e))
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let size = file.metadata().map_err(|e| Error::io("reading metadata of", path, e))?.len();
    if size > limit {
        return Err(Error::TooLarge { what: path.display().to_string(), size, limit });
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit).read_to_end(&mut data).map_err(|e| Error::io("reading", path, e))?;
    Ok(data)
}

fn read_optional(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, Error> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => read_bounded(path, limit).map(Some),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading metadata of", path, e)),
    }
}

/// A kernel release as an image tag: characters a tag cannot hold become `_`.
fn tag_from_version(version: &str) -> String {
    let mut tag: String = version
        .chars()
        .take(128)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' })
        .collect();
    if tag.starts_with(['.', '-']) {
        tag.insert(0, 'v');
        tag.truncate(128);
    }
    tag
}

/// The release from the first `Linux version X ` banner whose X starts with a digit.
fn banner_version(data: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let mut rest = data;
    while let Some(pos) = rest.windows(BANNER.len()).position(|w| w == BANNER) {
        let after = &rest[pos + BANNER.len()..];
        let end = after.iter().take(128).position(|&b| b == b' ' || b == 0 || b == b'\n').unwrap_or(0);
        let word = &after[..end];
        if word.first().is_some_and(u8::is_ascii_digit) && word.iter().all(u8::is_ascii_graphic) {
            return Some(String::from_utf8_lossy(word).into_owned());
        }
        rest = after;
    }
    None
}

const ELF_MAGIC: &[u8] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// Checks that `data` is a complete x86_64 ELF64 executable: header, program headers and every
/// loadable segment inside the file. Returns the reason it is not.
pub fn check_vmlinux(data: &[u8]) -> Result<(), String> {
    if data.len() < EHDR_SIZE {
        return Err(format!("not an ELF vmlinux: {} bytes is shorter than an ELF header", data.len()));
    }
    if &data[..4] != ELF_MAGIC {
        return Err(
            "not an ELF vmlinux: no ELF magic (a bzImage or compressed kernel will not do; use vmlinux)"
                .into(),
        );
    }
    if data[4] != ELFCLASS64 || data[5] != ELFDATA2LSB {
        return Err("not an x86_64 vmlinux: not a little-endian 64-bit ELF".into());
    }
    let machine = u16_at(data, 18);
    if machine != EM_X86_64 {
        return Err(format!(
            "not an x86_64 vmlinux: ELF machine is {machine}, expected {EM_X86_64} (x86_64)"
        ));
    }
    let e_type = u16_at(data, 16);
    if e_type != ET_EXEC {
        return Err(format!("not a vmlinux: ELF type is {e_type}, expected {ET_EXEC} (executable)"));
    }
    let phoff = u64_at(data, 32);
    let phentsize = usize::from(u16_at(data, 54));
    let phnum = usize::from(u16_at(data, 56));
    if phnum == 0 || phentsize < PHDR_SIZE {
        return Err(format!("not a vmlinux: {phnum} program headers of {phentsize} bytes"));
    }
    let len = data.len() as u64;
    let table_end = (phnum as u64).checked_mul(phentsize as u64).and_then(|t| t.checked_add(phoff));
    if table_end.is_none_or(|end| end > len) {
        return Err(format!(
            "truncated vmlinux: program headers at offset {phoff} run past the end of the {len}-byte file"
        ));
    }
    for i in 0..phnum {
        let ph = usize::try_from(phoff).unwrap_or(usize::MAX) + i * phentsize;
        if u32_at(data, ph) != PT_LOAD {
            continue;
        }
        let offset = u64_at(data, ph + 8);
        let filesz = u64_at(data, ph + 32);
        if offset.checked_add(filesz).is_none_or(|end| end > len) {
            return Err(format!(
                "truncated vmlinux: segment {i} ends at {} but the file has {len} bytes",
                offset.saturating_add(filesz)
            ));
        }
    }
    Ok(())
}

fn u16_at(d: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([d[o], d[o + 1]])
}

fn u32_at(d: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]])
}

fn u64_at(d: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[o..o + 8]);
    u64::from_le_bytes(b)
}

/// A minimal valid x86_64 vmlinux-shaped ELF: header, one PT_LOAD segment, payload and banner.
/// For tests here and in other crates; it does not boot.
pub fn fake_vmlinux(version: &str, payload_len: usize) -> Vec<u8> {
    let banner = format!("Linux version {version} (test@bulkhead) #1 SMP\n\0");
    let body_len = payload_len + banner.len();
    let mut d = vec![0u8; EHDR_SIZE + PHDR_SIZE];
    d[..4].copy_from_slice(ELF_MAGIC);
    d[4] = ELFCLASS64;
    d[5] = ELFDATA2LSB;
    d[6] = 1;
    d[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    d[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    d[20..24].copy_from_slice(&1u32.to_le_bytes());
    d[24..32].copy_from_slice(&0x0100_0000u64.to_le_bytes());
    d[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
    d[52..54].copy_from_slice(&64u16.to_le_bytes());
    d[54..56].copy_from_slice(&56u16.to_le_bytes());
    d[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = EHDR_SIZE;
    d[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
    d[ph + 8..ph + 16].copy_from_slice(&((EHDR_SIZE + PHDR_SIZE) as u64).to_le_bytes());
    d[ph + 32..ph + 40].copy_from_slice(&(body_len as u64).to_le_bytes());
    d[ph + 40..ph + 48].copy_from_slice(&(body_len as u64).to_le_bytes());
    d.extend((0..=250u8).cycle().take(payload_len));
    d.extend_from_slice(banner.as_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_fake_vmlinux_and_reads_banner() {
        let v = fake_vmlinux("6.1.99-test", 1000);
        check_vmlinux(&v).unwrap();
        assert_eq!(banner_version(&v).as_deref(), Some("6.1.99-test"));
    }

    #[test]
    fn rejects_bad_elves() {
        let good = fake_vmlinux("6.1.0", 4096);
        let mut wrong_arch = good.clone();
        wrong_arch[18] = 183; // aarch64
        assert!(check_vmlinux(&wrong_arch).unwrap_err().contains("machine is 183"));
        let mut class32 = good.clone();
        class32[4] = 1;
        assert!(check_vmlinux(&class32).is_err());
        assert!(check_vmlinux(&good[..good.len() - 100]).unwrap_err().contains("truncated"));
        assert!(check_vmlinux(&good[..40]).is_err());
        assert!(check_vmlinux(
            b"\x1f\x8b\x08 this is gzip, not ELF, padded to more than sixty-four bytes..."
        )
        .is_err());
    }

    #[test]
    fn version_tags() {
        assert_eq!(tag_from_version("6.1.0+debian"), "6.1.0_debian");
        assert_eq!(tag_from_version("-x"), "v-x");
    }
}
