//! Guest mounts asked for by the host (the shared rootfs, tmpfs, block devices).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use hull_protocols::agent::Storage;

use crate::error::{AgentError, Result};
use crate::paths::AllowedRoots;

/// Filesystem types the host may ask for.
const ALLOWED_FSTYPES: &[&str] = &["9p", "virtiofs", "tmpfs", "ext4", "xfs", "bind"];

fn flag(opt: &str) -> Option<(libc::c_ulong, bool)> {
    Some(match opt {
        "ro" => (libc::MS_RDONLY, true),
        "rw" => (libc::MS_RDONLY, false),
        "nosuid" => (libc::MS_NOSUID, true),
        "nodev" => (libc::MS_NODEV, true),
        "noexec" => (libc::MS_NOEXEC, true),
        "noatime" => (libc::MS_NOATIME, true),
        "relatime" => (libc::MS_RELATIME, true),
        "sync" => (libc::MS_SYNCHRONOUS, true),
        "bind" => (libc::MS_BIND, true),
        "rbind" => (libc::MS_BIND | libc::MS_REC, true),
        _ => return None,
    })
}

/// Splits mount options into flags and the filesystem's data string.
pub fn parse_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match flag(o) {
            Some((f, true)) => flags |= f,
            Some((f, false)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

fn cstr(s: &[u8], what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| AgentError::InvalidArgument(format!("NUL in {what}")))
}

/// Mounts one storage at a mount point inside the allowed roots; returns the mount point. A
/// source `serial:SERIAL` names the VM's disk with that serial (a container's rootfs image).
pub fn mount_storage(roots: &AllowedRoots, s: &Storage) -> Result<std::path::PathBuf> {
    if !ALLOWED_FSTYPES.contains(&s.fstype.as_str()) {
        return Err(AgentError::InvalidArgument(format!(
            "filesystem type {:?} is not allowed",
            s.fstype
        )));
    }
    let target = roots.resolve_dir_create(&s.mount_point)?;
    let (mut flags, data) = parse_options(&s.options);
    let (fstype, source) = if s.fstype == "bind" {
        flags |= libc::MS_BIND;
        // A bind source is a guest path too: it must be inside the roots.
        let src = roots.resolve_existing(&s.source)?;
        ("none".to_string(), src.as_os_str().as_bytes().to_vec())
    } else if let Some(serial) = s.source.strip_prefix("serial:") {
        let node = crate::devices::disk_node(serial)?;
        (s.fstype.clone(), node.as_os_str().as_bytes().to_vec())
    } else {
        (s.fstype.clone(), s.source.as_bytes().to_vec())
    };
    let c_source = cstr(&source, "mount source")?;
    let c_target = cstr(target.as_os_str().as_bytes(), "mount point")?;
    let c_fstype = cstr(fstype.as_bytes(), "fstype")?;
    let c_data = cstr(data.as_bytes(), "mount options")?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_fstype.as_ptr(),
            flags,
            c_data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(AgentError::last_os(format!(
            "mount {} ({}) on {target:?}",
            s.source, s.fstype
        )));
    }
    tracing::info!(source = %s.source, fstype = %s.fstype, target = ?target, "storage mounted");
    Ok(target)
}

/// Unmounts what [`mount_storage`] mounted (lazily when still busy: a process of the
/// container's may linger a moment).
pub fn unmount_storage(target: &std::path::Path) {
    let Ok(c_target) = cstr(target.as_os_str().as_bytes(), "mount point") else {
        return;
    };
    // SAFETY: `c_target` is a valid NUL-terminated string that outlives the calls.
    let rc = unsafe { libc::umount2(c_target.as_ptr(), 0) };
    if rc != 0 {
        // SAFETY: as above.
        let rc = unsafe { libc::umount2(c_target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            tracing::warn!(target = ?target, "unmount storage: {}", std::io::Error::last_os_error());
            return;
        }
    }
    tracing::info!(target = ?target, "storage unmounted");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "trans=virtio", "version=9p2000.L"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert_eq!(flags, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(data, "trans=virtio,version=9p2000.L");
    }
}
