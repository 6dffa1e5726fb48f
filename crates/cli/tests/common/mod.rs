//! Fixtures for tests that drive the `bulkhead` binary: a private store with the test kernel
//! and a busybox image the test builds itself.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub fn env_path(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(name)
            .unwrap_or_else(|| panic!("{name} is not set; run the tests through scripts/test")),
    )
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A store of its own, with the kernel and a `busybox` image; everything under one temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let env = Env { dir };
        env.ok(&["kernel", "import", env_path("BULKHEAD_TEST_KERNEL").to_str().unwrap()]);
        env.ok(&["import", busybox_tarball().to_str().unwrap(), "busybox"]);
        env
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
        cmd.env("BULKHEAD_ROOT", self.root())
            .env("BULKHEAD_RUN_ROOT", self.dir.path().join("run"))
            .env("BULKHEAD_GUEST", env_path("BULKHEAD_GUEST"))
            // Containers stay off the host's interfaces unless a test asks for a network.
            .env("BULKHEAD_NETWORK", "none")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("bulkhead runs")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "bulkhead {args:?} failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        out[0].clone()
    }

    /// QEMU and monitor processes that belong to this environment.
    pub fn processes(&self) -> Vec<String> {
        let out = Command::new("pgrep").arg("-af").arg(self.dir.path().to_str().unwrap()).output().unwrap();
        text(&out.stdout).lines().filter(|l| !l.contains("pgrep")).map(str::to_owned).collect()
    }

    /// [`Env::processes`] once none are left, or after 10 s: a monitor ends a moment after the
    /// command that waited for its container.
    pub fn processes_after_exit(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = self.processes();
            if left.is_empty() || std::time::Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever a failed test left running goes with it.
        let _ = Command::new("pkill").arg("-9").arg("-f").arg(self.dir.path().to_str().unwrap()).status();
    }
}

/// A busybox root filesystem tarball, built once per test process: busybox-static with its
/// applets linked, an /etc/passwd and /etc/group with two users, and a non-executable file.
pub fn busybox_tarball() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bulkhead-test-busybox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("rootfs");
        for d in ["bin", "etc", "tmp", "root", "home/alice", "data", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
        let applets = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in text(&applets.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
            }
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nbob:x:1001:1001::/tmp:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nalice:x:1000:\nbob:x:1001:\nstaff:x:50:alice\n").unwrap();
        std::fs::write(root.join("data/not-executable"), "#!/bin/sh\necho no\n").unwrap();
        std::fs::write(root.join("etc/hostname"), "image\n").unwrap();
        let tarball = dir.join("busybox.tar");
        let status = Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        tarball
    })
}
