//! `info` and `check`: what this host can do.

use std::process::ExitCode;
use std::time::Duration;

use bulkhead_runtime::check::{self, CheckOptions};
use bulkhead_runtime::host;
use bulkhead_vmm::AccelRequest;
use clap::Args;

use super::output::Format;
use crate::Cli;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Accelerator to evaluate: auto, kvm or tcg.
    #[arg(long, default_value = "auto")]
    pub accel: AccelRequest,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Accelerator: auto (KVM only where it can run an ordinary guest), kvm or tcg.
    #[arg(long, default_value = "auto")]
    pub accel: AccelRequest,
    /// Kernel image to boot (default: the store's default kernel).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// Seconds the guest may take to become ready.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn info(cli: &Cli, args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let info = host::info(&cli.paths(), args.accel);
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let show = |r: Result<String, &String>| r.unwrap_or_else(|e| format!("unavailable: {e}"));
    println!("bulkhead      {}", info.bulkhead_version);
    println!(
        "qemu          {}",
        show(info.qemu.as_ref().map(|q| format!("{} {}", q.path.display(), q.version)))
    );
    println!(
        "kvm           /dev/kvm {}, usable {}, cpu flag {}, paravirtual (PVM) {}",
        if info.host.kvm_device { "present" } else { "absent" },
        yes(info.host.kvm_usable),
        info.host.cpu_virt_flag.as_deref().unwrap_or("none"),
        yes(info.host.kvm_pvm),
    );
    println!(
        "accelerator   {}",
        show(info.accelerator.as_ref().map(|c| format!("{} ({})", c.accel, c.reason)))
    );
    println!(
        "kernel        {}",
        show(info.default_kernel.as_ref().map(|k| format!("{} {} {}", k.reference, k.version, k.digest)))
    );
    println!("guest init    {}", show(info.guest_init.as_ref().map(|p| p.display().to_string())));
    println!("store         {}", info.store_root.display());
    println!("run state     {}", info.run_root.display());
    Ok(ExitCode::SUCCESS)
}

pub fn check(cli: &Cli, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let options = CheckOptions {
        accel: args.accel,
        kernel: args.kernel.clone(),
        memory_mib: args.memory,
        ready_timeout: Duration::from_secs(args.timeout),
    };
    let table = args.format == Format::Table;
    let report = check::run(&cli.paths(), &options, |step| {
        if table {
            println!("{:<12} {:<4} {}", step.name, if step.ok { "ok" } else { "FAIL" }, step.detail);
        }
    });
    if table {
        if let Some(p) = report.phases {
            println!("  vm process start  {:>8.1} ms", p.vm_process_ms);
            println!("  kernel to init    {:>8.1} ms", p.kernel_to_init_ms);
            println!("  init to ready     {:>8.1} ms", p.init_to_ready_ms);
            println!("  boot to ready     {:>8.1} ms", p.boot_to_ready_ms);
        }
        if let Some(ms) = report.shutdown_ms {
            println!("  shutdown          {ms:>8.1} ms");
        }
        if let Some(log) = &report.console_log {
            println!("guest console log kept at {}", log.display());
        }
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
