//! Layer unpacking (whiteouts, links, ownership, devices, compression), hostile layers, and the
//! root disk built from the result.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use bulkhead_image::disk;
use bulkhead_image::unpack::{unpack_image, unpack_layer, UnpackOptions, UnpackReport};
use bulkhead_image::{Error, Store};
use common::{make_image, Layer};
use tar::EntryType;

fn layered_image(store: &Store) -> bulkhead_image::Digest {
    let base = Layer::new()
        .dir("bin", 0o755)
        .file("bin/sh", 0o755, b"#!shell")
        .hardlink("bin/sh-link", "bin/sh")
        .symlink("bin/ls", "sh")
        .dir("etc", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/gone", 0o644, b"deleted later")
        .dir("etc/dir-gone", 0o755)
        .file("etc/dir-gone/f", 0o644, b"x")
        .dir("opaque", 0o755)
        .file("opaque/lower1", 0o644, b"lower")
        .dir("opaque/lowerdir", 0o700)
        .file("opaque/lowerdir/f", 0o644, b"lower")
        .dir("dev", 0o755)
        .device("dev/null", EntryType::Char, 1, 3, 0o666)
        .device("dev/sda", EntryType::Block, 8, 0, 0o660)
        .device("dev/old", EntryType::Char, 4, 64, 0o600)
        .fifo("run-fifo")
        .dir("home", 0o755)
        .owned_file("home/user-file", 0o640, 1000, 1001, b"mine")
        .file("setuid", 0o4755, b"suid")
        .build();
    let middle = Layer::new()
        .file("etc/.wh.gone", 0o644, b"")
        .file("etc/.wh.dir-gone", 0o644, b"")
        .file("dev/.wh.old", 0o644, b"")
        .dir("opaque", 0o755)
        .file("opaque/.wh..wh..opq", 0o644, b"")
        .file("opaque/upper", 0o644, b"upper")
        .gzip();
    let top = Layer::new()
        .file("etc/passwd", 0o600, b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n")
        .dir("readonly", 0o555)
        .file("readonly/inside", 0o444, b"ro")
        .symlink("etc/gone", "/etc/passwd")
        .zstd();
    make_image(store, "test/layers:1", &[base, middle, top], &["/bin/sh"])
}

#[test]
fn layers_apply_in_order_with_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let digest = layered_image(&store);
    let root = tmp.path().join("root");
    let report = unpack_image(&store, &digest, &root, &UnpackOptions::default()).unwrap();

    assert_eq!(fs::read(root.join("bin/sh")).unwrap(), b"#!shell");
    assert_eq!(
        fs::metadata(root.join("bin/sh")).unwrap().ino(),
        fs::metadata(root.join("bin/sh-link")).unwrap().ino()
    );
    assert_eq!(fs::read_link(root.join("bin/ls")).unwrap(), Path::new("sh"));
    assert_eq!(fs::read_link(root.join("etc/gone")).unwrap(), Path::new("/etc/passwd"));
    assert!(!root.join("etc/dir-gone").exists());
    assert_eq!(fs::metadata(root.join("etc/passwd")).unwrap().mode() & 0o7777, 0o600);
    let mut opaque: Vec<_> =
        fs::read_dir(root.join("opaque")).unwrap().map(|e| e.unwrap().file_name()).collect();
    opaque.sort();
    assert_eq!(opaque, vec!["upper"]);
    assert!(fs::symlink_metadata(root.join("run-fifo")).unwrap().file_type().is_fifo());
    let m = fs::metadata(root.join("home/user-file")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o640));
    assert_eq!(fs::metadata(root.join("setuid")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(fs::metadata(root.join("readonly")).unwrap().mode() & 0o7777, 0o555);
    // Device nodes are recorded, never created on the host; the whited-out one is gone.
    assert!(fs::symlink_metadata(root.join("dev/null")).is_err());
    let devs: Vec<_> = report.devices.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(devs, vec!["dev/null", "dev/sda"]);
    assert_eq!(report.devices[Path::new("dev/null")].major, 1);

    let info = store.resolve_image("test/layers:1").unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(info.config.cmd, vec!["/bin/sh"]);
    assert_eq!(info.config.env, vec!["PATH=/bin"]);
    assert_eq!(info.config.exposed_ports, vec!["80/tcp"]);
}

/// Walks an unpacked tree into the same shape `disk::read_tree` gives.
fn host_tree(root: &Path, report: &UnpackReport) -> std::collections::BTreeMap<String, (u32, u32, u32, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let rel = format!("/{}", e.path().strip_prefix(root).unwrap().display());
            let size = if m.is_dir() { 0 } else { m.len() };
            out.insert(rel, (m.mode(), m.uid(), m.gid(), size));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    for (p, d) in &report.devices {
        let kind = if d.kind == 'c' { 0o020000 } else { 0o060000 };
        out.insert(
            format!("/{}", p.display()),
            (kind | d.mode, u32::try_from(d.uid).unwrap(), u32::try_from(d.gid).unwrap(), 0),
        );
    }
    out
}

#[test]
fn root_disk_matches_unpacked_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let digest = layered_image(&store);
    let root = tmp.path().join("root");
    let report = unpack_image(&store, &digest, &root, &UnpackOptions::default()).unwrap();
    let mut want = host_tree(&root, &report);
    // What the guest mounts over is added where the image has nothing.
    for dir in ["/proc", "/sys"] {
        want.insert(dir.to_owned(), (0o40755, 0, 0, 0));
    }
    for file in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
        want.insert(file.to_owned(), (0o100644, 0, 0, 0));
    }

    let disks: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| disk::root_disk(&store, digest.as_str()))).collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert!(disks.iter().all(|d| d == &disks[0]));
    let image = &disks[0];
    assert_eq!(fs::metadata(image).unwrap().mode() & 0o222, 0, "root disk is read-only");
    let got: std::collections::BTreeMap<String, (u32, u32, u32, u64)> = disk::read_tree(image)
        .unwrap()
        .into_iter()
        .map(|(p, e)| (p, (e.mode, e.uid, e.gid, e.size)))
        .collect();
    assert_eq!(got, want);
    // Built once: a second call returns the cached file untouched.
    let before = fs::metadata(image).unwrap().modified().unwrap();
    assert_eq!(&disk::root_disk(&store, "test/layers:1").unwrap(), image);
    assert_eq!(fs::metadata(image).unwrap().modified().unwrap(), before);
    let out = disk::debugfs(image, "cat /etc/passwd\nstat /etc/gone\n", false).unwrap();
    assert!(out.contains("user:x:1000"), "{out}");
    assert!(out.contains("Fast link dest: \"/etc/passwd\""), "{out}");
    let out = disk::debugfs(image, "stat /dev/null\nstat /dev/sda\n", false).unwrap();
    assert!(out.contains("Device major/minor number: 01:03"), "{out}");
    assert!(out.contains("Device major/minor number: 08:00"), "{out}");
    let fsck = std::process::Command::new("e2fsck").args(["-fn"]).arg(image).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
    assert!(fs::read_dir(store.root().join("tmp")).unwrap().next().is_none(), "work files left");
}

fn unpack_one(layer: Vec<u8>, root: &Path, opts: &UnpackOptions) -> Result<UnpackReport, Error> {
    let mut report = UnpackReport::default();
    fs::create_dir_all(root).unwrap();
    unpack_layer(&layer[..], "test-layer", root, &mut report, opts).map(|_| report)
}

#[test]
fn hostile_layers_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    let out = outside.display().to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", Layer::new().file("../escape", 0o644, b"x").build(), "'..'"),
        ("dotdot-deep", Layer::new().dir("a", 0o755).file("a/../../escape", 0o644, b"x").build(), "'..'"),
        ("absolute", Layer::new().file(&format!("{out}/abs"), 0o644, b"x").build(), "absolute"),
        (
            "symlink-parent",
            Layer::new().symlink("link", &out).file("link/pwned", 0o644, b"x").build(),
            "symlink",
        ),
        (
            "symlink-parent-rel",
            Layer::new().symlink("link", "../outside").file("link/pwned", 0o644, b"x").build(),
            "symlink",
        ),
        ("symlink-dir-parent", Layer::new().symlink("d", &out).dir("d/sub", 0o755).build(), "symlink"),
        ("hardlink-dotdot", Layer::new().hardlink("h", "../outside/secret").build(), "'..'"),
        ("hardlink-absolute", Layer::new().hardlink("h", &format!("{out}/secret")).build(), "absolute"),
        (
            "hardlink-via-symlink",
            Layer::new().symlink("l", &out).hardlink("h", "l/secret").build(),
            "symlink",
        ),
        ("hardlink-missing", Layer::new().hardlink("h", "nothere").build(), "does not exist"),
        (
            "whiteout-via-symlink",
            Layer::new().symlink("l", &out).file("l/.wh.secret", 0o644, b"").build(),
            "symlink",
        ),
        (
            "opaque-via-symlink",
            Layer::new().symlink("l", &out).file("l/.wh..wh..opq", 0o644, b"").build(),
            "symlink",
        ),
        ("huge-header", Layer::new().lying_file("big", 1 << 40, b"").build(), "limit"),
        ("short-content", Layer::new().lying_file("short", 4096, b"abc").build(), "short"),
    ];
    let opts = UnpackOptions { max_layer_bytes: 1 << 20, max_entries: 1000 };
    for (name, layer, want) in cases {
        let root = tmp.path().join(format!("root-{name}"));
        let err = unpack_one(layer, &root, &opts).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: {err}");
        assert!(err.contains("test-layer"), "{name}: error names no layer: {err}");
        let mut left: Vec<_> = fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, vec!["secret"], "{name}: wrote outside");
        assert_eq!(fs::read(outside.join("secret")).unwrap(), b"secret", "{name}");
    }
    assert!(!tmp.path().join("escape").exists());

    // Replacing a symlink with a file replaces the link, never writes through it.
    let root = tmp.path().join("root-replace");
    unpack_one(
        Layer::new().symlink("x", &format!("{out}/secret")).file("x", 0o644, b"new").build(),
        &root,
        &opts,
    )
    .unwrap();
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"secret");
    assert_eq!(fs::read(root.join("x")).unwrap(), b"new");

    // Devices are recorded, not created.
    let root = tmp.path().join("root-dev");
    let report =
        unpack_one(Layer::new().device("kmem", EntryType::Char, 1, 2, 0o600).build(), &root, &opts).unwrap();
    assert!(fs::symlink_metadata(root.join("kmem")).is_err());
    assert_eq!(report.devices.len(), 1);

    // A decompression bomb stops at the bound.
    let bomb_data = vec![0u8; 8 << 20];
    let bomb = Layer::new().file("zeros", 0o644, &bomb_data).gzip();
    assert!(bomb.len() < 100_000);
    let err = unpack_one(bomb, &tmp.path().join("root-bomb"), &opts).unwrap_err().to_string();
    assert!(err.contains("zeros") && err.contains("limit"), "{err}");
}

#[test]
fn corrupt_layer_fails_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let layer = Layer::new().file("a", 0o644, b"hello world").build();
    let digest = make_image(&store, "x:1", std::slice::from_ref(&layer), &[]);
    let ld = bulkhead_image::Digest::of(&layer);
    let mut bad = layer.clone();
    bad[600] ^= 1;
    fs::write(store.blob_path(&ld), &bad).unwrap();
    let err = disk::root_disk(&store, digest.as_str()).unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");
    assert!(fs::read_dir(store.root().join("disks")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".img")));
}
