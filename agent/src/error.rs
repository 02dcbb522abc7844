//! The agent's error type and its mapping onto ttrpc status codes.

use std::path::PathBuf;

use hull_container::ErrorKind;
use ttrpc::Code;

/// Everything that can make an agent request fail.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No container with this id.
    #[error("container {0}: not found")]
    ContainerNotFound(String),
    /// A container with this id already exists.
    #[error("container {0}: already exists")]
    ContainerExists(String),
    /// No process with this exec id in the container.
    #[error("container {container_id}: process {exec_id:?} not found")]
    ProcessNotFound {
        /// The container.
        container_id: String,
        /// The exec id ("" is the init process).
        exec_id: String,
    },
    /// An exec id is reused.
    #[error("container {container_id}: process {exec_id:?} already exists")]
    ProcessExists {
        /// The container.
        container_id: String,
        /// The exec id.
        exec_id: String,
    },
    /// A request field is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A host-supplied path leaves the allowed roots.
    #[error("path {path:?} is outside the agent's allowed roots {roots:?}")]
    PathOutsideRoots {
        /// The offending path.
        path: String,
        /// The roots the agent accepts.
        roots: Vec<PathBuf>,
    },
    /// The OCI spec cannot be parsed or honoured.
    #[error("container {container_id}: invalid OCI spec: {reason}")]
    InvalidSpec {
        /// The container.
        container_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The container driver (hull-container, on libcontainer) failed; its message names the
    /// container and the operation.
    #[error(transparent)]
    Container(#[from] hull_container::Error),
    /// Setting the pod's network up failed (hull-net names the interface and the step).
    #[error("pod network: {0}")]
    Network(#[from] hull_net::NetError),
    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The operation is not possible in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is valid but not supported by this agent.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The agent is at its limit of concurrent work.
    #[error("too many requests in flight")]
    Busy,
}

impl AgentError {
    /// Wraps an I/O error with what was being done.
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            op: op.into(),
            source,
        }
    }

    /// Wraps the current `errno` with what was being done.
    pub fn last_os(op: impl Into<String>) -> Self {
        AgentError::io(op, std::io::Error::last_os_error())
    }

    /// The ttrpc status code a client sees for this error.
    pub fn code(&self) -> Code {
        match self {
            AgentError::ContainerNotFound(_) | AgentError::ProcessNotFound { .. } => {
                Code::NOT_FOUND
            }
            AgentError::ContainerExists(_) | AgentError::ProcessExists { .. } => {
                Code::ALREADY_EXISTS
            }
            AgentError::InvalidArgument(_) | AgentError::InvalidSpec { .. } => {
                Code::INVALID_ARGUMENT
            }
            AgentError::PathOutsideRoots { .. } => Code::PERMISSION_DENIED,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Unsupported(_) => Code::UNIMPLEMENTED,
            AgentError::Busy => Code::RESOURCE_EXHAUSTED,
            AgentError::Container(e) => match e.kind() {
                ErrorKind::NotFound => Code::NOT_FOUND,
                ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
                ErrorKind::Precondition => Code::FAILED_PRECONDITION,
                ErrorKind::Invalid => Code::INVALID_ARGUMENT,
                ErrorKind::Unsupported => Code::UNIMPLEMENTED,
                ErrorKind::Other => Code::INTERNAL,
            },
            AgentError::Io { .. } | AgentError::Network(_) => Code::INTERNAL,
        }
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Result of agent operations.
pub type Result<T> = std::result::Result<T, AgentError>;
