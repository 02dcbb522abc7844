//! A container's state as the OCI runtime spec and `runc state` show it, and how a process
//! ended.

use std::path::PathBuf;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

/// The OCI runtime spec version hull implements: `state`'s `ociVersion` and `features`'
/// `ociVersionMax`.
pub const OCI_VERSION: &str = "1.2.0";

/// Life-cycle status as the OCI runtime spec names it (plus `paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created, init waiting for `start`.
    Created,
    /// Running.
    Running,
    /// Frozen through the cgroup freezer.
    Paused,
    /// Init has exited.
    Stopped,
    /// Its state could not be read (a corrupt state file): `delete --force` removes what is
    /// left of it.
    Unknown,
}

impl Status {
    /// Whether a container in this status may be deleted without `--force` (stopped, or
    /// created and never started, as runc allows).
    pub fn deletable(self) -> bool {
        matches!(self, Status::Stopped | Status::Created)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Unknown => "unknown",
        })
    }
}

/// The state of one container, in the shape `runc state` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// OCI runtime spec version ([`OCI_VERSION`]).
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Init pid on the host (0 once stopped).
    pub pid: i32,
    /// Life-cycle status.
    pub status: Status,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root filesystem path.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Owner user name ("" for root, as runc prints).
    pub owner: String,
    /// Annotations from config.json.
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub annotations: std::collections::HashMap<String, String>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// exit(code).
    Code(i32),
    /// Killed by a signal.
    Signaled(Signal),
}

impl ExitStatus {
    /// The status a shell reports: the code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signaled(s) => 128 + s as i32,
        }
    }
}
