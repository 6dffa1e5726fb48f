//! `bulkhead check`: proves this host can run container VMs, like `kata-runtime check`.
//!
//! Finds QEMU, the accelerator (and why), the default kernel and the guest init, then boots a VM
//! to ready, pings it and shuts it down, timing each phase.

use std::path::PathBuf;
use std::time::Duration;

use bulkhead_vmm::{choose_accel, AccelRequest, HostFacts};
use serde::Serialize;

use crate::sandbox::{BootPhases, Sandbox, SandboxConfig};
use crate::{guest, host, Paths};

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub accel: AccelRequest,
    /// A kernel image reference; the default kernel when `None`.
    pub kernel: Option<String>,
    pub memory_mib: u32,
    pub ready_timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            accel: AccelRequest::Auto,
            kernel: None,
            memory_mib: 128,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub steps: Vec<Step>,
    pub phases: Option<BootPhases>,
    pub ping_ms: Option<f64>,
    pub shutdown_ms: Option<f64>,
    /// Kept only when the boot failed, so the guest's last words can be read.
    pub console_log: Option<PathBuf>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.ok)
    }
}

/// Runs the check; `progress` sees each step as it completes. Stops at the first failure.
pub fn run(paths: &Paths, options: &CheckOptions, mut progress: impl FnMut(&Step)) -> CheckReport {
    let mut report = CheckReport::default();
    let mut step = |report: &mut CheckReport, name: &'static str, result: Result<String, String>| -> bool {
        let ok = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        let step = Step { name, ok, detail };
        progress(&step);
        report.steps.push(step);
        ok
    };

    let qemu = host::qemu().map_err(|e| e.to_string());
    let qemu_detail =
        qemu.as_ref().map(|q| format!("{} {}", q.path.display(), q.version)).map_err(Clone::clone);
    if !step(&mut report, "qemu", qemu_detail) {
        return report;
    }
    let accel = choose_accel(options.accel, &HostFacts::probe()).map_err(|e| e.to_string());
    if !step(
        &mut report,
        "accelerator",
        accel.as_ref().map(|c| format!("{}: {}", c.accel, c.reason)).map_err(Clone::clone),
    ) {
        return report;
    }
    let kernel = resolve_kernel(paths, options.kernel.as_deref());
    if !step(&mut report, "kernel", kernel.as_ref().map(|(_, d)| d.clone()).map_err(Clone::clone)) {
        return report;
    }
    let initramfs = guest::find_guest_binary()
        .and_then(|binary| Ok((guest::initramfs(paths, &binary)?, binary)))
        .map_err(|e| e.to_string());
    if !step(
        &mut report,
        "guest init",
        initramfs.as_ref().map(|(_, b)| b.display().to_string()).map_err(Clone::clone),
    ) {
        return report;
    }
    let (Ok(accel), Ok((kernel, _)), Ok((initramfs, _))) = (accel, kernel, initramfs) else {
        unreachable!("each step returned above on failure");
    };

    sweep_stale_runs(paths);
    let run_dir = paths.run_root.join(format!("check-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        step(&mut report, "boot", Err(format!("creating {}: {e}", run_dir.display())));
        return report;
    }
    let console_log = run_dir.join("console.log");
    let config = SandboxConfig {
        qemu: None,
        kernel,
        initramfs,
        memory_mib: options.memory_mib,
        vcpus: 1,
        accel: accel.accel,
        disks: Vec::new(),
        cmdline: crate::tcg::guest_cmdline(paths, accel.accel),
        run_dir: run_dir.clone(),
        console_log: console_log.clone(),
        ready_timeout: options.ready_timeout,
        net: None,
    };
    let booted = Sandbox::boot(&config);
    let sandbox_ok = match booted {
        Ok(mut sandbox) => {
            let phases = sandbox.phases();
            report.phases = Some(phases);
            step(
                &mut report,
                "boot",
                Ok(format!("ready in {:.0} ms (agent {})", phases.boot_to_ready_ms, sandbox.agent_version())),
            );
            let pinged = sandbox.ping().map_err(|e| e.to_string());
            report.ping_ms = pinged.as_ref().ok().map(|d| d.as_secs_f64() * 1e3);
            if step(
                &mut report,
                "ping",
                pinged.map(|d| format!("{:.2} ms round trip", d.as_secs_f64() * 1e3)),
            ) {
                let down = sandbox.shutdown(Duration::from_secs(20)).map_err(|e| e.to_string());
                report.shutdown_ms = down.as_ref().ok().map(|d| d.as_secs_f64() * 1e3);
                step(
                    &mut report,
                    "shutdown",
                    down.map(|d| format!("VM exited {:.0} ms after the request", d.as_secs_f64() * 1e3)),
                )
            } else {
                let _ = sandbox.hard_stop();
                false
            }
        }
        Err(e) => {
            step(&mut report, "boot", Err(e.to_string()));
            false
        }
    };
    if sandbox_ok {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        report.console_log = Some(console_log);
    }
    report
}

/// Removes the run directories of earlier checks whose process is gone (killed mid-check).
fn sweep_stale_runs(paths: &Paths) {
    let Ok(entries) = std::fs::read_dir(&paths.run_root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix("check-")).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn resolve_kernel(paths: &Paths, reference: Option<&str>) -> Result<(PathBuf, String), String> {
    let store = bulkhead_image::Store::open(&paths.root).map_err(|e| e.to_string())?;
    let file = bulkhead_image::kernel::resolve(&store, reference).map_err(|e| e.to_string())?;
    let detail = format!("{} ({})", file.version, short_digest(&file.digest));
    Ok((file.path, detail))
}

fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}
