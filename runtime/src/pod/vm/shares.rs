//! What a vm pod's guest sees of the host: one directory shared into the VM
//! (`<vm dir>/shared`, virtio-9p tag `hullshare`, mounted by the agent at
//! `/run/hull/shared`). Each container's rootfs, and the host files its spec bind-mounts, are
//! bind-mounted under it, and the spec the guest gets names them there.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use super::{VmPod, GUEST_SHARED};
use crate::error::{Error, Result};

impl VmPod {
    /// Bind-mounts `src` at `dst` (created as a file or dir like `src`).
    pub(super) fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<()> {
        if src.is_dir() {
            fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
        } else {
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
            }
            fs::File::create(dst).map_err(|e| Error::io(dst, e))?;
        }
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("bind {} at {}", src.display(), dst.display()), e))?;
        if readonly {
            let _ = mount(
                None::<&str>,
                dst,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
        Ok(())
    }

    pub(super) fn unmount_all(mounts: &[PathBuf]) {
        for m in mounts.iter().rev() {
            if let Err(e) = umount2(m.as_path(), MntFlags::MNT_DETACH) {
                tracing::warn!(mount = %m.display(), "unmount: {e}");
            }
        }
    }

    /// The spec the guest gets: rootfs and bind sources bind-mounted under `cdir` (the
    /// container's dir in the shared dir, or the staging dir of its rootfs image), which the
    /// guest has at `/run/hull/shared/<id>`; host namespace paths, hooks and host cgroup paths
    /// dropped. Returns the host mounts made.
    pub(super) fn guest_spec(
        &self,
        id: &str,
        bundle: &Path,
        mut spec: Spec,
        cdir: &Path,
        mounts: &mut Vec<PathBuf>,
    ) -> Result<(Spec, String)> {
        let host_root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| "rootfs".into());
        let host_root = if host_root.is_absolute() {
            host_root
        } else {
            bundle.join(host_root)
        };
        let rootfs = cdir.join("rootfs");
        Self::bind(&host_root, &rootfs, false)?;
        mounts.push(rootfs);
        let guest_rootfs = format!("{GUEST_SHARED}/{id}/rootfs");

        if let Some(ms) = spec.mounts().clone() {
            let mut out = Vec::with_capacity(ms.len());
            for (n, mut m) in ms.into_iter().enumerate() {
                let is_bind = m.typ().as_deref() == Some("bind")
                    || m.options()
                        .as_ref()
                        .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
                if let (true, Some(src)) = (is_bind, m.source().clone()) {
                    if !src.exists() {
                        return Err(Error::invalid(format!(
                            "container {id}: bind mount source {} does not exist",
                            src.display()
                        )));
                    }
                    let dst = cdir.join("mounts").join(n.to_string());
                    Self::bind(&src, &dst, false)?;
                    mounts.push(dst);
                    m.set_source(Some(format!("{GUEST_SHARED}/{id}/mounts/{n}").into()));
                }
                out.push(m);
            }
            spec.set_mounts(Some(out));
        }
        spec.set_hooks(None);
        if let Some(linux) = spec.linux_mut() {
            if let Some(nss) = linux.namespaces().clone() {
                // A namespace named `/proc/<pid>/ns/..` with the pid of a container of this
                // pod (CRI's way to share the pod's pid/ipc/uts namespaces) names that
                // container's namespace in the guest too: the pids we hand out are the
                // guest's. Other paths (a CNI netns on the host) mean nothing in the guest:
                // the container gets a namespace of its own there; its network namespace is
                // the pod's, which the agent puts every container of the pod in.
                let pod_pids: Vec<i32> = self
                    .inner
                    .lock()
                    .containers
                    .values()
                    .map(|c| c.init_pid)
                    .collect();
                let nss = nss
                    .into_iter()
                    .map(|mut n| {
                        let keep = n
                            .path()
                            .as_ref()
                            .and_then(|p| proc_ns_pid(p))
                            .is_some_and(|pid| pod_pids.contains(&pid));
                        if !keep {
                            n.set_path(None);
                        }
                        n
                    })
                    .collect();
                linux.set_namespaces(Some(nss));
            }
            linux.set_cgroups_path(Some(format!("/hull/{id}").into()));
        }
        Ok((spec, guest_rootfs))
    }
}

/// The pid of a `/proc/<pid>/ns/<type>` path.
fn proc_ns_pid(path: &Path) -> Option<i32> {
    let rest = path.strip_prefix("/proc").ok()?;
    let mut parts = rest.iter();
    let pid = parts.next()?.to_str()?.parse().ok()?;
    (parts.next()? == "ns" && parts.next().is_some() && parts.next().is_none()).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_ns_paths_name_their_pid() {
        assert_eq!(proc_ns_pid(Path::new("/proc/42/ns/pid")), Some(42));
        assert_eq!(proc_ns_pid(Path::new("/proc/42/ns")), None);
        assert_eq!(proc_ns_pid(Path::new("/var/run/netns/cni-1")), None);
        assert_eq!(proc_ns_pid(Path::new("/proc/self/ns/net")), None);
    }
}
