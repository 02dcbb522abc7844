//! `hull restore`: start a container from a checkpoint `hull checkpoint` wrote, under the
//! same id, with the bundle's network namespace, and this process's stdio (or
//! `--console-socket`), waiting for it unless `--detach`. A vm checkpoint (a saved pod VM)
//! is restored by a sandbox server, as `create` starts one; a host checkpoint by CRIU.

use std::path::Path;

use hull_container::checkpoint::{self, RestoreOptions};
use hull_runtime::config::Isolation;
use hull_runtime::pod::{Containers, HostPod};

use super::create::{create_vm_detached, isolation_of};
use super::run::{run_vm_container, wants_terminal};
use super::Globals;
use crate::args::RestoreArgs;
use crate::error::{Error, Result};
use crate::foreground::{block_forwarded, forward_signals};

/// The file that marks a vm pod's checkpoint (written by the pod's `checkpoint`).
const VM_CHECKPOINT: &str = "hull-pod.json";

/// `hull restore`.
pub fn run(g: &Globals, a: &RestoreArgs) -> Result<i32> {
    let id = a.create.id.as_str();
    hull_container::validate_id(id)?;
    let dir =
        std::path::absolute(&a.criu.image_path).map_err(|e| Error::io(&a.criu.image_path, e))?;
    if !dir.is_dir() {
        return Err(Error::InvalidInput(format!(
            "restore of {id}: the image path {} is not a directory",
            dir.display()
        )));
    }
    if a.criu.lazy_pages {
        return Err(Error::InvalidInput(format!(
            "restore of {id}: --lazy-pages is not supported"
        )));
    }
    let (isolation, _, spec) = isolation_of(g.config.as_deref(), &a.create.bundle)?;
    if dir.join(VM_CHECKPOINT).is_file() {
        if isolation != Isolation::Vm {
            tracing::info!(container = %id, "the checkpoint is a vm pod's: restored in a vm");
        }
        if a.detach {
            create_vm_detached(g, &a.create, Some(&dir))?;
            return Ok(0);
        }
        return run_vm_container(g, &a.create, false, wants_terminal(&spec), Some(&dir));
    }
    host(&g.host_pod(), a, &dir)
}

/// `hull restore` of a host checkpoint (in `dir`): CRIU restores the processes under the
/// same id with the bundle's rootfs, mounts, namespaces and cgroup, their stdio pipes
/// becoming this process's. Detached, this returns once they run; else it passes signals
/// on, waits for the init (CRIU makes it this process's child) and deletes the container.
pub fn host(pod: &HostPod, a: &RestoreArgs, dir: &Path) -> Result<i32> {
    let id = a.create.id.as_str();
    let opts = RestoreOptions {
        image_path: dir.to_path_buf(),
        work_path: a.criu.work_path.clone(),
        bundle: a.create.bundle.clone(),
        detach: a.detach,
        pid_file: a.create.pid_file.clone(),
        console_socket: a.create.console_socket.clone(),
        tcp_established: a.criu.tcp_established,
        file_locks: a.criu.file_locks,
        ext_unix_sk: a.criu.ext_unix_sk,
        shell_job: a.criu.shell_job,
    };
    if a.detach {
        checkpoint::restore(pod.driver(), id, &opts)?;
        return Ok(0);
    }
    // Block before any thread starts: the forwarding thread alone takes the signals.
    block_forwarded();
    let pid = checkpoint::restore(pod.driver(), id, &opts)?;
    forward_signals(pid);
    let status = pod.wait(id, pid);
    pod.delete(id, true)?;
    Ok(status?.code())
}
