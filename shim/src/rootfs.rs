//! The container's root filesystem from containerd's mounts (a snapshot), mounted on
//! `<bundle>/rootfs` at create and unmounted at delete (or by the `delete` verb).
//!
//! The mount is done in-process (the crate's helper forks and relies on its own
//! reaper, which hull does not run).

use std::path::Path;

use containerd_shim::mount::umount_recursive;
use containerd_shim::protos::types::mount::Mount;
use nix::mount::MsFlags;
use tracing::warn;

use crate::error::{Error, Result};

/// Mount options that are flags (`true` = set, `false` = clear); the rest is fs data.
const FLAGS: &[(&str, bool, MsFlags)] = &[
    ("async", false, MsFlags::MS_SYNCHRONOUS),
    ("atime", false, MsFlags::MS_NOATIME),
    ("bind", true, MsFlags::MS_BIND),
    ("defaults", false, MsFlags::empty()),
    ("dev", false, MsFlags::MS_NODEV),
    ("diratime", false, MsFlags::MS_NODIRATIME),
    ("dirsync", true, MsFlags::MS_DIRSYNC),
    ("exec", false, MsFlags::MS_NOEXEC),
    ("mand", true, MsFlags::MS_MANDLOCK),
    ("noatime", true, MsFlags::MS_NOATIME),
    ("nodev", true, MsFlags::MS_NODEV),
    ("nodiratime", true, MsFlags::MS_NODIRATIME),
    ("noexec", true, MsFlags::MS_NOEXEC),
    ("nomand", false, MsFlags::MS_MANDLOCK),
    ("norelatime", false, MsFlags::MS_RELATIME),
    ("nostrictatime", false, MsFlags::MS_STRICTATIME),
    ("nosuid", true, MsFlags::MS_NOSUID),
    ("rbind", true, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    ("relatime", true, MsFlags::MS_RELATIME),
    ("remount", true, MsFlags::MS_REMOUNT),
    ("ro", true, MsFlags::MS_RDONLY),
    ("rw", false, MsFlags::MS_RDONLY),
    ("strictatime", true, MsFlags::MS_STRICTATIME),
    ("suid", false, MsFlags::MS_NOSUID),
    ("sync", true, MsFlags::MS_SYNCHRONOUS),
];

/// Split containerd mount options into flags and the fs-specific data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match FLAGS.iter().find(|(name, _, _)| name == o) {
            Some((_, true, f)) => flags.insert(*f),
            Some((_, false, f)) => flags.remove(*f),
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Mount every mount of `mounts` on `target`, in order; on failure nothing stays mounted.
pub fn mount(id: &str, mounts: &[Mount], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| Error::io(target.display(), e))?;
    for m in mounts {
        if let Err(e) = mount_one(m, target) {
            unmount(id, target);
            return Err(Error::Mount {
                id: id.to_string(),
                message: format!(
                    "mount {} {} on {}: {e}",
                    m.type_,
                    m.source,
                    target.display()
                ),
            });
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> nix::Result<()> {
    let (flags, data) = parse_options(&m.options);
    let fs_type = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
    let source = (!m.source.is_empty()).then_some(m.source.as_str());
    let data = (!data.is_empty()).then_some(data.as_str());
    nix::mount::mount(source, target, fs_type, flags, data)?;
    // A read-only bind needs a remount to become read-only.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// Unmount `target` and everything below it; errors are logged.
pub fn unmount(id: &str, target: &Path) {
    let Some(t) = target.to_str() else {
        return;
    };
    if let Err(e) = umount_recursive(Some(t), libc::MNT_DETACH) {
        warn!(container = %id, "unmount {t}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "rbind", "nosuid", "lowerdir=/a:/b", "index=off"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(flags.contains(MsFlags::MS_NOSUID));
        assert_eq!(data, "lowerdir=/a:/b,index=off");
    }
}
