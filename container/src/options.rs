//! What creating a container and starting a process in one need beyond the bundle.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use oci_spec::runtime::Process;

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
    /// Run it in the pod's guest itself, as root, outside the container's namespaces (vm
    /// pods: `hull console`); a host container has no guest and refuses it.
    pub in_guest: bool,
}
