//! Real microVMs under the accelerator this host supports (TCG here): boot, handshake, ping,
//! graceful shutdown, hard stop, a guest panic, and the errors for what is missing or broken.
//!
//! Needs `BULKHEAD_TEST_KERNEL` (a vmlinux) and `BULKHEAD_GUEST` (the static init); the test
//! command (`scripts/test`) builds both and sets them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_runtime::sandbox::{Sandbox, SandboxConfig};
use bulkhead_runtime::{guest, Error, Paths};
use bulkhead_vmm::{choose_accel, AccelRequest, HostFacts};

struct Fixture {
    dir: tempfile::TempDir,
    config: SandboxConfig,
}

fn env_path(name: &str) -> PathBuf {
    let value = std::env::var_os(name)
        .unwrap_or_else(|| panic!("{name} is not set; run the tests through scripts/test"));
    PathBuf::from(value)
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::new(dir.path().join("root"), dir.path().join("run"));
    let initramfs = guest::initramfs(&paths, &env_path("BULKHEAD_GUEST")).unwrap();
    let run_dir = dir.path().join("vm");
    std::fs::create_dir_all(&run_dir).unwrap();
    let accel = choose_accel(AccelRequest::Auto, &HostFacts::probe()).unwrap().accel;
    let config = SandboxConfig {
        qemu: None,
        kernel: env_path("BULKHEAD_TEST_KERNEL"),
        initramfs,
        memory_mib: 256,
        vcpus: 1,
        accel,
        disks: Vec::new(),
        cmdline: String::new(),
        console_log: run_dir.join("console.log"),
        run_dir,
        ready_timeout: Duration::from_secs(60),
        net: None,
    };
    Fixture { dir, config }
}

/// QEMU processes whose command line mentions `dir`.
fn qemus_under(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("pgrep").arg("-af").arg(dir.to_str().unwrap()).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("qemu-system"))
        .map(str::to_owned)
        .collect()
}

fn leftovers(run_dir: &Path) -> Vec<String> {
    std::fs::read_dir(run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "console.log")
        .collect()
}

#[test]
fn boots_answers_and_shuts_down_gracefully() {
    let f = fixture();
    let mut sandbox = Sandbox::boot(&f.config).unwrap();
    let phases = sandbox.phases();
    assert!(phases.kernel_to_init_ms > 0.0 && phases.init_to_ready_ms > 0.0, "{phases:?}");
    assert!(phases.boot_to_ready_ms >= phases.vm_process_ms, "{phases:?}");
    assert_eq!(sandbox.agent_version(), env!("CARGO_PKG_VERSION"));
    assert_eq!(sandbox.vm().status().unwrap(), "running");
    for _ in 0..3 {
        sandbox.ping().unwrap();
    }
    sandbox.shutdown(Duration::from_secs(30)).unwrap();
    assert!(qemus_under(f.dir.path()).is_empty(), "QEMU left running: {:?}", qemus_under(f.dir.path()));
    assert!(leftovers(&f.config.run_dir).is_empty(), "files left: {:?}", leftovers(&f.config.run_dir));
}

#[test]
fn hard_stop_ends_the_vm_and_cleans_up() {
    let f = fixture();
    let sandbox = Sandbox::boot(&f.config).unwrap();
    assert_eq!(qemus_under(f.dir.path()).len(), 1);
    sandbox.hard_stop().unwrap();
    assert!(qemus_under(f.dir.path()).is_empty());
    assert!(leftovers(&f.config.run_dir).is_empty(), "files left: {:?}", leftovers(&f.config.run_dir));
}

#[test]
fn dropping_a_sandbox_kills_its_vm() {
    let f = fixture();
    let sandbox = Sandbox::boot(&f.config).unwrap();
    drop(sandbox);
    assert!(qemus_under(f.dir.path()).is_empty());
}

#[test]
fn a_guest_kernel_panic_is_reported_with_its_line() {
    let mut f = fixture();
    // No init to run and no root device: the kernel panics looking for a root filesystem.
    f.config.cmdline = "rdinit=/does-not-exist".into();
    let err = Sandbox::boot(&f.config).err().expect("a guest without init booted");
    let text = err.to_string();
    assert!(
        text.starts_with("guest kernel panicked: Kernel panic - not syncing: VFS: Unable to mount root fs"),
        "{text}"
    );
    assert!(qemus_under(f.dir.path()).is_empty());
}

#[test]
fn missing_and_corrupt_inputs_are_clear_errors() {
    let mut f = fixture();
    f.config.kernel = f.dir.path().join("no-such-vmlinux");
    let err = Sandbox::boot(&f.config).err().unwrap().to_string();
    assert_eq!(err, format!("kernel {} does not exist", f.config.kernel.display()));

    let corrupt = f.dir.path().join("corrupt-vmlinux");
    std::fs::write(&corrupt, vec![0x42; 8192]).unwrap();
    f.config.kernel = corrupt.clone();
    let err = Sandbox::boot(&f.config).err().unwrap().to_string();
    assert!(
        err.starts_with(&format!(
            "kernel {} is not a bootable x86_64 vmlinux: no ELF magic",
            corrupt.display()
        )),
        "{err}"
    );

    let mut f = fixture();
    f.config.qemu = Some(f.dir.path().join("qemu-system-x86_64"));
    std::fs::write(f.config.qemu.as_ref().unwrap(), "#!/bin/sh\necho 'qemu: this is not QEMU' >&2\nexit 1\n")
        .unwrap();
    std::process::Command::new("chmod").arg("+x").arg(f.config.qemu.as_ref().unwrap()).status().unwrap();
    let err = Sandbox::boot(&f.config).err().unwrap().to_string();
    assert_eq!(err, "QEMU exited (exit status: 1) before connecting to QMP: qemu: this is not QEMU");
    assert!(leftovers(&f.config.run_dir).is_empty(), "files left: {:?}", leftovers(&f.config.run_dir));

    f.config.qemu = Some(f.dir.path().join("absent-qemu"));
    let err = Sandbox::boot(&f.config).err().unwrap();
    assert!(matches!(err, Error::Vm(bulkhead_vmm::Error::Spawn { .. })), "{err}");
    assert!(err.to_string().contains("absent-qemu"), "{err}");

    f.config.qemu = None;
    f.config.memory_mib = 16;
    let err = Sandbox::boot(&f.config).err().unwrap().to_string();
    assert_eq!(err, "invalid VM configuration: memory 16 MiB is below the 64 MiB the guest kernel needs");
}
