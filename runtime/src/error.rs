//! The runtime library's error type: a container's (from the driver), the config's, or the
//! pod's VM's; each reaches the user as one line naming what failed.

pub use hull_container::{chain, ErrorKind};

/// Result alias for the runtime library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong running a pod and its containers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A container operation failed (bad bundle, unknown id, wrong status, libcontainer...).
    #[error(transparent)]
    Container(#[from] hull_container::Error),
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The pod's VM or its agent failed (the message names what was being done).
    #[error("{0}")]
    Vm(String),
    /// The process serving the pod for this one (the CLI's sandbox server) failed the call;
    /// its answer kept the kind and the one line.
    #[error("{message}")]
    Served {
        /// What kind of failure it was there.
        kind: ErrorKind,
        /// Its one-line cause.
        message: String,
    },
}

impl Error {
    /// What kind of failure this is (for status codes).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Container(e) => e.kind(),
            Error::Config(_) => ErrorKind::Invalid,
            Error::Vm(_) => ErrorKind::Other,
            Error::Served { kind, .. } => *kind,
        }
    }

    /// The container id is unknown.
    pub fn not_found(id: &str) -> Self {
        hull_container::Error::NotFound(id.to_string()).into()
    }

    /// Bad input from the caller.
    pub fn invalid(message: impl Into<String>) -> Self {
        hull_container::Error::InvalidInput(message.into()).into()
    }

    /// An I/O error on a named path.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        hull_container::Error::io(path, source).into()
    }

    /// A system call failed.
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        hull_container::Error::sys(what, source).into()
    }

    /// The operation is not allowed in the container's current status.
    pub fn wrong_status(id: &str, status: impl std::fmt::Display, op: &'static str) -> Self {
        hull_container::Error::WrongStatus {
            id: id.to_string(),
            status: status.to_string(),
            op,
        }
        .into()
    }
}
