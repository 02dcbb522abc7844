//! The binary guard (CVE-2019-5736): a container must never be able to overwrite the
//! hull binary through `/proc/<pid>/exe` of a process hull started in it.
//!
//! runc copies itself into a sealed memfd on every start, which costs tens of ms for a
//! large binary. hull instead runs from a read-only bind mount of its own binary,
//! made once per binary (keyed by device, inode and mtime) under `/run/hull-exe/`:
//! every process hull forks into a container then has an `exe` on a read-only mount,
//! so opening it for writing fails with EROFS. The cost per call is one statvfs, a
//! shared lock and, when started from the writable path, one re-exec. Making the bind of
//! a new binary removes those of binaries since deleted or changed, which would otherwise
//! pile up, each keeping a deleted binary on disk.

use std::ffi::{CString, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use crate::error::{Error, Result};

/// Where the read-only copies of the binary are mounted.
pub const EXE_DIR: &str = "/run/hull-exe";

fn on_readonly_mount(p: &Path) -> bool {
    statvfs(p)
        .map(|s| s.flags().contains(FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// The name of the bind of the binary `meta` describes: its device, inode and mtime.
fn bind_name(meta: &fs::Metadata) -> String {
    format!(
        "hull-{:x}-{:x}-{:x}",
        meta.dev(),
        meta.ino(),
        meta.mtime_nsec() as u64 ^ ((meta.mtime() as u64) << 30)
    )
}

/// A read-only bind of the binary, and the lock that keeps it there until the binary has
/// been exec'd from it (the lock's file is close-on-exec: `execve` lets it go).
pub struct Sealed {
    /// The bind.
    pub path: PathBuf,
    _lock: Flock<fs::File>,
}

/// The read-only bind of `exe` (made if missing); `None` when `exe` is already on a
/// read-only mount. Making one removes the binds of binaries that are gone (see
/// [`sweep`]); the lock returned keeps a sweep off this one until it is used.
pub fn sealed_path(exe: &Path, dir: &Path) -> Result<Option<Sealed>> {
    if on_readonly_mount(exe) {
        return Ok(None);
    }
    let meta = fs::metadata(exe).map_err(|e| Error::io(exe, e))?;
    let name = bind_name(&meta);
    let target = dir.join(&name);
    let ready = |t: &Path| {
        on_readonly_mount(t)
            && fs::metadata(t)
                .map(|m| m.ino() == meta.ino() && m.dev() == meta.dev())
                .unwrap_or(false)
    };
    let lock_path = dir.join(".lock");
    let lock = |arg| {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        Flock::lock(file, arg).map_err(|(_, e)| Error::sys("lock the binary guard", e))
    };
    if dir.join(".lock").exists() {
        let shared = lock(FlockArg::LockShared)?;
        if ready(&target) {
            return Ok(Some(Sealed {
                path: target,
                _lock: shared,
            }));
        }
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let exclusive = lock(FlockArg::LockExclusive)?;
    if !ready(&target) {
        fs::write(&target, b"").map_err(|e| Error::io(&target, e))?;
        mount(
            Some(exe),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("bind {} on {}", exe.display(), target.display()), e))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("remount {} read-only", target.display()), e))?;
        // A new binary: the one it replaces may be gone, and its bind with it.
        sweep(dir, &name);
    }
    Ok(Some(Sealed {
        path: target,
        _lock: exclusive,
    }))
}

/// Unmount and remove the binds under `dir` (but `keep`) that no longer show the binary
/// they were made for: its path was deleted or replaced (a rebuild, an upgrade: the bind
/// may be all that keeps it on disk), it changed in place, or the mount never happened.
/// Call with the guard's lock held exclusively: no process is between choosing a bind and
/// exec'ing it. A process running from a removed bind keeps running (the unmount is
/// lazy), on the same read-only file.
fn sweep(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let deleted = deleted_sources(dir);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("hull-") || name == keep {
            continue;
        }
        let path = e.path();
        // Through the bind: the binary's own metadata.
        let live = !deleted.contains(&path)
            && fs::metadata(&path).is_ok_and(|m| m.nlink() > 0 && bind_name(&m) == name);
        if live {
            continue;
        }
        // Binds stacked by an older hull come off one by one.
        while umount2(&path, MntFlags::MNT_DETACH).is_ok() {}
        match fs::remove_file(&path) {
            Ok(()) => tracing::debug!(bind = %path.display(), "removed a stale binary bind"),
            Err(e) => tracing::warn!(bind = %path.display(), "remove a stale binary bind: {e}"),
        }
    }
}

/// The mount points under `dir` whose source path has been deleted since the mount (the
/// kernel marks the source `//deleted` in mountinfo).
fn deleted_sources(dir: &Path) -> std::collections::HashSet<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let source = fields.nth(3)?;
            let point = Path::new(fields.next()?);
            (source.ends_with("//deleted") && point.parent() == Some(dir))
                .then(|| point.to_path_buf())
        })
        .collect()
}

/// Whether `args` (the command line without argv\[0\]) names a verb that puts a process
/// into a container (`create`, `run`, `exec`), judged from the raw arguments so that
/// `main` can re-exec before parsing them or setting up logging: the process started
/// from the writable path then does nothing but the re-exec. `false` when unsure;
/// `main` checks again after parsing, so this is only a shortcut, never the guard itself.
pub fn verb_needs_guard(args: impl IntoIterator<Item = OsString>) -> bool {
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let Some(a) = a.to_str() else {
            return false;
        };
        match a {
            // Global options that take a separate value.
            "--root" | "--log" | "--log-format" | "--criu" => {
                it.next();
            }
            // An optional value: whether the next word is its value is clap's call.
            "--rootless" | "--" => return false,
            flag if flag.starts_with('-') => {}
            verb => return matches!(verb, "create" | "run" | "exec"),
        }
    }
    false
}

/// Re-exec this process from the read-only copy of its binary unless it already runs
/// from one. Returns only when no re-exec was needed.
pub fn ensure() -> Result<()> {
    let exe = fs::read_link("/proc/self/exe").map_err(|e| Error::io("/proc/self/exe", e))?;
    let Some(sealed) = sealed_path(&exe, Path::new(EXE_DIR))? else {
        return Ok(());
    };
    let target = &sealed.path;
    let path = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidInput("binary path has a NUL byte".into()))?;
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    // Where hull was started from goes along: what lies beside it (hull-vmm) is not beside
    // the copy.
    let started_as = (
        OsString::from(hull_hypervisor::STARTED_AS_ENV),
        exe.clone().into_os_string(),
    );
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != hull_hypervisor::STARTED_AS_ENV)
        .chain(std::iter::once(started_as))
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).unwrap_or_default()
        })
        .collect();
    let err = nix::unistd::execve(&path, &args, &env).unwrap_err();
    Err(Error::sys(format!("re-exec {}", target.display()), err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn must_be_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the binary guard's tests mount: run them as root"
        );
    }

    fn sealed(exe: &Path, mounts: &Path) -> PathBuf {
        sealed_path(exe, mounts).unwrap().expect("a bind").path
    }

    fn is_mounted(p: &Path) -> bool {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = p.to_string_lossy();
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(p.as_ref()))
    }

    #[test]
    fn sealed_copy_is_read_only_and_reused() {
        must_be_root();
        let dir = tempfile_dir("reuse");
        let exe = dir.join("bin");
        fs::write(&exe, b"#!/bin/sh\n").unwrap();
        let mounts = dir.join("mnt");
        let t = sealed(&exe, &mounts);
        let err = fs::OpenOptions::new().write(true).open(&t).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert_eq!(sealed(&exe, &mounts), t);
        // Already on a read-only mount: nothing to do.
        assert!(sealed_path(&t, &mounts).unwrap().is_none());
        nix::mount::umount2(&t, nix::mount::MntFlags::MNT_DETACH).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn binds_of_deleted_or_changed_binaries_do_not_pile_up() {
        must_be_root();
        let dir = tempfile_dir("sweep");
        let mounts = dir.join("mnt");
        // A binary that is then deleted (a rebuild, an upgrade).
        let old = dir.join("old");
        fs::write(&old, b"old").unwrap();
        let old_bind = sealed(&old, &mounts);
        fs::remove_file(&old).unwrap();
        // A binary changed in place: same inode, new mtime.
        let changed = dir.join("changed");
        fs::write(&changed, b"one").unwrap();
        let changed_bind = sealed(&changed, &mounts);
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&changed, b"two").unwrap();
        // A binary whose path was replaced while another name keeps it (cargo's deps/).
        let replaced = dir.join("replaced");
        fs::write(&replaced, b"first").unwrap();
        fs::hard_link(&replaced, dir.join("replaced-other-name")).unwrap();
        let replaced_bind = sealed(&replaced, &mounts);
        fs::remove_file(&replaced).unwrap();
        fs::write(&replaced, b"second").unwrap();
        // A binary still there, and an empty file a failed mount left.
        let kept = dir.join("kept");
        fs::write(&kept, b"kept").unwrap();
        let kept_bind = sealed(&kept, &mounts);
        let leftover = mounts.join("hull-1-2-3");
        fs::write(&leftover, b"").unwrap();
        // The next new binary's bind sweeps.
        let new = dir.join("new");
        fs::write(&new, b"new").unwrap();
        let new_bind = sealed(&new, &mounts);
        for gone in [&old_bind, &changed_bind, &replaced_bind, &leftover] {
            assert!(!gone.exists(), "{} left", gone.display());
            assert!(!is_mounted(gone), "{} still mounted", gone.display());
        }
        for live in [&kept_bind, &new_bind] {
            assert!(is_mounted(live), "{} was removed", live.display());
        }
        assert_eq!(fs::read(&kept_bind).unwrap(), b"kept");
        let changed_again = sealed(&changed, &mounts);
        assert_eq!(fs::read(&changed_again).unwrap(), b"two");
        for b in [&kept_bind, &new_bind, &changed_again] {
            nix::mount::umount2(b, nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn early_verb_scan() {
        let v = |a: &[&str]| verb_needs_guard(a.iter().map(OsString::from));
        assert!(v(&["run", "x"]));
        assert!(v(&["--root", "/r", "--log", "l", "--debug", "create", "x"]));
        assert!(v(&["--root=/r", "--log-format", "json", "exec", "x", "sh"]));
        assert!(!v(&["state", "run"]));
        assert!(!v(&["--root", "run", "state", "x"]));
        assert!(!v(&["--rootless", "run", "x"]));
        assert!(!v(&["ls"]));
        assert!(!v(&[]));
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hull-guard-{name}-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
