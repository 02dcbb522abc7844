//! Errors of the hypervisor seam and its backends.

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong running a sandbox's virtual machine.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The VM's configuration cannot be booted (missing kernel, bad share, ...).
    #[error("vm config: {0}")]
    Config(String),
    /// The hypervisor binary could not be started.
    #[error("start {binary}: {source}; is it installed?")]
    Spawn {
        /// The binary.
        binary: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The hypervisor exited before the guest agent answered.
    #[error("vm exited during boot ({status}): {reason}; console log: {console_log:?}")]
    ExitedDuringBoot {
        /// How it exited.
        status: String,
        /// The last line the hypervisor printed, or what the guest printed last.
        reason: String,
        /// The guest's console log.
        console_log: PathBuf,
    },
    /// The guest agent did not answer within the boot timeout; the VM was killed.
    #[error(
        "guest agent did not answer within {timeout:?} (vm killed); console log: {console_log:?}"
    )]
    BootTimeout {
        /// The bound that passed.
        timeout: Duration,
        /// The guest's console log.
        console_log: PathBuf,
    },
    /// The VM is not running (never booted, stopped, or its process died).
    #[error("vm is not running ({status}); console log: {console_log:?}")]
    NotRunning {
        /// Why: "not booted", "stopped" or the exit status of the hypervisor process.
        status: String,
        /// The guest's console log.
        console_log: PathBuf,
    },
    /// A control command (QMP) failed.
    #[error("qmp {command}: {message}")]
    Qmp {
        /// The command.
        command: String,
        /// What failed.
        message: String,
    },
    /// `auto` found no backend this host can run that covers the VM.
    #[error("{reason} (see `hull check`)")]
    NoBackend {
        /// Why, as `hull check` says it.
        reason: String,
    },
    /// The chosen backend lacks a capability the VM needs (found before anything starts).
    #[error("the {backend} backend cannot run this vm: it has {missing}{fix}")]
    Lacks {
        /// The backend.
        backend: crate::Backend,
        /// What it lacks.
        missing: crate::Missing,
        /// What to do instead (`; use hypervisor = "qemu"`), or empty.
        fix: String,
    },
    /// This backend cannot do the operation.
    #[error("{operation} is not supported by the {backend} backend")]
    NotSupported {
        /// The operation.
        operation: &'static str,
        /// The backend.
        backend: &'static str,
    },
    /// A host I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl HypervisorError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HypervisorError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result of the hypervisor backends.
pub type Result<T> = std::result::Result<T, HypervisorError>;
