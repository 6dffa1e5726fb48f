//! What is stored about a container: its configuration (fixed at create) and its state.

use std::path::PathBuf;

use bulkhead_proto::ProcessSpec;
use serde::{Deserialize, Serialize};

use super::spec::RestartPolicy;

/// Fixed when the container is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub name: String,
    pub created: String,
    /// The image reference as the user gave it, and the manifest digest it resolved to.
    pub image: String,
    pub image_digest: String,
    pub root_disk: PathBuf,
    /// The kernel image (reference and manifest digest) and its extracted vmlinux.
    pub kernel: String,
    pub kernel_digest: String,
    pub kernel_path: PathBuf,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
    pub process: ProcessSpec,
    pub hostname: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
    pub restart: RestartPolicy,
    /// `--rm`: remove the container when it exits.
    pub auto_remove: bool,
    /// `--no-template`: always boot the VM cold.
    #[serde(default)]
    pub no_template: bool,
    /// `--network`, `-p`, `--dns`, `--add-host`, and the leased address.
    #[serde(default)]
    pub network: bulkhead_net::ContainerNetwork,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Restarting,
    Exited,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
        }
    }
}

/// Where the time of the last start went, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct StartPhases {
    pub vm_process_ms: f64,
    pub kernel_to_init_ms: f64,
    pub init_to_ready_ms: f64,
    /// Restoring the VM from a template (instead of the kernel and init phases).
    #[serde(default)]
    pub restore_ms: Option<f64>,
    /// Root filesystem mounted and the container prepared (`Setup`).
    pub rootfs_ms: f64,
    /// The main process started (`Start` answered).
    pub process_start_ms: f64,
    /// From the monitor's start of the VM to the main process running.
    pub total_ms: f64,
}

/// Changes over the container's life; written atomically by whoever owns the container at the
/// time (the monitor while it lives, a CLI holding the container's lock otherwise).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ContainerState {
    pub status: Status,
    pub monitor_pid: Option<u32>,
    pub vm_pid: Option<u32>,
    pub exit_code: Option<i32>,
    /// Why the container failed to start or ended abnormally.
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub restart_count: u32,
    /// The user stopped it (`stop`, `kill`): no restart policy applies.
    pub stopped_by_user: bool,
    pub accel: Option<String>,
    pub accel_reason: Option<String>,
    pub phases: Option<StartPhases>,
    /// How the VM of the last start came up: from a template, or a cold boot and why.
    #[serde(default)]
    pub start_path: Option<String>,
}
