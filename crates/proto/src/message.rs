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
    /// Host → guest: flush filesystems and power the VM off.
    Shutdown,
    /// Guest → host: the shutdown is under way; the VM exits next.
    ShuttingDown,
    /// Either direction: a request failed.
    Error {
        message: String,
    },
}

impl Message {
    /// The message's type tag, for logs and errors that must not echo a peer's contents.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Ready { .. } => "ready",
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::Shutdown => "shutdown",
            Message::ShuttingDown => "shutting_down",
            Message::Error { .. } => "error",
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
