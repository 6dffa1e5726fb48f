//! Kernel images: import, list, default, resolve.

use std::fs;
use std::path::Path;

use bulkhead_image::kernel::{self, fake_vmlinux};
use bulkhead_image::{Digest, Error, Store};

fn write_kernel(dir: &Path, version: &str) -> std::path::PathBuf {
    let path = dir.join("vmlinux");
    fs::write(&path, fake_vmlinux(version, 64 << 10)).unwrap();
    path
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().unwrap().is_dir() {
                out.extend(files_under(&e.path()));
            }
        }
    }
    out
}

#[test]
fn import_list_default_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let src = tmp.path().join("k1");
    fs::create_dir(&src).unwrap();
    let vmlinux = write_kernel(&src, "6.1.0-test");
    fs::write(src.join("config"), "CONFIG_VIRTIO=y\n").unwrap();

    let first = kernel::import(&store, &vmlinux, None, None).unwrap();
    assert_eq!(first.reference, "bulkhead/kernel:6.1.0-test");
    assert_eq!(first.version, "6.1.0-test");
    assert!(first.is_default, "the first kernel becomes the default");
    Digest::parse(&first.digest).unwrap();

    // Importing the same file again is idempotent: same digest.
    assert_eq!(kernel::import(&store, &vmlinux, None, None).unwrap().digest, first.digest);

    let src2 = tmp.path().join("k2");
    fs::create_dir(&src2).unwrap();
    let vmlinux2 = write_kernel(&src2, "ignored");
    fs::write(src2.join("version"), "6.2.0-other\n").unwrap();
    let second = kernel::import(&store, &vmlinux2, None, Some("example.com/k/other:v2")).unwrap();
    assert_eq!(second.version, "6.2.0-other", "a version file beside the vmlinux wins");
    assert!(!second.is_default);

    let listed = kernel::list(&store).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().filter(|k| k.is_default).count(), 1);
    assert!(listed.iter().all(|k| k.size > 64 << 10));

    let resolved = kernel::resolve(&store, None).unwrap();
    assert_eq!(resolved.digest, first.digest);
    assert_eq!(fs::read(&resolved.path).unwrap(), fs::read(&vmlinux).unwrap());
    let again = kernel::resolve(&store, None).unwrap();
    assert_eq!(again, resolved);

    kernel::set_default(&store, "example.com/k/other:v2").unwrap();
    let listed = kernel::list(&store).unwrap();
    let default: Vec<_> = listed.iter().filter(|k| k.is_default).collect();
    assert_eq!(default.len(), 1);
    assert_eq!(default[0].reference, "example.com/k/other:v2");
    let resolved = kernel::resolve(&store, None).unwrap();
    assert_eq!(resolved.version, "6.2.0-other");
    assert_eq!(fs::read(&resolved.path).unwrap(), fs::read(&vmlinux2).unwrap());
    // By reference and by short digest.
    assert_eq!(kernel::resolve(&store, Some("bulkhead/kernel:6.1.0-test")).unwrap().digest, first.digest);
    let short = &first.digest["sha256:".len()..][..12];
    assert_eq!(kernel::resolve(&store, Some(short)).unwrap().digest, first.digest);
    assert!(kernel::resolve(&store, Some("nope:1")).is_err());
    assert!(kernel::set_default(&store, "nope:1").is_err());
}

#[test]
fn concurrent_resolve_extracts_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let vmlinux = write_kernel(tmp.path(), "6.1.0");
    kernel::import(&store, &vmlinux, None, None).unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| kernel::resolve(&store, None))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let want = fs::read(&vmlinux).unwrap();
    for r in &results {
        let r = r.as_ref().unwrap();
        assert_eq!(r.path, results[0].as_ref().unwrap().path);
        assert_eq!(fs::read(&r.path).unwrap(), want);
    }
    assert!(files_under(&store.root().join("tmp")).is_empty(), "leftovers in tmp");
    assert_eq!(fs::read_dir(store.root().join("kernels")).unwrap().count(), 1);
}

#[test]
fn bad_kernel_files_are_rejected_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let good = fake_vmlinux("6.1.0", 4096);
    let mut wrong_arch = good.clone();
    wrong_arch[18] = 40; // ARM
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "text",
            b"#!/bin/sh\necho this is not a kernel at all, but it is long enough for a header\n".to_vec(),
        ),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("tiny", good[..10].to_vec()),
        ("wrong-arch", wrong_arch),
        ("empty", Vec::new()),
    ];
    for (name, data) in cases {
        let path = tmp.path().join(name);
        fs::write(&path, &data).unwrap();
        let err = kernel::import(&store, &path, None, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Kernel(_)), "{name}: {msg}");
        assert!(!msg.contains('\n') && msg.contains(name), "{name}: {msg}");
    }
    assert!(files_under(&store.root().join("content")).iter().all(|p| p.ends_with("sha256")));
    assert!(!store.root().join("images.json").exists());
    assert!(kernel::list(&store).unwrap().is_empty());
    assert!(kernel::resolve(&store, None).unwrap_err().to_string().contains("no default kernel"));
}

#[test]
fn corrupt_layer_is_detected_on_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let vmlinux = write_kernel(tmp.path(), "6.1.0");
    let k = kernel::import(&store, &vmlinux, None, None).unwrap();
    let manifest = store.read_manifest(&Digest::parse(&k.digest).unwrap()).unwrap();
    let layer = Digest::parse(manifest.layers()[0].digest().as_ref()).unwrap();
    let path = store.blob_path(&layer);
    let mut data = fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&path, &data).unwrap();
    let err = kernel::resolve(&store, None).unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(fs::read_dir(store.root().join("kernels")).unwrap().count(), 0);
    assert!(files_under(&store.root().join("tmp")).is_empty());
}

#[test]
fn non_kernel_image_is_not_a_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let d = store.write_blob(br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#, None).unwrap();
    store.set_reference(&"busybox".parse().unwrap(), &d, None).unwrap();
    assert!(kernel::set_default(&store, "busybox").unwrap_err().to_string().contains("not a kernel"));
    assert!(kernel::list(&store).unwrap().is_empty());
}
