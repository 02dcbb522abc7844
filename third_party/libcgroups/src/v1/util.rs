use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use pathrs::flags::OpenFlags;
use pathrs::procfs::{ProcfsBase, ProcfsHandle};
use procfs::ProcError;
use procfs::process::MountInfo;

use super::ControllerType;
use super::controller_type::CONTROLLERS;

#[derive(thiserror::Error, Debug)]
pub enum V1MountPointError {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("failed to get mountinfo: {0}")]
    MountInfo(ProcError),
    #[error("could not find mountpoint for {subsystem}")]
    NotFound { subsystem: ControllerType },
    #[error(transparent)]
    Pathrs(#[from] pathrs::error::Error),
}

/// List all cgroup v1 subsystem mount points on the system. This can include unsupported
/// subsystems, comounted controllers and named hierarchies.
pub fn list_subsystem_mount_points() -> Result<Vec<PathBuf>, V1MountPointError> {
    // hull: the same read as every other lookup here (`cgroup_mounts`).
    Ok(cgroup_mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .collect())
}

/// List the mount points of all currently supported cgroup subsystems.
pub fn list_supported_mount_points() -> Result<HashMap<ControllerType, PathBuf>, V1MountPointError>
{
    // hull: one read of mountinfo for all controllers (was one per controller).
    let mounts = cgroup_mounts()?;
    let mut mount_paths = HashMap::with_capacity(CONTROLLERS.len());

    for controller in CONTROLLERS {
        if let Some(mount_point) = find_subsystem_mount_point(&mounts, controller) {
            mount_paths.insert(controller.to_owned(), mount_point);
        }
    }

    Ok(mount_paths)
}

pub fn get_subsystem_mount_point(subsystem: &ControllerType) -> Result<PathBuf, V1MountPointError> {
    find_subsystem_mount_point(&cgroup_mounts()?, subsystem).ok_or(V1MountPointError::NotFound {
        subsystem: *subsystem,
    })
}

/// hull: the cgroup v1 mounts of this process's mount namespace, from one read of
/// `/proc/self/mountinfo` (through the same safe procfs handle as before).
pub(crate) fn cgroup_mounts() -> Result<Vec<MountInfo>, V1MountPointError> {
    let reader = BufReader::new(ProcfsHandle::new()?.open(
        ProcfsBase::ProcSelf,
        "mountinfo",
        OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC,
    )?);

    let mut mounts = Vec::new();
    for line in reader.lines() {
        let m = MountInfo::from_line(&line?).map_err(V1MountPointError::MountInfo)?;
        if m.fs_type == "cgroup" {
            mounts.push(m);
        }
    }
    Ok(mounts)
}

/// hull: the mount point of `subsystem` among `mounts` (the first that matches, in
/// mountinfo's order, as the per-controller lookup found it).
pub(crate) fn find_subsystem_mount_point(
    mounts: &[MountInfo],
    subsystem: &ControllerType,
) -> Option<PathBuf> {
    let subsystem_name = subsystem.to_string();
    mounts.iter().find_map(|m| {
        // Some systems mount net_prio and net_cls in the same directory
        // other systems mount them in their own directories. This
        // should handle both cases.
        let ok = match subsystem_name.as_str() {
            "net_cls" => ["net_cls,net_prio", "net_prio,net_cls", "net_cls"]
                .iter()
                .any(|s| m.mount_point.ends_with(s)),
            "net_prio" => ["net_cls,net_prio", "net_prio,net_cls", "net_prio"]
                .iter()
                .any(|s| m.mount_point.ends_with(s)),
            "cpu" => ["cpu,cpuacct", "cpu"]
                .iter()
                .any(|s| m.mount_point.ends_with(s)),
            "cpuacct" => ["cpu,cpuacct", "cpuacct"]
                .iter()
                .any(|s| m.mount_point.ends_with(s)),
            _ => m.mount_point.ends_with(&subsystem_name),
        };
        ok.then(|| m.mount_point.clone())
    })
}
