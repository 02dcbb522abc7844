//! The shim's error type: each variant names the object that failed and maps onto
//! the ttrpc status code containerd turns into its own error kinds.

use containerd_shim::protos::ttrpc;
use ttrpc::Code;

/// Result alias for the shim.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a task request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container with this id is served by this shim.
    #[error("container {0} not found in this shim")]
    ContainerNotFound(String),
    /// No exec process with this id in the container.
    #[error("exec {exec} not found in container {id}")]
    ExecNotFound {
        /// Container id.
        id: String,
        /// Exec id.
        exec: String,
    },
    /// The process has exited already.
    #[error("process {exec} of container {id} already finished")]
    Finished {
        /// Container id.
        id: String,
        /// Exec id (the container id for the init process).
        exec: String,
    },
    /// An object with this id exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request does not fit the object's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Not implemented by hull (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The hull config file named by the runtime options is unusable.
    #[error("hull config {path}: {reason}")]
    Config {
        /// The config file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The pod (hull runtime) refused or failed.
    #[error(transparent)]
    Pod(#[from] hull_runtime::Error),
    /// Mounting or unmounting the container's rootfs failed.
    #[error("rootfs of container {id}: {message}")]
    Mount {
        /// Container id.
        id: String,
        /// The cause, one line.
        message: String,
    },
    /// I/O on a named path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wrap an I/O error with the path it happened on.
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    fn code(&self) -> Code {
        use hull_container::ErrorKind as K;
        match self {
            Error::ContainerNotFound(_) | Error::ExecNotFound { .. } | Error::Finished { .. } => {
                Code::NOT_FOUND
            }
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) | Error::Config { .. } => Code::INVALID_ARGUMENT,
            Error::Unsupported(_) => Code::UNIMPLEMENTED,
            Error::Pod(e) => match e.kind() {
                K::NotFound => Code::NOT_FOUND,
                K::AlreadyExists => Code::ALREADY_EXISTS,
                K::Precondition => Code::FAILED_PRECONDITION,
                K::Invalid => Code::INVALID_ARGUMENT,
                K::Unsupported => Code::UNIMPLEMENTED,
                K::Other => Code::UNKNOWN,
            },
            Error::Mount { .. } | Error::Io { .. } => Code::UNKNOWN,
        }
    }
}

impl From<hull_container::Error> for Error {
    fn from(e: hull_container::Error) -> Self {
        Error::Pod(e.into())
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        let msg = match &e {
            Error::Pod(inner) => hull_runtime::error::chain(inner),
            other => other.to_string(),
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), msg))
    }
}
