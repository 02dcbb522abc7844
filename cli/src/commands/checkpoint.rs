//! `hull checkpoint`: save a running container to `--image-path`. A vm container's whole pod
//! VM is saved (devices and RAM: every process, open file and socket of the guest) with its
//! rootfs images, by its sandbox server, then stopped unless `--leave-running`; no CRIU is
//! involved. A host container's processes are saved by CRIU.

use super::{Globals, Target};
use crate::args::CheckpointArgs;
use crate::error::{Error, Result};
use hull_runtime::pod::Containers;

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
            Ok(0)
        }
        Target::Host(pod) => {
            pod.state(id)?;
            Err(Error::InvalidInput(format!(
                "checkpoint of host container {id}: not wired yet"
            )))
        }
    }
}
