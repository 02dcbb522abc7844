//! `hull checkpoint`: save a running container to `--image-path`. A vm container's whole pod
//! VM is saved (devices and RAM: every process, open file and socket of the guest) with its
//! rootfs images, by its sandbox server, then stopped unless `--leave-running`; no CRIU is
//! involved. A host container's processes are saved by CRIU.

use super::{Globals, Target};
use crate::args::CheckpointArgs;
use crate::error::{Error, Result};
use hull_container::checkpoint::{self, CheckpointOptions};
use hull_runtime::pod::HostPod;

/// The file CRIU writes last into a checkpoint, which Podman looks for.
const CRIU_INVENTORY: &str = "inventory.img";
/// What a vm checkpoint's `inventory.img` says (it holds no CRIU data).
const VM_INVENTORY_NOTE: &str =
    "hull vm checkpoint: the pod's VM is in qemu.state, its description in hull-pod.json; \
     no CRIU image\n";

/// `hull checkpoint`.
pub fn run(g: &Globals, a: &CheckpointArgs) -> Result<i32> {
    let id = a.id.as_str();
    match Target::of(g, id) {
        Target::Served(remote) => {
            for (set, flag) in [
                (a.pre_dump, "--pre-dump"),
                (a.parent_path.is_some(), "--parent-path"),
                (a.criu.lazy_pages, "--lazy-pages"),
            ] {
                if set {
                    return Err(Error::InvalidInput(format!(
                        "checkpoint of {id}: {flag} is not supported for a vm container (its \
                         whole VM is saved at once)"
                    )));
                }
            }
            let dir = std::path::absolute(&a.criu.image_path)
                .map_err(|e| Error::io(&a.criu.image_path, e))?;
            remote.checkpoint(id, &dir, a.leave_running)?;
            // Podman takes a checkpoint directory as complete when CRIU's inventory file is
            // in it; a vm checkpoint has no CRIU files: the marker says what it is instead.
            let marker = dir.join(CRIU_INVENTORY);
            std::fs::write(&marker, VM_INVENTORY_NOTE).map_err(|e| Error::io(&marker, e))?;
            Ok(0)
        }
        Target::Host(pod) => host(&pod, a),
    }
}

/// `hull checkpoint` of a host container: CRIU saves its processes (libcontainer's
/// checkpoint, which also deletes the container unless `--leave-running`, runc's rule).
pub fn host(pod: &HostPod, a: &CheckpointArgs) -> Result<i32> {
    let opts = CheckpointOptions {
        image_path: std::path::absolute(&a.criu.image_path)
            .map_err(|e| Error::io(&a.criu.image_path, e))?,
        work_path: a.criu.work_path.clone(),
        leave_running: a.leave_running,
        tcp_established: a.criu.tcp_established,
        file_locks: a.criu.file_locks,
        ext_unix_sk: a.criu.ext_unix_sk,
        shell_job: a.criu.shell_job,
    };
    checkpoint::checkpoint(pod.driver(), &a.id, &opts)?;
    Ok(0)
}
