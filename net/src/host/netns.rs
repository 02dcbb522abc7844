//! Network namespaces hull makes itself, kept alive by a bind mount on a file.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{NetError, Result};

/// A new network namespace kept alive by a bind mount on `path` (the file is created). Its
/// `lo` is down, as in any new namespace.
pub fn create_netns(path: &Path) -> Result<()> {
    File::create(path).map_err(|e| NetError::io(format!("create {}", path.display()), e))?;
    let target = c_path(path)?;
    let shown = path.display().to_string();
    let made = std::thread::Builder::new()
        .name("hull-net-unshare".into())
        .spawn(move || -> Result<()> {
            // SAFETY: unshare(2) moves only this thread, which ends right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(NetError::io(
                    format!("make a network namespace for {shown}: unshare(CLONE_NEWNET)"),
                    std::io::Error::last_os_error(),
                ));
            }
            let source = c"/proc/thread-self/ns/net";
            // SAFETY: both paths are NUL-terminated strings that live across the call.
            let r = unsafe {
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if r != 0 {
                return Err(NetError::io(
                    format!("bind the new network namespace on {shown}"),
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(())
        })
        .map_err(|e| NetError::io("start a thread to make a network namespace", e))?
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::io(
                "make a network namespace",
                std::io::Error::other("panicked"),
            ))
        });
    match made {
        Ok(()) => {
            tracing::debug!(netns = %path.display(), "network namespace made");
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// Removes a namespace made by [`create_netns`]: unmounts it (detached) and unlinks `path`.
/// A missing path, or one that is no longer mounted, is fine.
pub fn remove_netns(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let c = c_path(path)?;
    // SAFETY: a NUL-terminated path that lives across the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetError::io(format!("unmount {}", path.display()), e));
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(NetError::io(format!("remove {}", path.display()), e))
        }
        _ => {
            tracing::debug!(netns = %path.display(), "network namespace removed");
            Ok(())
        }
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        NetError::io(
            format!("the path {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })
}
