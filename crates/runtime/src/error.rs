use std::path::PathBuf;

/// What failed in the runtime, with the value that made it fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Vm(#[from] bulkhead_vmm::Error),
    #[error(transparent)]
    Image(#[from] bulkhead_image::Error),
    #[error(transparent)]
    Net(#[from] bulkhead_net::Error),
    #[error("guest init binary not found (looked in {searched}); build it with scripts/build-guest or set BULKHEAD_GUEST")]
    GuestMissing { searched: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no default kernel in the store at {root}; import one with `bulkhead kernel import`")]
    NoDefaultKernel { root: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("damaged record {0}")]
    Corrupt(String),
    /// The container's process could not be started; the code is Docker's (126, 127, 125).
    #[error("{message}")]
    StartFailed { exit_code: i32, message: String },
    #[error("guest agent: {0}")]
    Agent(String),
    #[error("guest agent did not {stage} within {seconds} s{detail}")]
    AgentTimeout { stage: &'static str, seconds: u64, detail: String },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
