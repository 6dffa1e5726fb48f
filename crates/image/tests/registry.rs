//! Pull, push, load, save, import and auth against a real `docker-registry` on loopback,
//! cross-checked with skopeo.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bulkhead_image::auth::Credentials;
use bulkhead_image::platform::Platform;
use bulkhead_image::registry::{self, RegistryOptions};
use bulkhead_image::{archive, disk, Digest, Error, Store};
use common::registry::{files_in, skopeo, skopeo_digest, Registry};
use common::{make_image, Layer};
use serde_json::json;

fn insecure() -> RegistryOptions {
    RegistryOptions { insecure: true, ..Default::default() }
}

fn sample_layers() -> Vec<Vec<u8>> {
    sample_layers_with(true)
}

/// Docker archives cannot hold zstd layers.
fn sample_layers_with(zstd: bool) -> Vec<Vec<u8>> {
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed");
    let base = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .symlink("bin/sh", "busybox")
        .dir("etc", 0o755)
        .file("etc/old", 0o644, b"old")
        .dir("var", 0o755)
        .file("var/lower", 0o644, b"x")
        .gzip();
    let deletions = Layer::new()
        .file("etc/.wh.old", 0, b"")
        .dir("var", 0o755)
        .file("var/.wh..wh..opq", 0, b"")
        .file("var/new", 0o644, b"y");
    let deletions = if zstd { deletions.zstd() } else { deletions.gzip() };
    let top = Layer::new().file("etc/hostname", 0o644, b"bulkhead\n").build();
    vec![base, deletions, top]
}

fn store_in(dir: &Path, name: &str) -> Store {
    Store::open(&dir.join(name)).unwrap()
}

fn disk_tree(store: &Store, digest: &Digest) -> Vec<(String, u32, u64)> {
    let image = disk::root_disk(store, digest.as_str()).unwrap();
    disk::read_tree(&image).unwrap().into_iter().map(|(p, e)| (p, e.mode, e.size)).collect()
}

#[test]
fn push_pull_round_trip_matches_skopeo() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let a = store_in(tmp.path(), "a");
    let digest = make_image(&a, "local/sample:1", &sample_layers(), &["/bin/sh"]);
    let remote = format!("{}/test/sample:1", reg.host);
    let pushed = registry::push(&a, "local/sample:1", Some(&remote), &insecure()).unwrap();
    assert_eq!(pushed, digest);
    assert_eq!(skopeo_digest(&format!("docker://{remote}"), &["--tls-verify=false"]), digest.to_string());
    // Pushing again finds every blob present.
    registry::push(&a, "local/sample:1", Some(&remote), &insecure()).unwrap();

    let b = store_in(tmp.path(), "b");
    let pulled = registry::pull(&b, &remote, &insecure()).unwrap();
    assert_eq!(pulled.digest, digest);
    assert!(pulled.downloaded > 0);
    let again = registry::pull(&b, &remote, &insecure()).unwrap();
    assert_eq!((again.digest, again.downloaded), (digest.clone(), 0));
    let info = b.resolve_image(&remote).unwrap();
    assert_eq!(info.config.cmd, vec!["/bin/sh"]);
    assert_eq!(disk_tree(&a, &digest), disk_tree(&b, &digest));
    let tree = disk_tree(&b, &digest);
    assert!(tree.iter().any(|(p, _, _)| p == "/var/new"));
    assert!(!tree.iter().any(|(p, _, _)| p == "/var/lower" || p == "/etc/old"));

    // By digest, too.
    let c = store_in(tmp.path(), "c");
    let by_digest = format!("{}/test/sample@{digest}", reg.host);
    assert_eq!(registry::pull(&c, &by_digest, &insecure()).unwrap().digest, digest);
}

#[test]
fn skopeo_pushed_images_and_archives_round_trip() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let a = store_in(tmp.path(), "a");
    let digest = make_image(&a, "local/sample:1", &sample_layers_with(false), &["/bin/sh"]);

    // bulkhead save -> skopeo reads the oci-archive with the same digest -> registry.
    let archive_path = tmp.path().join("sample.tar");
    archive::save(&a, &["local/sample:1"], &archive_path).unwrap();
    let oci_archive = format!("oci-archive:{}", archive_path.display());
    assert_eq!(skopeo_digest(&oci_archive, &[]), digest.to_string());
    let remote = format!("{}/skopeo/sample:2", reg.host);
    skopeo(&["copy", "--quiet", "--dest-tls-verify=false", &oci_archive, &format!("docker://{remote}")]);
    let remote_digest = skopeo_digest(&format!("docker://{remote}"), &["--tls-verify=false"]);
    let b = store_in(tmp.path(), "b");
    assert_eq!(registry::pull(&b, &remote, &insecure()).unwrap().digest.to_string(), remote_digest);

    // bulkhead load of the oci-archive it saved.
    let c = store_in(tmp.path(), "c");
    let loaded = archive::load(&c, &archive_path).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].digest, digest);
    assert_eq!(loaded[0].reference.to_string(), "docker.io/local/sample:1");

    // An OCI layout directory written by skopeo.
    let layout = tmp.path().join("layout");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{remote}"),
        &format!("oci:{}:v2", layout.display()),
    ]);
    let d = store_in(tmp.path(), "d");
    let loaded = archive::load(&d, &layout).unwrap();
    assert_eq!(loaded[0].digest.to_string(), skopeo_digest(&format!("oci:{}:v2", layout.display()), &[]));
    assert_eq!(loaded[0].reference.familiar(), "localhost/layout:v2");

    // A docker-archive written by skopeo: same config and layer content (docker-archive keeps
    // uncompressed layers, so compare the trees on the root disks).
    let docker_archive = tmp.path().join("docker.tar");
    skopeo(&[
        "copy",
        "--quiet",
        &oci_archive,
        &format!("docker-archive:{}:example.com/da/sample:3", docker_archive.display()),
    ]);
    let e = store_in(tmp.path(), "e");
    let loaded = archive::load(&e, &docker_archive).unwrap();
    assert_eq!(loaded[0].reference.to_string(), "example.com/da/sample:3");
    let info = e.resolve_image("example.com/da/sample:3").unwrap();
    let id: serde_json::Value = serde_json::from_slice(&skopeo(&[
        "inspect",
        "--config",
        &format!("docker-archive:{}", docker_archive.display()),
    ]))
    .unwrap();
    assert_eq!(
        info.image_config.rootfs().diff_ids().len(),
        id["rootfs"]["diff_ids"].as_array().unwrap().len()
    );
    assert_eq!(disk_tree(&a, &digest), disk_tree(&e, &info.digest));

    // import: a root filesystem tarball becomes a one-layer image that skopeo agrees on.
    let rootfs = Layer::new().dir("bin", 0o755).file("bin/hello", 0o755, b"hi").gzip();
    let tarball = tmp.path().join("rootfs.tar.gz");
    fs::write(&tarball, rootfs).unwrap();
    let f = store_in(tmp.path(), "f");
    let imported = archive::import(&f, &tarball, "imported/rootfs:1").unwrap();
    let info = f.resolve_image("imported/rootfs:1").unwrap();
    assert_eq!(info.digest, imported);
    assert_eq!(info.manifest.layers().len(), 1);
    let remote = format!("{}/imported/rootfs:1", reg.host);
    registry::push(&f, "imported/rootfs:1", Some(&remote), &insecure()).unwrap();
    assert_eq!(skopeo_digest(&format!("docker://{remote}"), &["--tls-verify=false"]), imported.to_string());
    let not_tar = tmp.path().join("not.tar");
    fs::write(&not_tar, b"this is not a tarball").unwrap();
    assert!(archive::import(&f, &not_tar, "bad:1").is_err());
    assert!(f.lookup("bad:1").is_err());
}

#[test]
fn index_selects_platform() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    // An OCI layout holding an index of two single-layer images, pushed with skopeo --all.
    let layout = tmp.path().join("multi");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        fs::write(layout.join("blobs/sha256").join(d.hex()), data).unwrap();
        json!({"digest": d.as_str(), "size": data.len()})
    };
    let mut entries = Vec::new();
    let mut by_arch = std::collections::HashMap::new();
    for arch in ["amd64", "arm64"] {
        let layer = Layer::new().file("arch", 0o644, arch.as_bytes()).build();
        let l = put(&layer);
        let config = json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [l["digest"]]}});
        let c = put(&serde_json::to_vec(&config).unwrap());
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c["digest"], "size": c["size"]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l["digest"], "size": l["size"]}]});
        let m = put(&serde_json::to_vec(&manifest).unwrap());
        by_arch.insert(arch, m["digest"].as_str().unwrap().to_owned());
        entries.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m["digest"], "size": m["size"],
            "platform": {"architecture": arch, "os": "linux"}}));
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries.clone()});
    let i = put(&serde_json::to_vec(&index).unwrap());
    let top = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": i["digest"], "size": i["size"], "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let remote = format!("{}/test/multi:1", reg.host);
    skopeo(&[
        "copy",
        "--quiet",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{remote}"),
    ]);

    let store = store_in(tmp.path(), "s");
    // skopeo re-serializes manifests on the way in: compare with the registry's view.
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{remote}")]);
    let remote_index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    for m in remote_index["manifests"].as_array().unwrap() {
        let arch = m["platform"]["architecture"].as_str().unwrap();
        let arch = if arch == "amd64" { "amd64" } else { "arm64" };
        by_arch.insert(arch, m["digest"].as_str().unwrap().to_owned());
    }
    let index_digest = Digest::of(&raw).to_string();
    let amd = registry::pull(&store, &remote, &insecure()).unwrap();
    assert_eq!(amd.digest.to_string(), by_arch["amd64"]);
    assert_eq!(amd.index_digest.as_ref().map(Digest::to_string), Some(index_digest));
    let opts = RegistryOptions { platform: Platform::parse("linux/arm64").unwrap(), ..insecure() };
    let arm_ref = format!("{}/test/multi:1", reg.host);
    let store2 = store_in(tmp.path(), "s2");
    assert_eq!(registry::pull(&store2, &arm_ref, &opts).unwrap().digest.to_string(), by_arch["arm64"]);
    let opts = RegistryOptions { platform: Platform::parse("linux/s390x").unwrap(), ..insecure() };
    let err = registry::pull(&store2, &arm_ref, &opts).unwrap_err().to_string();
    assert!(err.contains("linux/s390x"), "{err}");
    // The index stays referenced: prune keeps it and the chosen image.
    store.prune().unwrap();
    assert!(store.has_blob(&amd.index_digest.unwrap()));
    store.resolve_image(&remote).unwrap();
    // Loading the layout directly selects amd64 too.
    let store3 = store_in(tmp.path(), "s3");
    let loaded = archive::load(&store3, &layout).unwrap();
    let local_amd = entries[0]["digest"].as_str().unwrap();
    assert_eq!(loaded[0].digest.to_string(), local_amd);
}

#[test]
fn auth_required_refused_and_accepted() {
    let reg = Registry::start(Some(("alice", "s3cret")));
    let tmp = tempfile::tempdir().unwrap();
    let store = store_in(tmp.path(), "s");
    make_image(&store, "local/x:1", &sample_layers()[2..], &[]);
    let remote = format!("{}/private/x:1", reg.host);
    let err = registry::push(&store, "local/x:1", Some(&remote), &insecure()).unwrap_err().to_string();
    assert!(err.to_lowercase().contains("authoriz") || err.contains("401"), "{err}");
    let wrong = Credentials { username: "alice".into(), password: "nope".into() };
    assert!(registry::login(&store, &reg.host, &wrong, true).is_err());
    assert!(!store.root().join("auth.json").exists());
    let right = Credentials { username: "alice".into(), password: "s3cret".into() };
    registry::login(&store, &reg.host, &right, true).unwrap();
    let mode = fs::metadata(store.root().join("auth.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!fs::read_to_string(store.root().join("auth.json")).unwrap().contains("s3cret"));
    // Stored credentials and the stored insecure setting are used without options.
    let digest = registry::push(&store, "local/x:1", Some(&remote), &RegistryOptions::default()).unwrap();
    let other = store_in(tmp.path(), "other");
    let err = registry::pull(&other, &remote, &insecure()).unwrap_err().to_string();
    assert!(err.to_lowercase().contains("authoriz") || err.contains("401"), "{err}");
    assert!(files_in(&other.root().join("content/sha256")).is_empty());
    let pulled = registry::pull(&store, &remote, &RegistryOptions::default()).unwrap();
    assert_eq!(pulled.digest, digest);
    assert!(bulkhead_image::auth::remove_credentials(&store, &reg.host).unwrap());
    assert!(registry::pull(&store, &remote, &RegistryOptions::default()).is_err());
}

fn pushed_sample(reg: &Registry, tmp: &Path) -> (String, Digest, Digest) {
    let a = store_in(tmp, "src");
    let layer = Layer::new().file("big", 0o644, &vec![7u8; 300_000]).build();
    let digest = make_image(&a, "local/c:1", std::slice::from_ref(&layer), &[]);
    let remote = format!("{}/test/c:1", reg.host);
    registry::push(&a, "local/c:1", Some(&remote), &insecure()).unwrap();
    (remote, digest, Digest::of(&layer))
}

fn assert_nothing_stored(store: &Store, remote: &str, layer: &Digest) {
    assert!(!store.has_blob(layer), "bad blob landed in the store");
    assert!(store.lookup(remote).is_err(), "reference recorded");
    assert!(files_in(&store.root().join("tmp")).is_empty(), "temporary files left");
}

#[test]
fn corrupt_blob_is_rejected() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (remote, _, layer) = pushed_sample(&reg, tmp.path());
    let file = reg.blob_file(layer.hex());
    let mut data = fs::read(&file).unwrap();
    data[1000] ^= 0xff;
    fs::write(&file, data).unwrap();
    let store = store_in(tmp.path(), "dst");
    let err = registry::pull(&store, &remote, &insecure()).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }) || err.to_string().contains("digest"), "{err}");
    assert_nothing_stored(&store, &remote, &layer);
}

#[test]
fn truncated_blob_is_rejected() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (remote, _, layer) = pushed_sample(&reg, tmp.path());
    let file = reg.blob_file(layer.hex());
    let data = fs::read(&file).unwrap();
    fs::write(&file, &data[..data.len() / 2]).unwrap();
    let store = store_in(tmp.path(), "dst");
    let err = registry::pull(&store, &remote, &insecure()).unwrap_err().to_string();
    assert!(err.contains("size") || err.contains("digest") || err.contains("bytes"), "{err}");
    assert_nothing_stored(&store, &remote, &layer);
}

#[test]
fn concurrent_pulls_of_one_image_are_safe() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (remote, digest, _) = pushed_sample(&reg, tmp.path());
    let store = store_in(tmp.path(), "dst");
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| registry::pull(&store, &remote, &insecure()))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(r.unwrap().digest, digest);
    }
    assert_eq!(files_in(&store.root().join("content/sha256")).len(), 3);
    assert!(files_in(&store.root().join("tmp")).is_empty());
    // Kernel images push and pull like any image.
    let k = tmp.path().join("vmlinux");
    fs::write(&k, bulkhead_image::kernel::fake_vmlinux("6.1.7", 10_000)).unwrap();
    let kernel = bulkhead_image::kernel::import(&store, &k, None, None).unwrap();
    let kremote = format!("{}/kernels/k:6.1.7", reg.host);
    registry::push(&store, &kernel.reference, Some(&kremote), &insecure()).unwrap();
    let other = store_in(tmp.path(), "other");
    registry::pull(&other, &kremote, &insecure()).unwrap();
    let listed = bulkhead_image::kernel::list(&other).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, kernel.digest);
    assert_eq!(listed[0].version, "6.1.7");
}
