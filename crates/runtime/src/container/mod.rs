//! Containers: records, the monitor, and the verbs.

pub mod client;
pub mod control;
pub mod ids;
pub mod logs;
pub mod monitor;
pub mod ops;
pub mod record;
pub mod spec;
pub mod store;

pub use ops::*;
pub use record::{ContainerConfig, ContainerState, Status};
pub use store::{Container, Containers};
