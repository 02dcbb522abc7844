//! hull-net's error type: one line naming the step and the interface or namespace.

use std::path::PathBuf;

/// What can go wrong setting a pod's network up or down.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A system call or a netlink request failed; `op` names the step and its interface.
    #[error("{op}: {source}")]
    Io {
        /// What was being done (names the interface, tap or namespace file).
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's netlink answer could not be read.
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
    /// A step done inside another network namespace failed.
    #[error("in network namespace {}: {source}", netns.display())]
    InNetns {
        /// The namespace's path (`/var/run/netns/..`, `/proc/PID/ns/net`, a bind mount).
        netns: PathBuf,
        /// What failed there.
        #[source]
        source: Box<NetError>,
    },
}

impl NetError {
    /// An I/O error with what was being done.
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        NetError::Io {
            op: op.into(),
            source,
        }
    }

    /// The errno behind this error, if a system call or the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Io { source, .. } => source.raw_os_error(),
            NetError::InNetns { source, .. } => source.errno(),
            _ => None,
        }
    }

    /// Whether the errno is one of `codes`.
    pub(crate) fn is(&self, codes: &[i32]) -> bool {
        self.errno().is_some_and(|e| codes.contains(&e))
    }
}

/// Result alias of hull-net.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_in_a_namespace_names_it_and_keeps_its_errno() {
        let e = NetError::InNetns {
            netns: "/run/netns/cni-1".into(),
            source: Box::new(NetError::io(
                "add an ingress qdisc on eth0",
                std::io::Error::from_raw_os_error(libc::EEXIST),
            )),
        };
        let shown = e.to_string();
        assert!(
            shown.starts_with(
                "in network namespace /run/netns/cni-1: add an ingress qdisc on eth0: "
            ),
            "{shown}"
        );
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.is(&[libc::ENOENT, libc::EEXIST]));
        assert!(!NetError::NoSuchLink("eth0".into()).is(&[libc::ENOENT]));
    }
}
