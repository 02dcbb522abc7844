//! The CLI's error type: what the library reported, or what went wrong in the CLI itself
//! (its arguments, the sandbox server; files and system calls are the driver's errors). `main` prints it as one line.

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
    /// An I/O error on a named path (the container driver's kind of error: one way to say it).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        hull_container::Error::io(path, source).into()
    }

    /// A system call failed.
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        hull_container::Error::sys(what, source).into()
    }
}
