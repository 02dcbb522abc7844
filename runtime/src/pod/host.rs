//! [`HostPod`]: containers on the host kernel (namespaces, cgroups), driven by
//! [`hull_container::ContainerRoot`]. A host pod is its state root: starting and stopping it
//! has nothing to boot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use hull_container::ContainerRoot;
use oci_spec::runtime::LinuxResources;

use super::{ContainerState, Containers, CreateOptions, ExecOptions, ExitStatus, Pod, Sig, Stats};
use crate::config::Isolation;
use crate::error::{Error, Result};

/// Where a host pod's create and exec run (libcontainer clones container processes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spawner {
    /// In this process: right for a single-threaded caller (the `hull` CLI).
    InProcess,
    /// In a fresh single-threaded helper (this binary re-executed, see
    /// [`hull_container::spawn`]): required in a many-threaded caller (the shim). The new
    /// process' stdio are the helper's, so the `Stdio` given is used and an unset stream is
    /// /dev/null.
    Helper,
}

/// The containers under one state root, on the host kernel. The root may hold other pods'
/// containers too (a runc-style root): the pod knows the ones it created itself, and
/// stopping the pod deletes those.
#[derive(Debug, Clone)]
pub struct HostPod {
    root: ContainerRoot,
    spawner: Spawner,
    created: Arc<Mutex<BTreeSet<String>>>,
}

impl HostPod {
    /// A pod whose containers keep their state under `root`; creates and execs in process.
    pub fn new(root: impl Into<PathBuf>, systemd_cgroup: bool) -> Self {
        HostPod {
            root: ContainerRoot::new(root, systemd_cgroup),
            spawner: Spawner::InProcess,
            created: Arc::default(),
        }
    }

    /// The same pod, creating and exec'ing through `spawner`.
    pub fn with_spawner(mut self, spawner: Spawner) -> Self {
        self.spawner = spawner;
        self
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        self.root.root()
    }

    /// The container driver (for what only the host has: `load`, `create_checked`).
    pub fn driver(&self) -> &ContainerRoot {
        &self.root
    }
}

impl Containers for HostPod {
    fn create(&self, opts: CreateOptions) -> Result<i32> {
        let id = opts.id.clone();
        let pid = match self.spawner {
            Spawner::InProcess => self.root.create(opts)?,
            // The helper checks the bundle: a long-lived caller (the shim) keeps no spec
            // parsing code resident.
            Spawner::Helper => self.root.create_in_helper(opts, false)?,
        };
        self.created.lock().insert(id);
        Ok(pid)
    }

    fn start(&self, id: &str) -> Result<()> {
        Ok(self.root.start(id)?)
    }

    fn state(&self, id: &str) -> Result<ContainerState> {
        Ok(self.root.state(id)?)
    }

    fn list(&self) -> Result<Vec<ContainerState>> {
        Ok(self.root.list()?)
    }

    fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32> {
        if opts.in_guest {
            return Err(Error::invalid(format!(
                "container {id} runs on the host's kernel: it has no guest to open a console \
                 in (use hull exec to run a command in the container)"
            )));
        }
        match self.spawner {
            Spawner::InProcess => Ok(self.root.exec(id, opts)?),
            Spawner::Helper => Ok(self.root.exec_in_helper(id, opts)?),
        }
    }

    fn kill(&self, id: &str, signal: Sig, all: bool) -> Result<()> {
        Ok(self.root.kill(id, signal, all)?)
    }

    fn wait(&self, id: &str, pid: i32) -> Result<ExitStatus> {
        Ok(self.root.wait(id, pid)?)
    }

    fn pids(&self, id: &str) -> Result<Vec<i32>> {
        Ok(self.root.pids(id)?)
    }

    fn stats(&self, id: &str) -> Result<Stats> {
        Ok(self.root.stats(id)?)
    }

    fn pause(&self, id: &str) -> Result<()> {
        Ok(self.root.pause(id)?)
    }

    fn resume(&self, id: &str) -> Result<()> {
        Ok(self.root.resume(id)?)
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        Ok(self.root.update(id, resources)?)
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        self.root.delete(id, force)?;
        self.created.lock().remove(id);
        Ok(())
    }

    fn oom_kills(&self, id: &str) -> Result<u64> {
        Ok(self.root.oom_kills(id)?)
    }
}

impl Pod for HostPod {
    fn isolation(&self) -> Isolation {
        Isolation::Host
    }

    fn start_pod(&self, _first_bundle: &Path) -> Result<()> {
        Ok(())
    }

    fn stop_pod(&self) -> Result<()> {
        let ids = std::mem::take(&mut *self.created.lock());
        for id in ids {
            match self.root.delete(&id, true) {
                Ok(()) | Err(hull_container::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
