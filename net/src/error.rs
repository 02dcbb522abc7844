//! hull-net's error type: one line naming the step and the interface or namespace.

/// What can go wrong setting a pod's network up or down.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A system call or a netlink request failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done (names the interface or namespace).
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer could not be read.
    #[error("{op}: bad netlink answer: {message}")]
    Decode {
        /// What was being done.
        op: String,
        /// What was wrong with it.
        message: String,
    },
    /// No link has the MAC the VM's NIC was given.
    #[error("no network interface with MAC {0} in the guest")]
    NoSuchNic(String),
    /// A link the pod's network names does not exist.
    #[error("no interface {0}")]
    NoSuchLink(String),
}

impl NetError {
    /// An I/O error with what was being done.
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        NetError::Io {
            op: op.into(),
            source,
        }
    }
}

/// Result alias of hull-net.
pub type Result<T, E = NetError> = std::result::Result<T, E>;
