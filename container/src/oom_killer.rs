//! `linux.resources.memory.disableOOMKiller`: cgroup v1's `memory.oom_control` set to 1.
//!
//! libcontainer 0.7 applies a new container's resources from its intermediate process
//! (`process/container_intermediate_process.rs`, `apply_cgroups`) with
//! `ControllerOpt { disable_oom_killer: false, .. }` hard-coded, so libcgroups writes 0 to
//! `memory.oom_control` whatever the spec says. hull writes 1 itself once `create` has made
//! the cgroup and before `start` lets the process run, and passes the spec's value on to
//! libcgroups at `update` (which would otherwise write 0 again).
//!
//! cgroup v2 has no such knob (memory.oom.group is another thing): runc ignores the field
//! there, and so does hull (libcgroups' v2 manager never reads it).

use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::common::CgroupSetup;
use libcgroups::v1::ControllerType;
use oci_spec::runtime::Spec;

use crate::error::{chain, Error, Result};

/// Whether `spec` asks for the OOM killer to be off.
pub(crate) fn disabled_in(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.disable_oom_killer())
        .unwrap_or(false)
}

/// Turn the OOM killer off for the memory cgroup of process `pid` (container `id`'s init).
/// Nothing to do on a cgroup v2 host (see the module doc).
pub(crate) fn disable(id: &str, pid: i32) -> Result<()> {
    let cg_err = |message: String| Error::Cgroup {
        id: id.to_string(),
        message,
    };
    let setup = libcgroups::common::get_cgroup_setup().map_err(|e| cg_err(chain(&e)))?;
    if matches!(setup, CgroupSetup::Unified) {
        tracing::debug!(
            container = id,
            "disableOOMKiller: no such knob on cgroup v2, ignored"
        );
        return Ok(());
    }
    let mount = libcgroups::v1::util::get_subsystem_mount_point(&ControllerType::Memory)
        .map_err(|e| cg_err(chain(&e)))?;
    let own = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&own).map_err(|e| Error::io(&own, e))?;
    let cgroup =
        memory_cgroup(&text).ok_or_else(|| cg_err(format!("{own} names no memory cgroup")))?;
    let file = mount
        .join(cgroup.strip_prefix("/").unwrap_or(&cgroup))
        .join("memory.oom_control");
    fs::write(&file, "1")
        .map_err(|e| cg_err(format!("disableOOMKiller: {}: {e}", file.display())))?;
    tracing::debug!(container = id, file = %file.display(), "OOM killer disabled");
    Ok(())
}

/// The v1 memory controller's cgroup in the text of a `/proc/PID/cgroup`.
fn memory_cgroup(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| Path::new(path).to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_memory_line() {
        let text = "9:name=systemd:/\n4:memory:/hull/c1\n3:cpu,cpuacct:/hull/c1\n0::/\n";
        assert_eq!(memory_cgroup(text), Some(PathBuf::from("/hull/c1")));
        assert_eq!(memory_cgroup("0::/x\n"), None);
    }

    #[test]
    fn reads_the_spec_flag() {
        let spec = |mem: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2", "linux": {"resources": {"memory": mem}}
            }))
            .unwrap()
        };
        assert!(disabled_in(&spec(
            serde_json::json!({"disableOOMKiller": true})
        )));
        assert!(!disabled_in(&spec(serde_json::json!({"limit": 1}))));
    }
}
