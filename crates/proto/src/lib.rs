//! The host↔guest agent protocol.
//!
//! Both ends exchange length-prefixed [`Frame`]s over one byte stream (a virtio-serial port on the
//! guest side, a Unix socket on the host side). A frame is either a control [`Message`] or a chunk
//! of a multiplexed byte stream. The host treats every byte the guest sends as hostile: sizes are
//! bounded before anything is allocated and decoding never panics.
//!
//! The session starts with a handshake: the host sends [`Message::Hello`], the guest answers
//! [`Message::Ready`]; each side refuses a peer whose [`PROTOCOL_VERSION`] differs.
//!
//! ## Requests and notifications
//! The host's requests (`Hello`, `Ping`, `Setup`, `Start`, `Stats`, `Top`, `CopyIn`, `CopyOut`,
//! `Shutdown`) each get exactly one reply, in the order they were sent (`Error` counts as a
//! reply), so the host matches replies to requests by order alone. Everything else is a
//! notification and is never answered: `Signal`, `Resize`, `Credit` and data from the host;
//! `Exited`, `CopyDone`, `Credit` and data from the guest.
//!
//! ## Flow control
//! Many streams share one channel, so no stream may stall it. Each direction of each stream has a
//! window: the sender starts with [`INITIAL_CREDIT`] bytes and may never have more unacknowledged
//! bytes in flight; the receiver returns [`Message::Credit`] as it hands bytes on (to the process,
//! the log, the client). A slow reader thus slows only its own stream's writer, and control
//! messages always get through. An empty [`Frame::Data`] ends a stream and needs no credit.
#![forbid(unsafe_code)]

mod frame;
mod message;
mod network;

pub use frame::{decode, encode, Frame, FrameError, FrameReader, HEADER_LEN, MAX_FRAME_LEN};
pub use message::{
    check_version, stream_id, BootTimes, ContainerSpec, ExitStatus, GuestStats, Message, ProcessInfo,
    ProcessSpec, Rlimit, Stdio, VersionMismatch, WindowSize, AGENT_PORT_NAME, INITIAL_CREDIT,
    PROTOCOL_VERSION,
};
pub use network::NetworkSpec;
