//! The CLI's error type: what the library reported, or what went wrong in the CLI itself
//! (its arguments, files, system calls, the sandbox server). `main` prints it as one line.

use std::path::PathBuf;

pub use hull_runtime::error::chain;

/// Result alias for the CLI.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a verb can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime library failed (a pod, a container, the config).
    #[error(transparent)]
    Runtime(#[from] hull_runtime::Error),
    /// Bad arguments or input files.
    #[error("{0}")]
    InvalidInput(String),
    /// A vm container's sandbox server failed or is gone.
    #[error("{0}")]
    Server(String),
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// errno.
        #[source]
        source: nix::Error,
    },
}

impl From<hull_container::Error> for Error {
    fn from(e: hull_container::Error) -> Self {
        Error::Runtime(e.into())
    }
}

impl From<hull_runtime::config::ConfigError> for Error {
    fn from(e: hull_runtime::config::ConfigError) -> Self {
        Error::Runtime(e.into())
    }
}

impl Error {
    /// An I/O error on a named path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A system call failed.
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }
}
