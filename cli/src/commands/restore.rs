//! `hull restore`: start a container from a checkpoint `hull checkpoint` wrote, under the
//! same id, with the bundle's network namespace, and this process's stdio (or
//! `--console-socket`), waiting for it unless `--detach`. A vm checkpoint (a saved pod VM)
//! is restored by a sandbox server, as `create` starts one; a host checkpoint by CRIU.

use hull_runtime::config::Isolation;

use super::create::{create_vm_detached, isolation_of};
use super::run::{run_vm_container, wants_terminal};
use super::Globals;
use crate::args::RestoreArgs;
use crate::error::{Error, Result};

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
    Ok(hull_container::checkpoint::restore(id, &dir)?)
}
