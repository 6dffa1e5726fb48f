//! `bulkhead`: argument parsing and output. Every verb calls into `bulkhead-runtime` or
//! `bulkhead-image`; nothing here is logic a test cannot reach without a terminal.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Run every container in its own virtual machine.
#[derive(Debug, Parser)]
#[command(name = "bulkhead", version, about)]
pub struct Cli {
    /// Store root (images, kernels, containers).
    #[arg(long, global = true, env = "BULKHEAD_ROOT", default_value = "/var/lib/bulkhead")]
    pub root: PathBuf,
    /// Runtime state directory (monitor sockets, pids).
    #[arg(long, global = true, env = "BULKHEAD_RUN_ROOT", default_value = "/run/bulkhead")]
    pub run_root: PathBuf,
    /// Log diagnostics at debug level to stderr (RUST_LOG also works).
    #[arg(long, global = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: commands::Command,
}

impl Cli {
    pub fn paths(&self) -> bulkhead_runtime::Paths {
        bulkhead_runtime::Paths::new(&self.root, &self.run_root)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.command.is_monitor() {
        // Like other command-line tools, end quietly when the reader of our output goes away
        // (`bulkhead ps | head -1`) instead of panicking on EPIPE. Sockets are not affected:
        // the standard library sends on them with MSG_NOSIGNAL. The monitor keeps ignoring it:
        // it must outlive whoever started it.
        // SAFETY: sets a signal's disposition to its default, before any thread exists.
        unsafe {
            use nix::sys::signal::{signal, SigHandler, Signal};
            let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
        }
    }
    init_tracing(cli.debug);
    match commands::run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("bulkhead: {err:#}");
            ExitCode::from(125)
        }
    }
}

fn init_tracing(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"))
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
