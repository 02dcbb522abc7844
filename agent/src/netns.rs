//! One spare network namespace, made while the guest is idle, for the next container whose
//! spec asks for a new one.
//!
//! Making a network namespace runs every protocol's per-namespace set-up (IPv4, IPv6,
//! netfilter, the bridge, sysctl tables): ~0.1 s of a container's create under TCG, most of
//! it translating that kernel code again in each VM restored from a template. The agent makes
//! one spare before it serves, so a VM template holds it ready; the first container that asks
//! for a new network namespace (the pod's first, under CRI: the others join it by path) gets
//! the spare instead, which is what it would have got: a namespace nobody used, with only a
//! `lo` that is down. Later containers make their own, as before. The spare's bind mount stays
//! until that container is removed: its saved spec names the path, which libcontainer checks
//! again on every exec.

use std::fs::File;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use parking_lot::Mutex;

use crate::error::{AgentError, Result};

/// The spare, if it was made and not yet taken.
#[derive(Debug, Default)]
pub struct SpareNetns {
    path: Mutex<Option<PathBuf>>,
}

/// A taken spare: its path is in a container's spec; the bind mount that keeps it alive goes
/// when this is dropped.
#[derive(Debug)]
pub struct Taken {
    path: PathBuf,
}

impl SpareNetns {
    /// No spare (the agent is not the guest's init, or making one failed).
    pub fn none() -> Self {
        Self::default()
    }

    /// Makes a new network namespace and keeps it alive by a bind mount on `path`.
    pub fn make(path: &Path) -> Result<Self> {
        File::create(path).map_err(|e| AgentError::io(format!("create {path:?}"), e))?;
        let target = path.to_path_buf();
        // A thread of its own: unshare(CLONE_NEWNET) moves only the calling thread.
        let made = std::thread::spawn(move || -> Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| AgentError::io("unshare(CLONE_NEWNET)", e.into()))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                AgentError::io(
                    format!("bind the new network namespace on {target:?}"),
                    e.into(),
                )
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(AgentError::InvalidArgument(
                "the netns thread panicked".into(),
            ))
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(SpareNetns {
            path: Mutex::new(Some(path.to_path_buf())),
        })
    }

    /// Gives the spare to `spec` when it asks for a new network namespace (one without a
    /// path). The returned guard must live as long as the container.
    pub fn give(&self, spec: &mut Spec) -> Option<Taken> {
        let mut linux = spec.linux().clone()?;
        let mut nss = linux.namespaces().clone()?;
        let ns = nss
            .iter_mut()
            .find(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())?;
        let path = self.path.lock().take()?;
        ns.set_path(Some(path.clone()));
        linux.set_namespaces(Some(nss));
        spec.set_linux(Some(linux));
        tracing::debug!(?path, "the spare network namespace goes to this container");
        Some(Taken { path })
    }

    /// Whether the spare is still there.
    pub fn available(&self) -> bool {
        self.path.lock().is_some()
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        // The container's processes keep the namespace; the agent lets go of it.
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SpareNetns {
    fn drop(&mut self) {
        if let Some(p) = self.path.lock().take() {
            drop(Taken { path: p });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn spec_with(nss: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": nss}
        }))
        .unwrap()
    }

    fn net_path(spec: &Spec) -> Option<PathBuf> {
        spec.linux()
            .as_ref()?
            .namespaces()
            .as_ref()?
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)?
            .path()
            .clone()
    }

    /// A spare made in a temporary dir; `None` (test skipped) without root.
    fn made() -> Option<(tempfile::TempDir, PathBuf, SpareNetns)> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: making a network namespace needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spare-netns");
        let spare = SpareNetns::make(&path).unwrap();
        Some((dir, path, spare))
    }

    /// The bind mount and its file are gone.
    fn assert_unmounted(path: &Path) {
        assert!(!path.exists(), "{path:?} is still there");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(path.to_str().unwrap()), "{mounts}");
    }

    #[test]
    fn the_spare_is_a_new_namespace_given_once_and_unmounted_after() {
        let Some((_dir, path, spare)) = made() else {
            return;
        };
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let theirs = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(
            ours, theirs,
            "the spare is this process's own network namespace"
        );

        // A spec that joins a namespace by path keeps it; a spec without one leaves the spare.
        let mut joined =
            spec_with(serde_json::json!([{"type": "network", "path": "/proc/7/ns/net"}]));
        assert!(spare.give(&mut joined).is_none());
        assert_eq!(net_path(&joined), Some(PathBuf::from("/proc/7/ns/net")));
        let mut no_net = spec_with(serde_json::json!([{"type": "pid"}]));
        assert!(spare.give(&mut no_net).is_none());
        assert!(spare.available());

        let mut fresh = spec_with(serde_json::json!([{"type": "pid"}, {"type": "network"}]));
        let taken = spare
            .give(&mut fresh)
            .expect("a new network namespace gets the spare");
        assert_eq!(net_path(&fresh).as_deref(), Some(path.as_path()));
        assert!(!spare.available());
        let mut second = spec_with(serde_json::json!([{"type": "network"}]));
        assert!(spare.give(&mut second).is_none(), "the spare is given once");
        assert_eq!(net_path(&second), None);

        drop(taken);
        assert_unmounted(&path);
    }

    #[test]
    fn a_spare_not_given_is_unmounted_with_the_agent() {
        let Some((_dir, path, spare)) = made() else {
            return;
        };
        drop(spare);
        assert_unmounted(&path);
    }
}
