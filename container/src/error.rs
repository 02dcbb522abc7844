//! The container driver's error type: one enum, each variant names the object that failed,
//! and the [`ErrorKind`] every front maps onto its own status codes.

use std::path::PathBuf;

/// Result alias for the container driver.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an error is, for callers that answer with a status code (the shim's
/// ttrpc codes, the sandbox server's wire errors, the spawn helper's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// No such object.
    NotFound,
    /// The object exists already.
    AlreadyExists,
    /// The object is in the wrong state for the request.
    Precondition,
    /// The request is malformed.
    Invalid,
    /// This host or backend cannot do it.
    Unsupported,
    /// Anything else.
    Other,
}

/// Everything that can go wrong driving containers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle directory does not exist or is not a directory.
    #[error("bundle {0}: no such directory")]
    BundleMissing(PathBuf),
    /// config.json could not be read or parsed.
    #[error("bundle {bundle}: invalid config.json: {reason}")]
    InvalidConfig {
        /// Bundle whose config is wrong.
        bundle: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No container with this id exists under the state root.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// A container with this id exists already.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// The container's state file cannot be parsed: nothing but a forced delete can act on it.
    #[error("container {id}: its state file {path} is corrupt ({reason}): delete it with --force")]
    CorruptState {
        /// Container id.
        id: String,
        /// The state file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// The id is not acceptable as a container id: the id as shown (quoted, or cut when long)
    /// and why.
    #[error("invalid container id {0}")]
    InvalidId(String),
    /// The operation is not allowed in the container's current status.
    #[error("container {id} is {status}: cannot {op}")]
    WrongStatus {
        /// Container id.
        id: String,
        /// Its status now.
        status: String,
        /// What was asked.
        op: &'static str,
    },
    /// A signal name or number that does not exist.
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    /// The host cannot do what was asked (and why).
    #[error("{0}")]
    Unsupported(String),
    /// Bad input from the caller that is not covered above.
    #[error("{0}")]
    InvalidInput(String),
    /// libcontainer failed; the message carries its whole cause chain.
    #[error("{op} container {id}: {message}")]
    Container {
        /// What was being done.
        op: &'static str,
        /// Container id.
        id: String,
        /// libcontainer's error chain, one line.
        message: String,
    },
    /// A cgroup operation failed.
    #[error("cgroup of container {id}: {message}")]
    Cgroup {
        /// Container id.
        id: String,
        /// The cause, one line.
        message: String,
    },
    /// The spawn helper (see [`crate::spawn`]) failed; its reply kept the kind.
    #[error("{message}")]
    Spawn {
        /// What kind of failure.
        kind: ErrorKind,
        /// Its one-line cause.
        message: String,
    },
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
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

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::WrongStatus { .. } => ErrorKind::Precondition,
            Error::BundleMissing(_)
            | Error::InvalidConfig { .. }
            | Error::InvalidId(_)
            | Error::UnknownSignal(_)
            | Error::InvalidInput(_) => ErrorKind::Invalid,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Spawn { kind, .. } => *kind,
            Error::Container { .. }
            | Error::CorruptState { .. }
            | Error::Cgroup { .. }
            | Error::Io { .. }
            | Error::Sys { .. } => ErrorKind::Other,
        }
    }

    /// Wrap an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Wrap an errno with what was being done.
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }
}

/// Render an error and all its sources as one line: `outer: inner: innermost`,
/// skipping a source whose text the previous level already contains.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = Error::io("/x/config.json", inner);
        assert_eq!(chain(&e), "/x/config.json: gone");
    }
}
