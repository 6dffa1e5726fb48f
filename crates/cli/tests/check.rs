//! `bulkhead info` and `bulkhead check` as a user runs them, against real VMs.
//!
//! Needs `BULKHEAD_TEST_KERNEL` and `BULKHEAD_GUEST` (set by `scripts/test`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(name)
            .unwrap_or_else(|| panic!("{name} is not set; run the tests through scripts/test")),
    )
}

fn bulkhead(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    cmd.env("BULKHEAD_ROOT", root.join("store"))
        .env("BULKHEAD_RUN_ROOT", root.join("run"))
        .env("BULKHEAD_GUEST", env_path("BULKHEAD_GUEST"))
        .env_remove("RUST_LOG");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("bulkhead runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A store with the test kernel imported as the default.
fn store_with_kernel() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let kernel = env_path("BULKHEAD_TEST_KERNEL");
    let out = run(bulkhead(dir.path()).args(["kernel", "import"]).arg(&kernel));
    assert!(out.status.success(), "kernel import: {}", text(&out.stderr));
    dir
}

fn qemus_under(dir: &Path) -> usize {
    let out = Command::new("pgrep").arg("-af").arg(dir.to_str().unwrap()).output().unwrap();
    text(&out.stdout).lines().filter(|l| l.contains("qemu-system")).count()
}

#[test]
fn check_boots_pings_and_shuts_down() {
    let dir = store_with_kernel();
    let out = run(bulkhead(dir.path()).arg("check"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "check failed:\n{stdout}\n{}", text(&out.stderr));
    for step in ["qemu", "accelerator", "kernel", "guest init", "boot", "ping", "shutdown"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no {step} line:\n{stdout}"));
        assert!(line[12..].starts_with(" ok"), "{line}");
    }
    for phase in ["vm process start", "kernel to init", "init to ready", "boot to ready", "shutdown"] {
        assert!(stdout.contains(&format!("  {phase}")), "no {phase} phase:\n{stdout}");
    }
    assert_eq!(qemus_under(dir.path()), 0);
    let run_dir = dir.path().join("run");
    assert_eq!(std::fs::read_dir(&run_dir).unwrap().count(), 0, "check left files in {}", run_dir.display());

    let out = run(bulkhead(dir.path()).args(["check", "--format", "json"]));
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["phases"]["boot_to_ready_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["shutdown_ms"].as_f64().is_some(), "{report}");
}

#[test]
fn check_fails_clearly_without_a_kernel_or_with_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bulkhead(dir.path()).arg("check"));
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("kernel")).unwrap();
    assert!(line.contains("FAIL"), "{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("boot")), "no boot after a failed step:\n{stdout}");

    let dir = store_with_kernel();
    let out = run(bulkhead(dir.path()).args(["check", "--kernel", "no/such-kernel:1"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no/such-kernel"), "{}", text(&out.stdout));

    let out = run(bulkhead(dir.path()).args(["check", "--accel", "hvf"]));
    assert_eq!(out.status.code(), Some(2), "bad argument is a usage error");
    assert!(text(&out.stderr).contains("unknown accelerator \"hvf\""), "{}", text(&out.stderr));

    let out = run(bulkhead(dir.path()).args(["check", "--memory", "8"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("memory 8 MiB is below the 64 MiB"), "{}", text(&out.stdout));
}

#[test]
fn check_reports_a_missing_qemu() {
    let dir = store_with_kernel();
    let out = run(bulkhead(dir.path()).arg("check").env("BULKHEAD_QEMU", dir.path().join("nope")));
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("qemu         FAIL QEMU not found"), "{stdout}");
}

#[test]
fn info_reports_the_accelerator_choice_and_why() {
    let dir = store_with_kernel();
    let out = run(bulkhead(dir.path()).args(["info", "--format", "json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let accel = &info["accelerator"]["Ok"];
    let facts = &info["host"];
    let fit = facts["kvm_usable"] == true && !facts["cpu_virt_flag"].is_null() && facts["kvm_pvm"] == false;
    assert_eq!(accel["accel"], if fit { "kvm" } else { "tcg" }, "{info}");
    assert!(!accel["reason"].as_str().unwrap().is_empty());
    assert!(
        info["default_kernel"]["Ok"]["reference"].as_str().unwrap().starts_with("bulkhead/kernel:"),
        "{info}"
    );

    let out = run(bulkhead(dir.path()).arg("info"));
    assert!(text(&out.stdout).lines().any(|l| l.starts_with("accelerator")), "{}", text(&out.stdout));
}

/// Killing the caller outright must not orphan its VM: QEMU dies with it (PR_SET_PDEATHSIG), and
/// the next check sweeps the dead run's directory.
#[test]
fn a_killed_caller_leaves_no_qemu_behind() {
    let dir = store_with_kernel();
    let mut child =
        bulkhead(dir.path()).arg("check").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while qemus_under(dir.path()) == 0 {
        assert!(Instant::now() < deadline, "QEMU never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while qemus_under(dir.path()) > 0 {
        assert!(Instant::now() < deadline, "QEMU outlived its killed parent");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(bulkhead(dir.path()).arg("check"));
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_dir(dir.path().join("run")).unwrap().count(),
        0,
        "stale run directory not swept"
    );
}
