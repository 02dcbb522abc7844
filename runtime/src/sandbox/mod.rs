//! The `Sandbox` seam: everything the CLI and the shim ask of the containers of one pod.
//!
//! `HostSandbox` runs containers on the host kernel through libcontainer. A vm
//! backend implements the same trait by forwarding to the agent in the pod's VM.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxResources, Process};
use serde::{Deserialize, Serialize};

use crate::error::Result;

pub mod host;
pub mod vm;

pub use host::HostSandbox;
pub use libcgroups::stats::Stats;
pub use vm::VmSandbox;

/// Standard streams handed to a container process; `None` inherits the caller's.
#[derive(Debug, Default)]
pub struct Stdio {
    /// stdin of the process.
    pub stdin: Option<OwnedFd>,
    /// stdout of the process.
    pub stdout: Option<OwnedFd>,
    /// stderr of the process.
    pub stderr: Option<OwnedFd>,
}

/// What `create` needs to know beyond the bundle's config.json.
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// Container id.
    pub id: String,
    /// OCI bundle directory (holds config.json).
    pub bundle: PathBuf,
    /// Where to write the init pid, if anywhere.
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when `process.terminal` is set.
    pub console_socket: Option<PathBuf>,
    /// Number of extra fds (from 3 up) passed to the container process.
    pub preserve_fds: i32,
    /// Use a chroot/move-mount instead of pivot_root.
    pub no_pivot: bool,
    /// Whether the caller returns right after create (runc `create`, `run -d`).
    pub detach: bool,
    /// Standard streams for the init process.
    pub stdio: Stdio,
}

/// A process to start inside a running container.
#[derive(Debug, Default)]
pub struct ExecOptions {
    /// The OCI process description (args, env, cwd, user, terminal, capabilities...).
    pub process: Process,
    /// Where to write the new process' pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when `process.terminal` is set.
    pub console_socket: Option<PathBuf>,
    /// Number of extra fds passed on.
    pub preserve_fds: i32,
    /// Whether the caller returns right away.
    pub detach: bool,
    /// Standard streams of the new process.
    pub stdio: Stdio,
}

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
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The state of one container, in the shape `runc state` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// OCI runtime spec version.
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

/// The containers of one pod, whatever isolates them.
pub trait Sandbox {
    /// Create a container from its bundle; its init waits for `start`. Returns the init pid.
    /// On failure nothing is left behind (state, cgroup, mounts, processes).
    fn create(&self, opts: CreateOptions) -> Result<i32>;
    /// Let a created container's init run the user process.
    fn start(&self, id: &str) -> Result<()>;
    /// The container's state now.
    fn state(&self, id: &str) -> Result<ContainerState>;
    /// All containers this sandbox knows.
    fn list(&self) -> Result<Vec<ContainerState>>;
    /// Start another process in a running container. Returns its pid.
    fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32>;
    /// Send a signal to the init process, or to every process with `all`.
    fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()>;
    /// Send a signal to one process of the container: an exec'd process, by the pid
    /// `exec` returned. The default is `kill(2)` on that host pid, right for backends
    /// whose pids are host pids; a backend whose processes live elsewhere (a VM) overrides it.
    fn signal(&self, id: &str, pid: i32, signal: Signal) -> Result<()> {
        if pid <= 0 {
            return Err(crate::Error::InvalidInput(format!(
                "signal {signal} to container {id}: invalid pid {pid}"
            )));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(|e| {
            crate::Error::sys(format!("signal {signal} to pid {pid} of container {id}"), e)
        })
    }
    /// Wait for a process of the container (init or exec) to end. The caller must be its
    /// parent or child subreaper.
    fn wait(&self, id: &str, pid: i32) -> Result<ExitStatus>;
    /// Pids of all processes in the container.
    fn pids(&self, id: &str) -> Result<Vec<i32>>;
    /// Resource usage of the container's cgroup.
    fn stats(&self, id: &str) -> Result<Stats>;
    /// Freeze every process of the container.
    fn pause(&self, id: &str) -> Result<()>;
    /// Thaw a paused container.
    fn resume(&self, id: &str) -> Result<()>;
    /// Change the container's resource limits.
    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()>;
    /// Remove a stopped container (or any, with `force`, killing it first).
    fn delete(&self, id: &str, force: bool) -> Result<()>;
    /// How many processes of the container the kernel's OOM killer has killed so far
    /// (callers publish an OOM event when this grows). A backend that cannot tell says so.
    fn oom_kills(&self, id: &str) -> Result<u64> {
        Err(crate::error::Error::Unsupported(format!(
            "container {id}: this sandbox cannot count OOM kills"
        )))
    }
    /// Host processes the sandbox itself starts and waits for (a VM): a subreaper must
    /// leave their exits alone.
    fn helper_pids(&self) -> Vec<i32> {
        Vec::new()
    }
}
