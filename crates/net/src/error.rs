use std::path::PathBuf;

/// What failed in network set-up, with the value that made it fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("network {network}: no free address left in {subnet}")]
    Exhausted { network: String, subnet: String },
    #[error("damaged network record {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("publishing {what}: host port {port}/{proto} on {ip} is already in use")]
    PortInUse { what: String, ip: String, port: u16, proto: &'static str },
    #[error("publishing {what} on {ip}:{port}/{proto}: {source}")]
    Publish {
        what: String,
        ip: String,
        port: u16,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
