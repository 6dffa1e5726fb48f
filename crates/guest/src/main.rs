//! `bulkhead-guest`: PID 1 of every bulkhead VM.
//!
//! It moves off the initramfs onto a tmpfs root, mounts the filesystems a Linux userspace
//! expects, opens the agent port, answers the host's handshake with its boot timestamps, and
//! serves requests until told to shut down: `Setup` mounts the container's root filesystem
//! ([`rootfs`]), `Start` runs a process in the container's namespaces ([`container`],
//! [`spawn`]) with its stdio streamed under flow control ([`stdio`], [`port`]), and the reaper
//! hands exit statuses to the processes' supervisors ([`reaper`]). It never exits: PID 1
//! exiting panics the kernel. On any failure it prints why on the console and powers the VM
//! off, so a broken guest ends its VM instead of hanging it.

mod agent;
mod container;
mod copy;
mod identity;
mod lookup;
mod mounts;
mod net;
mod port;
mod power;
mod reaper;
mod rootfs;
mod spawn;
mod stats;
mod stdio;
mod users;
mod workers;

use std::time::Duration;

fn main() {
    let init_start_ns = boottime_ns();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("bulkhead-guest: panic: {info}");
        power::off();
    }));
    if std::process::id() != 1 {
        eprintln!(
            "bulkhead-guest: must run as PID 1 inside a bulkhead VM (this is PID {})",
            std::process::id()
        );
        std::process::exit(2);
    }
    if let Err(err) = run(init_start_ns) {
        eprintln!("bulkhead-guest: {err}");
    }
    power::off();
}

fn run(init_start_ns: u64) -> Result<(), Error> {
    reaper::start()?;
    mounts::leave_initramfs()?;
    mounts::mount_all()?;
    // Everything a container needs that does not depend on it is made now, before the first
    // `Hello`, so that a VM restored from a template has it already: the loopback interface,
    // the spawner (and the container's pid namespace), the container's /dev and /sys, and the
    // threads that will pump its streams.
    net::loopback_up().map_err(|e| Error::Prepare(format!("bringing up lo: {e}")))?;
    let spawner = spawn::Spawner::start().map_err(|e| Error::Prepare(e.to_string()))?;
    rootfs::prepare().map_err(|e| Error::Prepare(e.to_string()))?;
    workers::prepare().map_err(Error::Thread)?;
    let port = agent::open_port(Duration::from_secs(10))?;
    let ready_ns = boottime_ns();
    agent::serve(port, spawner, bulkhead_proto::BootTimes { init_start_ns, ready_ns })
}

/// Nanoseconds of `CLOCK_BOOTTIME`: time since the kernel started, including suspend.
fn boottime_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Why the init could not go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount { fstype: &'static str, target: &'static str, source: nix::Error },
    #[error("creating {path}: {source}")]
    Mkdir { path: String, source: std::io::Error },
    #[error("agent port {name:?} did not appear within {seconds} s")]
    NoPort { name: &'static str, seconds: u64 },
    #[error("opening agent port {path}: {source}")]
    OpenPort { path: String, source: std::io::Error },
    #[error("agent channel: {0}")]
    Frame(#[from] bulkhead_proto::FrameError),
    #[error("{0}")]
    Version(#[from] bulkhead_proto::VersionMismatch),
    #[error("the host closed the agent channel")]
    HostGone,
    #[error("the host sent {0} before the handshake")]
    NoHandshake(String),
    #[error("signal setup: {0}")]
    Signals(nix::Error),
    #[error("leaving the initramfs ({step}): {source}")]
    SwitchRoot { step: &'static str, source: nix::Error },
    #[error("starting the reaper thread: {0}")]
    Thread(std::io::Error),
    #[error("preparing for containers: {0}")]
    Prepare(String),
}
