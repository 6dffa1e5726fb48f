//! The host↔guest agent protocol.
//!
//! Both ends exchange length-prefixed [`Frame`]s over one byte stream (a virtio-serial port on the
//! guest side, a Unix socket on the host side). A frame is either a control [`Message`] or a chunk
//! of a multiplexed byte stream. The host treats every byte the guest sends as hostile: sizes are
//! bounded before anything is allocated and decoding never panics.
//!
//! The session starts with a handshake: the host sends [`Message::Hello`], the guest answers
//! [`Message::Ready`]; each side refuses a peer whose [`PROTOCOL_VERSION`] differs.
#![forbid(unsafe_code)]

mod frame;
mod message;

pub use frame::{decode, encode, Frame, FrameError, FrameReader, HEADER_LEN, MAX_FRAME_LEN};
pub use message::{check_version, BootTimes, Message, VersionMismatch, AGENT_PORT_NAME, PROTOCOL_VERSION};
