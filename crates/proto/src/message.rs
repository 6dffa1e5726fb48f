//! Control messages and the version handshake.

use serde::{Deserialize, Serialize};

/// The protocol version both ends must speak. Bump on any incompatible change to frames or messages.
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-serial port that carries the agent channel.
pub const AGENT_PORT_NAME: &str = "bulkhead.agent";

/// Guest-side timestamps of the boot, in nanoseconds of the guest's `CLOCK_BOOTTIME` (which starts
/// when the kernel starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimes {
    /// When the init binary began to run: the kernel's share of the boot.
    pub init_start_ns: u64,
    /// When the init had mounted its filesystems and opened the agent port.
    pub ready_ns: u64,
}

/// A control message. Stream data travels in [`crate::Frame::Data`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Host → guest, first message of a session.
    Hello {
        version: u32,
        /// Host wall-clock time, so the guest starts with a correct clock.
        unix_time_ns: u64,
        /// Fresh randomness from the host, mixed into the guest's RNG (and credited) before
        /// anything else runs: a VM restored from a template must not reuse the template's.
        #[serde(default)]
        entropy: Vec<u8>,
    },
    /// Guest → host, the answer to `Hello`.
    Ready {
        version: u32,
        /// The guest agent's build version, for diagnostics.
        agent_version: String,
        boot: BootTimes,
    },
    /// Liveness probe; the peer answers `Pong` with the same sequence number.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Host → guest, only before `Hello`, to a VM that is becoming an image's template: mount
    /// `device` (`ext4`, the image's copy-on-write root) read-write as the container root, so
    /// that containers restored from the template find it mounted, and read the programs named
    /// in `programs` (looked up in `path`, with the ELF interpreter and C library they load) so
    /// that they find those in memory too. Answered by `SetupDone` or `Error`; a later `Setup`
    /// naming the same device uses that mount.
    MountRoot {
        device: String,
        #[serde(default)]
        programs: Vec<String>,
        #[serde(default)]
        path: String,
    },
    /// Host → guest: flush filesystems and power the VM off.
    Shutdown,
    /// Guest → host: the shutdown is under way; the VM exits next.
    ShuttingDown,
    /// Either direction: a request failed.
    Error {
        message: String,
    },

    // --- containers (issue: `bulkhead run`) ---
    /// Host → guest, once, before any `Start`: mount the container's root filesystem and prepare
    /// what every process of the container shares. Answered by `SetupDone` or `Error`.
    Setup {
        container: ContainerSpec,
    },
    SetupDone,
    /// Host → guest: start a process. `id` is chosen by the host and names the process and its
    /// streams from then on (see [`stream_id`]). The first `Start` is the container's main process;
    /// later ones are `exec`s into the same namespaces. Answered by `Started` or `StartFailed`.
    Start {
        id: u32,
        process: ProcessSpec,
    },
    Started {
        id: u32,
        pid: i32,
    },
    /// The process could not be started. `exit_code` follows Docker: 126 cannot execute, 127 not
    /// found, 125 anything else.
    StartFailed {
        id: u32,
        exit_code: i32,
        message: String,
    },
    /// Host → guest: deliver `signal` to process `id`.
    Signal {
        id: u32,
        signal: i32,
    },
    /// Host → guest: the terminal of process `id` changed size.
    Resize {
        id: u32,
        size: WindowSize,
    },
    /// Either direction: the receiver of stream `stream` consumed `bytes` more; the sender may
    /// send that many more (see "Flow control" in the crate docs).
    Credit {
        stream: u32,
        bytes: u32,
    },
    /// Guest → host: process `id` ended. Sent after the end of its output streams.
    Exited {
        id: u32,
        status: ExitStatus,
    },
    /// Host → guest: resource usage of the whole guest. Answered by `StatsReply`.
    Stats,
    StatsReply {
        stats: GuestStats,
    },
    /// Host → guest: the processes of the container. Answered by `TopReply`.
    Top,
    TopReply {
        processes: Vec<ProcessInfo>,
    },
    /// Host → guest: receive a tar archive on stream `stream` and unpack it into the directory
    /// `path` inside the container. Answered at once by `CopyStarted` (or `Error`); the host then
    /// sends the archive and an empty frame, and the guest reports `CopyDone`.
    CopyIn {
        stream: u32,
        path: String,
    },
    /// Host → guest: send `path` inside the container as a tar archive on stream `stream`.
    /// Answered at once by `CopyStarted` (or `Error`); the archive follows, ended by an empty
    /// frame, then `CopyDone`.
    CopyOut {
        stream: u32,
        path: String,
    },
    CopyStarted {
        stream: u32,
    },
    /// Guest → host: the copy on `stream` finished; `error` says why it failed, if it did.
    CopyDone {
        stream: u32,
        error: Option<String>,
    },
}

/// What a container shares across its processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub hostname: String,
    /// Block device of the root disk, e.g. `/dev/vda`.
    pub root_device: String,
    /// Its filesystem: `erofs` or `ext4`.
    pub root_fstype: String,
    /// The root disk is the container's own (copy-on-write on the host) and is mounted
    /// read-write as the root itself: no overlay, and `rw_device` must be `None`.
    #[serde(default)]
    pub root_writable: bool,
    /// With a read-only root disk: block device of the writable layer (ext4, made by the host),
    /// e.g. `/dev/vdb`, under an overlay. `None` keeps the writable layer in guest memory (tmpfs).
    pub rw_device: Option<String>,
    /// Mount the container's root filesystem read-only (`--read-only`).
    pub read_only: bool,
    /// Paths inside the container that get a fresh tmpfs (`--tmpfs`).
    pub tmpfs: Vec<String>,
    /// Contents for `/etc/hosts` and `/etc/resolv.conf` inside the container.
    pub hosts: String,
    pub resolv_conf: String,
    /// The network interface; `None` is `--network none` (only `lo`).
    #[serde(default)]
    pub network: Option<crate::NetworkSpec>,
}

/// How to run one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// `args[0]` is looked up in the process's `PATH` (from `env`) when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Working directory inside the container; created if missing (as Docker does).
    pub cwd: String,
    /// `user[:group]`, each a name or a number, resolved in the container's own `/etc/passwd` and
    /// `/etc/group`; empty means root. Supplementary groups come from `/etc/group`.
    pub user: String,
    pub rlimits: Vec<Rlimit>,
    /// Run on a pseudo-terminal of this size (`-t`); stdout and stderr are then one stream.
    pub tty: Option<WindowSize>,
    /// Keep stdin open for the host to write to (`-i`); otherwise stdin is `/dev/null`.
    pub stdin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// A resource limit, named as in `setrlimit(2)` without the prefix: `nofile`, `nproc`, `core`, ….
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell's and Docker's single number: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// Resource usage of a guest, from inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GuestStats {
    /// CPU time used by all processes since boot.
    pub cpu_usage_ns: u64,
    /// Memory in use (total minus available) and the guest's total.
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Processes in the container.
    pub pids: u32,
}

/// One row of `top`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    /// As seen from the VM (not the container's pid namespace).
    pub pid: i32,
    pub ppid: i32,
    pub user: String,
    /// CPU time, user plus system, in milliseconds.
    pub cpu_ms: u64,
    pub rss_bytes: u64,
    pub command: String,
}

/// Stream numbers of a process's standard streams: `id * 4 + 0` stdin, `+ 1` stdout, `+ 2`
/// stderr. Numbers with low bits `3` are free for other streams (copies).
pub fn stream_id(id: u32, stdio: Stdio) -> u32 {
    id.wrapping_mul(4).wrapping_add(stdio as u32)
}

/// The standard streams, as numbered in [`stream_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
}

/// Bytes either side may send on a stream before the receiver grants more with `Credit`.
pub const INITIAL_CREDIT: u32 = 256 * 1024;

impl Message {
    /// The message's type tag, for logs and errors that must not echo a peer's contents.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Ready { .. } => "ready",
            Message::Ping { .. } => "ping",
            Message::MountRoot { .. } => "mount_root",
            Message::Pong { .. } => "pong",
            Message::Shutdown => "shutdown",
            Message::ShuttingDown => "shutting_down",
            Message::Error { .. } => "error",
            Message::Setup { .. } => "setup",
            Message::SetupDone => "setup_done",
            Message::Start { .. } => "start",
            Message::Started { .. } => "started",
            Message::StartFailed { .. } => "start_failed",
            Message::Signal { .. } => "signal",
            Message::Resize { .. } => "resize",
            Message::Credit { .. } => "credit",
            Message::Exited { .. } => "exited",
            Message::Stats => "stats",
            Message::StatsReply { .. } => "stats_reply",
            Message::Top => "top",
            Message::TopReply { .. } => "top_reply",
            Message::CopyIn { .. } => "copy_in",
            Message::CopyOut { .. } => "copy_out",
            Message::CopyStarted { .. } => "copy_started",
            Message::CopyDone { .. } => "copy_done",
        }
    }
}

/// The peer speaks another protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent protocol version mismatch: peer speaks v{peer}, this side speaks v{PROTOCOL_VERSION}")]
pub struct VersionMismatch {
    pub peer: u32,
}

/// Accepts exactly [`PROTOCOL_VERSION`].
pub fn check_version(peer: u32) -> Result<(), VersionMismatch> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionMismatch { peer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_mismatch_names_both_versions() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        let err = check_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "agent protocol version mismatch: peer speaks v{}, this side speaks v{}",
                PROTOCOL_VERSION + 1,
                PROTOCOL_VERSION
            )
        );
    }
}
