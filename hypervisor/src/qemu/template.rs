//! VM templates: the saved state of a guest that booted and whose agent answered, from which
//! later VMs of the same configuration start instead of booting (Kata's "VM templating",
//! Firecracker's snapshots).
//!
//! A template is a directory `<root>/<key>` holding `memory` (the guest's RAM, which clones map
//! privately: copy-on-write, the file never changes) and `state` (QEMU's device state, saved
//! by migration with `x-ignore-shared`, so it holds no RAM). `<key>` hashes everything that
//! makes two guests interchangeable: the hypervisor binary, kernel, initrd, memory, vCPUs,
//! accelerator, machine and command line, and the devices. `<root>/<key>.lock` serialises
//! making a template (exclusive) against restoring from it (shared); the least recently used
//! templates beyond [`KEEP`] are removed when a new one is made.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{HypervisorError, Result};

/// The guest's console output up to the template's save (its boot log), kept beside it.
pub const BOOT_LOG: &str = "console.log";

/// How many templates a root keeps (each holds up to its guest's touched memory on disk).
pub const KEEP: usize = 3;
/// Bump when the layout or what a template holds changes.
const FORMAT: &str = "hull-vm-template-1";

/// One file's identity for the key: its resolved path, size, modification time and inode.
fn file_identity(h: &mut impl Hasher, what: &str, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| HypervisorError::io(format!("resolve {what} {path:?}"), e))?;
    let m = std::fs::metadata(&resolved)
        .map_err(|e| HypervisorError::io(format!("stat {what} {resolved:?}"), e))?;
    (
        what,
        resolved,
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino(),
        m.dev(),
    )
        .hash(h);
    Ok(())
}

/// The key of a guest: `files` are (what, path) pairs whose identity counts, `facts` the rest
/// of the configuration (memory, vCPUs, machine, command line, devices).
pub fn key(files: &[(&str, &Path)], facts: &[String]) -> Result<String> {
    // SipHash with fixed keys: stable for one build of hull, which is all a cache key needs.
    let mut h = std::hash::DefaultHasher::new();
    FORMAT.hash(&mut h);
    for (what, path) in files {
        file_identity(&mut h, what, path)?;
    }
    facts.hash(&mut h);
    Ok(format!("{:016x}", h.finish()))
}

/// A template directory under a root, by key.
#[derive(Debug, Clone)]
pub struct Template {
    root: PathBuf,
    key: String,
}

/// A held lock on a template (released on drop).
#[derive(Debug)]
pub struct TemplateLock {
    _file: File,
}

impl Template {
    /// The template of `key` under `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>, key: impl Into<String>) -> Self {
        Template {
            root: root.into(),
            key: key.into(),
        }
    }

    /// `<root>/<key>`.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.key)
    }

    /// The guest RAM file.
    pub fn memory(&self) -> PathBuf {
        self.dir().join("memory")
    }

    /// QEMU's saved device state.
    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// `<root>/<key>.lock`.
    fn lock_path(&self) -> PathBuf {
        self.root.join(format!("{}.lock", self.key))
    }

    /// Whether the template was made completely (it appears by rename only when it was).
    pub fn ready(&self) -> bool {
        self.memory().is_file() && self.state().is_file()
    }

    /// The template ready to restore from, under a shared lock (held while the VMM reads it:
    /// no removal meanwhile), made first by `make` under the exclusive lock when it is not
    /// there yet. Starts of a ready template only ever take the lock shared, so they never wait
    /// on each other. Marks the template used (for the least-recently-used sweep).
    pub fn ready_for_use(
        &self,
        make: impl FnOnce(&Template) -> Result<()>,
    ) -> Result<TemplateLock> {
        let in_use = match self.lock(false)? {
            shared if self.ready() => shared,
            shared => {
                drop(shared);
                let made = self.lock(true)?;
                if !self.ready() {
                    make(self)?;
                }
                drop(made);
                self.lock(false)?
            }
        };
        self.touch();
        Ok(in_use)
    }

    /// Takes the template's lock: `exclusive` to make or remove it, shared to restore from it.
    pub fn lock(&self, exclusive: bool) -> Result<TemplateLock> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| HypervisorError::io(format!("create {:?}", self.root), e))?;
        let path = self.lock_path();
        let file =
            open_lock_file(&path).map_err(|e| HypervisorError::io(format!("open {path:?}"), e))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock(2) on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(TemplateLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(HypervisorError::io(format!("flock {path:?}"), e));
            }
        }
    }

    /// A fresh staging directory for making this template (`<root>/<key>.tmp-<pid>`).
    pub fn staging(&self) -> Result<PathBuf> {
        let dir = self
            .root
            .join(format!("{}.tmp-{}", self.key, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| HypervisorError::io(format!("create {dir:?}"), e))?;
        Ok(dir)
    }

    /// Publishes a staging directory holding `memory` and `state` as this template (under the
    /// exclusive lock), then removes the least recently used templates beyond [`KEEP`].
    pub fn commit(&self, staging: &Path) -> Result<()> {
        let dir = self.dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(staging, &dir)
            .map_err(|e| HypervisorError::io(format!("rename {staging:?} to {dir:?}"), e))?;
        self.touch();
        self.evict_old();
        Ok(())
    }

    /// Marks the template used now (eviction removes the least recently used).
    pub fn touch(&self) {
        if let Ok(f) = File::open(self.dir()) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Removes this template (it could not be restored from); under the exclusive lock.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(self.dir());
    }

    /// Removes the templates beyond [`KEEP`], least recently used first, skipping any that is
    /// in use (its lock is held). Running clones keep their memory mapping of a removed file.
    fn evict_old(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let mut found: Vec<(SystemTime, String)> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name.contains(".tmp-") || name == self.key {
                    return None;
                }
                let used = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((used, name))
            })
            .collect();
        found.sort();
        let excess = (found.len() + 1).saturating_sub(KEEP);
        for (_, name) in found.into_iter().take(excess) {
            let old = Template::new(&self.root, name);
            if let Some(_lock) = old.try_lock_exclusive() {
                tracing::info!(template = ?old.dir(), "removing a least recently used vm template");
                old.remove();
                let _ = std::fs::remove_file(old.lock_path());
            }
        }
    }

    fn try_lock_exclusive(&self) -> Option<TemplateLock> {
        let file = open_lock_file(&self.lock_path()).ok()?;
        // SAFETY: flock(2) on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        (rc == 0).then_some(TemplateLock { _file: file })
    }
}

/// Opens (creating) a template's lock file.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Quotes a path for QEMU's `exec:` migration URI (run by /bin/sh).
pub fn shell_quote(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| HypervisorError::Config(format!("template path {path:?} is not UTF-8")))?;
    if s.contains('\'') || s.contains('\n') {
        return Err(HypervisorError::Config(format!(
            "template path {path:?} contains a quote or a newline"
        )));
    }
    Ok(format!("'{s}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_the_files_and_the_facts() {
        let d = tempfile::tempdir().unwrap();
        let (k, i) = (d.path().join("vmlinux"), d.path().join("initrd"));
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&i, b"initrd").unwrap();
        let files = [("kernel", k.as_path()), ("initrd", i.as_path())];
        let facts = vec!["256".to_string(), "console=ttyS0".to_string()];
        let a = key(&files, &facts).unwrap();
        assert_eq!(a, key(&files, &facts).unwrap(), "stable");
        assert_ne!(a, key(&files, &["512".to_string()]).unwrap());
        std::fs::write(&i, b"initrd, rebuilt").unwrap();
        assert_ne!(
            a,
            key(&files, &facts).unwrap(),
            "a rebuilt initrd is a new guest"
        );
        let missing = [("kernel", Path::new("/nonexistent/vmlinux"))];
        assert!(key(&missing, &facts).is_err());
    }

    #[test]
    fn commit_publishes_and_keeps_the_most_recently_used() {
        let root = tempfile::tempdir().unwrap();
        let mut made = Vec::new();
        for n in 0..KEEP + 2 {
            let t = Template::new(root.path(), format!("k{n}"));
            let _l = t.lock(true).unwrap();
            assert!(!t.ready());
            let s = t.staging().unwrap();
            std::fs::write(s.join("memory"), b"m").unwrap();
            std::fs::write(s.join("state"), b"s").unwrap();
            t.commit(&s).unwrap();
            assert!(t.ready() && !s.exists());
            made.push(t);
            // mtime granularity: keep the order of use unambiguous
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kept: Vec<bool> = made.iter().map(Template::ready).collect();
        assert_eq!(kept, [false, false, true, true, true]);
    }

    #[test]
    fn a_template_in_use_is_not_evicted() {
        let root = tempfile::tempdir().unwrap();
        let old = Template::new(root.path(), "old");
        let s = old.staging().unwrap();
        std::fs::write(s.join("memory"), b"m").unwrap();
        std::fs::write(s.join("state"), b"s").unwrap();
        old.commit(&s).unwrap();
        let _in_use = old.lock(false).unwrap();
        for n in 0..KEEP + 1 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let t = Template::new(root.path(), format!("new{n}"));
            let s = t.staging().unwrap();
            std::fs::write(s.join("memory"), b"m").unwrap();
            std::fs::write(s.join("state"), b"s").unwrap();
            t.commit(&s).unwrap();
        }
        assert!(
            old.ready(),
            "a restore holds its shared lock: the template stays"
        );
    }

    #[test]
    fn exec_uri_paths_are_quoted_or_refused() {
        assert_eq!(
            shell_quote(Path::new("/var/cache/hull/t/state")).unwrap(),
            "'/var/cache/hull/t/state'"
        );
        assert!(shell_quote(Path::new("/tmp/it's")).is_err());
    }
}
