//! The binary guard (CVE-2019-5736): a container must never be able to overwrite the
//! hull binary through `/proc/<pid>/exe` of a process hull started in it.
//!
//! runc copies itself into a sealed memfd on every start, which costs tens of ms for a
//! large binary. hull instead runs from a read-only bind mount of its own binary,
//! made once per binary (keyed by device, inode and mtime) under `/run/hull-exe/`:
//! every process hull forks into a container then has an `exe` on a read-only mount,
//! so opening it for writing fails with EROFS. The cost per call is one statvfs and,
//! when started from the writable path, one re-exec.

use std::ffi::{CString, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use crate::error::{Error, Result};

/// Where the read-only copies of the binary are mounted.
pub const EXE_DIR: &str = "/run/hull-exe";

fn on_readonly_mount(p: &Path) -> bool {
    statvfs(p)
        .map(|s| s.flags().contains(FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// The read-only bind of `exe` (made if missing); `None` when `exe` is already on a
/// read-only mount.
pub fn sealed_path(exe: &Path, dir: &Path) -> Result<Option<PathBuf>> {
    if on_readonly_mount(exe) {
        return Ok(None);
    }
    let meta = fs::metadata(exe).map_err(|e| Error::io(exe, e))?;
    let target = dir.join(format!(
        "hull-{:x}-{:x}-{:x}",
        meta.dev(),
        meta.ino(),
        meta.mtime_nsec() as u64 ^ ((meta.mtime() as u64) << 30)
    ));
    let ready = |t: &Path| {
        on_readonly_mount(t)
            && fs::metadata(t)
                .map(|m| m.ino() == meta.ino() && m.dev() == meta.dev())
                .unwrap_or(false)
    };
    if ready(&target) {
        return Ok(Some(target));
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock_path = dir.join(".lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::sys("lock the binary guard", e))?;
    if ready(&target) {
        return Ok(Some(target));
    }
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
    Ok(Some(target))
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
    let Some(target) = sealed_path(&exe, Path::new(EXE_DIR))? else {
        return Ok(());
    };
    let path = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidInput("binary path has a NUL byte".into()))?;
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
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

    #[test]
    fn sealed_copy_is_read_only_and_reused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("needs root to mount");
            return;
        }
        let dir = tempfile_dir();
        let exe = dir.join("bin");
        fs::write(&exe, b"#!/bin/sh\n").unwrap();
        let mounts = dir.join("mnt");
        let t = sealed_path(&exe, &mounts).unwrap().expect("a bind");
        let err = fs::OpenOptions::new().write(true).open(&t).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert_eq!(sealed_path(&exe, &mounts).unwrap(), Some(t.clone()));
        // Already on a read-only mount: nothing to do.
        assert_eq!(sealed_path(&t, &mounts).unwrap(), None);
        nix::mount::umount2(&t, nix::mount::MntFlags::MNT_DETACH).unwrap();
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

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("hull-guard-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
