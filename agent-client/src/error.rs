//! Errors of the agent client.

use std::path::PathBuf;

/// What can go wrong talking to hull-agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// The agent's socket could not be reached in time.
    #[error("connect to agent at {path:?}: {source}; is the sandbox's VM running?")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not answer within the call's timeout.
    #[error("agent call {method} timed out")]
    Timeout {
        /// The method called.
        method: &'static str,
    },
    /// The agent answered with an error status.
    #[error("agent call {method} failed ({code:?}): {message}")]
    Rpc {
        /// The method called.
        method: &'static str,
        /// The ttrpc status code.
        code: hull_protocols::ttrpc::Code,
        /// The agent's message.
        message: String,
    },
    /// The connection broke or could not be set up.
    #[error("agent call {method}: transport error: {message}")]
    Transport {
        /// The method called (or "connect").
        method: &'static str,
        /// What failed.
        message: String,
    },
    /// The hybrid vsock handshake gave no stream.
    #[error("agent channel: {0}")]
    Handshake(#[from] crate::HandshakeError),
    /// The agent answered `Check`, but not with SERVING.
    #[error("the agent answered Check with NOT_SERVING")]
    NotServing,
    /// The agent did not answer `Check` before the deadline.
    #[error("the agent did not answer within {waited:?} (last attempt: {last})")]
    NotReady {
        /// How long it was waited for.
        waited: std::time::Duration,
        /// Why the last attempt failed.
        last: String,
    },
    /// What runs the agent ended while its answer was awaited (the VMM exited).
    #[error("the agent's VM ended before it answered: {reason}")]
    Gone {
        /// What the caller's liveness check said.
        reason: String,
    },
    /// The request could not be built (spec serialization).
    #[error("agent request {method}: {message}")]
    Request {
        /// The method.
        method: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl AgentClientError {
    /// The ttrpc status code, when the agent answered with one.
    pub fn code(&self) -> Option<hull_protocols::ttrpc::Code> {
        match self {
            AgentClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The call ran out of time (the agent may still answer a later call).
    pub fn is_timeout(&self) -> bool {
        matches!(self, AgentClientError::Timeout { .. })
    }

    pub(crate) fn from_ttrpc(method: &'static str, e: hull_protocols::ttrpc::Error) -> Self {
        use hull_protocols::ttrpc::{Code, Error};
        match e {
            Error::RpcStatus(s) => {
                let code = s.code.enum_value_or_default();
                if code == Code::DEADLINE_EXCEEDED {
                    return AgentClientError::Timeout { method };
                }
                AgentClientError::Rpc {
                    method,
                    code,
                    message: s.message,
                }
            }
            Error::Others(m) if m.contains("Receiver timeout") => {
                AgentClientError::Timeout { method }
            }
            other => AgentClientError::Transport {
                method,
                message: other.to_string(),
            },
        }
    }
}

/// Result of agent client calls.
pub type Result<T> = std::result::Result<T, AgentClientError>;
