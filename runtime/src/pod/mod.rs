//! The pod seam: a [`Pod`] is what isolates its containers (namespaces on the host kernel,
//! or a VM of its own) and the [`Containers`] in it. Every front (the `hull` CLI, its sandbox
//! server, the containerd shim) drives pods through these two traits only.
//!
//! A pod's life is explicit: the front starts it before its first container (a vm pod boots
//! its VM, sized by that container's spec) and stops it after its last (the VM stops).

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::config::Isolation;
use crate::error::Result;

pub mod host;
pub mod vm;

pub use host::HostPod;
pub use hull_container::{
    ContainerState, CreateOptions, ExecOptions, ExitStatus, Sig, Stats, Status, Stdio,
};
pub use vm::VmPod;

/// The containers of one pod, whatever isolates them.
pub trait Containers: Send + Sync {
    /// Create a container from its bundle; its init waits for `start`. Returns the init pid.
    /// On failure nothing is left behind (state, cgroup, mounts, processes).
    fn create(&self, opts: CreateOptions) -> Result<i32>;
    /// Let a created container's init run the user process.
    fn start(&self, id: &str) -> Result<()>;
    /// The container's state now.
    fn state(&self, id: &str) -> Result<ContainerState>;
    /// All containers of the pod.
    fn list(&self) -> Result<Vec<ContainerState>>;
    /// Start another process in a running container. Returns its pid.
    fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32>;
    /// Send a signal to the init process, or to every process with `all`.
    fn kill(&self, id: &str, signal: Sig, all: bool) -> Result<()>;
    /// Send a signal to one process of the container: an exec'd process, by the pid
    /// `exec` returned. The default is `kill(2)` on that host pid, right for backends
    /// whose pids are host pids; a backend whose processes live elsewhere (a VM) overrides it.
    fn signal(&self, id: &str, pid: i32, signal: Sig) -> Result<()> {
        if pid <= 0 {
            return Err(crate::Error::invalid(format!(
                "signal {signal} to container {id}: invalid pid {pid}"
            )));
        }
        signal.send(pid).map_err(|e| {
            crate::Error::sys(format!("signal {signal} to pid {pid} of container {id}"), e)
        })
    }
    /// Wait for a process of the container (init or exec) to end. On the host the caller
    /// must be its parent or child subreaper.
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
    /// (callers publish an OOM event when this grows).
    fn oom_kills(&self, id: &str) -> Result<u64>;
}

/// A pod: its isolation, what that isolation needs (a vm pod's VM, its shares), and the
/// containers in it. Dropping a pod stops it.
pub trait Pod: Containers {
    /// How the pod's containers are isolated.
    fn isolation(&self) -> Isolation;
    /// Makes the pod ready for containers; `first_bundle` is the bundle of its first
    /// container (the sandbox container under CRI), whose spec sizes a vm pod's VM and names
    /// its host (a host pod reads nothing). Starting a started pod does nothing. On failure
    /// nothing is left behind.
    fn start_pod(&self, first_bundle: &Path) -> Result<()>;
    /// Ends the pod and what it owns: a vm pod's VM stops, and the containers in it with it.
    /// A host pod owns nothing but its containers, which the front deletes one by one.
    /// Stopping a stopped pod does nothing.
    fn stop_pod(&self) -> Result<()>;
    /// Saves container `id` into `dir` (a checkpoint) and, unless `leave_running`, stops it
    /// (a vm pod: the whole pod VM is saved, every container of it, and then stopped; the
    /// front stops the pod). An error, saying why, where this pod cannot.
    fn checkpoint(&self, id: &str, dir: &Path, leave_running: bool) -> Result<()> {
        let _ = (dir, leave_running);
        Err(crate::Error::invalid(format!(
            "checkpoint of container {id}: not supported for {:?} isolation",
            self.isolation()
        )))
    }
    /// Starts the checkpoint in `dir` (instead of `start_pod` and `create`): container
    /// `opts.id` runs again with `opts`' stdio and console socket; returns its init's pid.
    /// On failure nothing is left behind.
    fn restore(&self, dir: &Path, opts: CreateOptions) -> Result<i32> {
        let _ = dir;
        Err(crate::Error::invalid(format!(
            "restore of container {}: not supported for {:?} isolation",
            opts.id,
            self.isolation()
        )))
    }
    /// Host processes the pod itself starts and waits for (a VM): a subreaper must leave
    /// their exits alone.
    fn helper_pids(&self) -> Vec<i32> {
        Vec::new()
    }
}
