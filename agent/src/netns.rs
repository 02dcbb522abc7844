//! The pod's network namespace in the guest: made once before the agent serves (so a VM
//! template holds it ready: making one costs ~0.1 s under TCG), joined by every container of
//! the pod, and where SetupNetwork puts the pod's NICs. It is not the agent's own namespace:
//! the pod's containers do not share the agent's sockets, and the `net.*` sysctls a client
//! sets (Docker's `net.ipv4.ping_group_range`) need a namespace that is not the host's, which
//! libcontainer checks.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Spec};

use crate::error::Result;

/// The pod's network namespace, if the agent made one (it does as the guest's init).
#[derive(Debug, Default)]
pub struct PodNetns {
    path: Option<PathBuf>,
}

impl PodNetns {
    /// No pod namespace: containers get what their spec asks (the agent is not the guest's
    /// init, as in tests on the host).
    pub fn none() -> Self {
        Self::default()
    }

    /// Makes the pod's network namespace, kept alive by a bind mount on `path`.
    pub fn make(path: &Path) -> Result<Self> {
        hull_net::create_netns(path)?;
        Ok(PodNetns {
            path: Some(path.to_path_buf()),
        })
    }

    /// Its path, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Puts `spec`'s container into the pod's network namespace (whatever it asked for: in a
    /// vm pod the host's namespace paths mean nothing, and the pod's network is this one).
    pub fn join(&self, spec: &mut Spec) {
        let Some(path) = &self.path else {
            return;
        };
        let Some(linux) = spec.linux_mut() else {
            return;
        };
        let mut nss = linux.namespaces().clone().unwrap_or_default();
        nss.retain(|n| n.typ() != LinuxNamespaceType::Network);
        if let Ok(ns) = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(path.clone())
            .build()
        {
            nss.push(ns);
        }
        linux.set_namespaces(Some(nss));
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = hull_net::remove_netns(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_joins_the_pods_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod-netns");
        let ns = PodNetns::make(&path).expect("make a network namespace (root)");
        let mut asks_new: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"network"}]}}"#,
        )
        .unwrap();
        ns.join(&mut asks_new);
        let nss = asks_new
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        let net: Vec<_> = nss
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Network)
            .collect();
        assert_eq!(net.len(), 1);
        assert_eq!(net[0].path().as_deref(), Some(path.as_path()));
        assert_eq!(nss.len(), 2, "the pid namespace stays");
        drop(ns);
        assert!(!path.exists(), "the namespace goes with the agent");
        let mut untouched = asks_new.clone();
        PodNetns::none().join(&mut untouched);
        assert_eq!(untouched, asks_new);
    }
}
