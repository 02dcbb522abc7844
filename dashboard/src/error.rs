//! The dashboard's error type: each variant is one line naming what failed.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Result alias for the dashboard.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the dashboard can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A non-loopback listen address without a token.
    #[error(
        "--listen {0}: not a loopback address, so a token is required: give --token T \
         (or HULL_DASHBOARD_TOKEN); every request must then carry it"
    )]
    TokenRequired(SocketAddr),
    /// A token that cannot be used.
    #[error("--token: {0}")]
    BadToken(String),
    /// The listen socket could not be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("serve: {0}")]
    Serve(#[source] std::io::Error),
    /// A binary the dashboard runs is missing.
    #[error("{0} not found: build it (`cargo build -p hull-cli`) or name it with --hull")]
    MissingBinary(PathBuf),
    /// A `hull` call failed.
    #[error("hull {args}: {message}")]
    Hull {
        /// The arguments, space-separated.
        args: String,
        /// What went wrong (its stderr's last line, or the spawn error).
        message: String,
    },
    /// A pty could not be set up.
    #[error("pty: {what}: {source}")]
    Pty {
        /// The step that failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The terminal's process could not be started.
    #[error("start {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A request named a state root the dashboard does not watch.
    #[error("{0} is not a state root this dashboard shows")]
    UnknownRoot(PathBuf),
    /// A request named a container that is not in its state root.
    #[error("container {id} not found in {root}")]
    UnknownContainer {
        /// The container id.
        id: String,
        /// The state root.
        root: PathBuf,
    },
    /// A terminal was asked of a container that does not run.
    #[error("container {id} is {status}: a terminal needs a running container")]
    NotRunning {
        /// The container id.
        id: String,
        /// Its status.
        status: String,
    },
}

impl Error {
    /// A failed `hull` call.
    pub fn hull(args: &[&str], message: impl Into<String>) -> Self {
        Error::Hull {
            args: args.join(" "),
            message: message.into(),
        }
    }

    /// A failed pty step.
    pub fn pty(what: &'static str, source: impl Into<std::io::Error>) -> Self {
        Error::Pty {
            what,
            source: source.into(),
        }
    }
}
