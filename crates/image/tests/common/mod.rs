//! Helpers shared by the image integration tests: layers built entry by entry (including
//! hostile ones the `tar` crate would refuse to write) and images assembled in a store.
#![allow(dead_code)]

pub mod registry;

use std::io::Write;

use bulkhead_image::{media, Digest, Store};
use serde_json::json;

/// Builds a tar layer in memory.
pub struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer { tar: tar::Builder::new(Vec::new()) }
    }

    fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        // Write the name raw so hostile names ('..', absolute) survive.
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn push(&mut self, mut h: tar::Header, data: &[u8]) {
        h.set_cksum();
        self.tar.append(&h, data).unwrap();
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.push(Self::header(tar::EntryType::Directory, path, mode, 0), &[]);
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        self.push(Self::header(tar::EntryType::Regular, path, mode, data.len() as u64), data);
        self
    }

    pub fn owned_file(mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, path, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.push(h, data);
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, path, 0o777, 0);
        let name = &mut h.as_old_mut().linkname;
        name[..target.len()].copy_from_slice(target.as_bytes());
        self.push(h, &[]);
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, path, 0o644, 0);
        let name = &mut h.as_old_mut().linkname;
        name[..target.len()].copy_from_slice(target.as_bytes());
        self.push(h, &[]);
        self
    }

    pub fn device(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32, mode: u32) -> Self {
        let mut h = Self::header(kind, path, mode, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, &[]);
        self
    }

    pub fn fifo(mut self, path: &str) -> Self {
        self.push(Self::header(tar::EntryType::Fifo, path, 0o644, 0), &[]);
        self
    }

    /// A regular-file header claiming `size` bytes, with only `actual` bytes behind it.
    pub fn lying_file(mut self, path: &str, size: u64, actual: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, path, 0o644, size);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(actual);
        self.tar.get_mut().extend_from_slice(&raw);
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.tar.into_inner().unwrap()
    }

    pub fn gzip(self) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.build()).unwrap();
        gz.finish().unwrap()
    }

    pub fn zstd(self) -> Vec<u8> {
        zstd::encode_all(&self.build()[..], 1).unwrap()
    }
}

/// The uncompressed tar inside a layer blob.
pub fn decompressed(layer: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if layer.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(layer).read_to_end(&mut out).unwrap();
    } else if layer.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(layer).unwrap();
    } else {
        out = layer.to_vec();
    }
    out
}

/// Stores `layers` (already compressed or not) as an image named `reference`; returns the
/// manifest digest.
pub fn make_image(store: &Store, reference: &str, layers: &[Vec<u8>], cmd: &[&str]) -> Digest {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = store.write_blob(l, None).unwrap();
        let media_type = if l.starts_with(&[0x1f, 0x8b]) {
            media::OCI_LAYER_GZIP
        } else if l.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            media::OCI_LAYER_ZSTD
        } else {
            media::OCI_LAYER_TAR
        };
        descs.push(json!({"mediaType": media_type, "digest": d.as_str(), "size": l.len()}));
        diff_ids.push(Digest::of(&decompressed(l)).to_string());
    }
    let config = json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/", "ExposedPorts": {"80/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cd = store.write_blob(&config, None).unwrap();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": cd.as_str(), "size": config.len()},
        "layers": descs,
    });
    let md = store.write_blob(&serde_json::to_vec(&manifest).unwrap(), None).unwrap();
    store.set_reference(&reference.parse().unwrap(), &md, None).unwrap();
    md
}
