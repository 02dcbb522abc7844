//! [`VmPod`]: a pod in its own VM. Starting the pod boots the VM through a `hull-hypervisor`
//! backend (`boot.rs`); the agent in the guest (`hull-agent`) creates every container there.
//! Root filesystems reach the guest through one shared directory (`shares.rs`), standard
//! streams through relays over the agent's stream calls (`relay.rs`), OOM kills through the
//! agent's OOM events (`oom.rs`), the pod's network through taps and NICs (`network.rs`),
//! host block devices as the VM's disks (`devices.rs`). Pids are the guest's. Stopping the pod stops the VM.

use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hull_agent_client::{AgentClient, AgentClientError};
use hull_container::hooks::{self, Phase};
use hull_container::{load_bundle_spec, validate_id};
use hull_hypervisor::Hypervisor;
use nix::sys::signal::Signal;
use oci_spec::runtime::{Hook, LinuxResources};
use parking_lot::{Mutex, MutexGuard};

use super::{
    ContainerState, Containers, CreateOptions, ExecOptions, ExitStatus, Pod, Sig, Stats, Status,
};
use crate::config::{Isolation, RootfsMode, VmSection};
use crate::error::{Error, Result};

mod boot;
mod checkpoint;
mod console;
mod devices;
mod network;
mod oom;
mod relay;
mod rootdisk;
mod shares;

pub use devices::{SHARED_ANNOTATION, VFIO_ANNOTATION, VFIO_MODE_ANNOTATION};
pub use network::clean_up_network;
pub use rootdisk::ROOTFS_ANNOTATION;

/// The 9p tag of the shared directory.
const SHARE_TAG: &str = "hullshare";
/// Where the agent mounts the shared directory (its allowed root).
const GUEST_SHARED: &str = "/run/hull/shared";
/// How long output may keep draining after its process exited.
const DRAIN: Duration = Duration::from_secs(5);
/// Bound of one WaitProcess call (the wait loops; a dead VM is noticed between calls).
const WAIT_SLICE: Duration = Duration::from_secs(10);
/// How long a broken agent connection waits for its VM's exit, if one is under way.
const END_WAIT: Duration = Duration::from_secs(2);

fn vm_err(what: impl std::fmt::Display, e: impl std::error::Error + 'static) -> Error {
    Error::Vm(format!("{what}: {}", hull_container::chain(&e)))
}

/// One process of a container: the init ("" exec id) or an exec.
struct VmProc {
    exec_id: String,
    /// Output relays, joined (bounded) before the exit is reported.
    relays: Mutex<Vec<JoinHandle<()>>>,
    exit: Mutex<Option<i32>>,
    /// Tells the stdin/winsize relay to stop.
    done: Arc<AtomicBool>,
}

struct VmContainer {
    bundle: PathBuf,
    rootfs: PathBuf,
    created: String,
    annotations: HashMap<String, String>,
    status: Status,
    init_pid: i32,
    /// The init has a terminal.
    terminal: bool,
    /// Host mounts under the shared dir, innermost last.
    mounts: Vec<PathBuf>,
    procs: HashMap<i32, Arc<VmProc>>,
    /// The spec's poststart and poststop hooks: they run on the host (the guest's spec has
    /// none), once the program runs and once the container is gone.
    poststart: Vec<Hook>,
    poststop: Vec<Hook>,
}

struct Vm {
    hv: Box<dyn Hypervisor>,
    agent: AgentClient,
    /// The pod's network on the host, if it has one.
    net: Option<network::PodNet>,
    /// Host block devices that are the VM's disks, in order.
    disks: Vec<devices::PodDisk>,
    /// The VM's disk slots: host devices (with the containers using each) and containers'
    /// rootfs images.
    slots: Vec<devices::Slot>,
    /// Where the containers' root filesystems are in the guest.
    rootfs: RootfsMode,
    /// Host PCI devices passed through to the VM.
    pci: Vec<devices::PodPci>,
    /// The VM's size (a restored checkpoint needs the same).
    memory_mib: u32,
    vcpus: u32,
}

#[derive(Default)]
struct Inner {
    vm: Option<Vm>,
    containers: HashMap<String, VmContainer>,
    ooms: HashMap<String, u64>,
}

/// The containers of one pod in the pod's VM.
pub struct VmPod {
    /// The pod's id (its first container's, as containerd and CRI name a sandbox).
    id: String,
    root: PathBuf,
    dir: PathBuf,
    config: VmSection,
    inner: Arc<Mutex<Inner>>,
    exec_seq: AtomicU64,
}

impl std::fmt::Debug for VmPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmPod")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl VmPod {
    /// A pod named `sandbox_id` whose state lives under `root`; nothing runs until
    /// [`Pod::start_pod`].
    pub fn new(root: impl Into<PathBuf>, sandbox_id: &str, config: VmSection) -> Self {
        let root = root.into();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&root, sandbox_id).hash(&mut h);
        let short = format!("{:012x}", h.finish() & 0xffff_ffff_ffff);
        // Unix socket paths are at most 108 bytes: keep the VM dir short.
        let mut dir = root.join(format!("vm-{short}"));
        if dir.as_os_str().len() > 70 {
            dir = PathBuf::from("/run/hull/vm").join(short);
        }
        VmPod {
            id: sandbox_id.to_string(),
            root,
            dir,
            config,
            inner: Arc::new(Mutex::new(Inner::default())),
            exec_seq: AtomicU64::new(0),
        }
    }

    /// The directory holding the VM's sockets, console log and shared directory.
    pub fn vm_dir(&self) -> &Path {
        &self.dir
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host pid of the VM process while it runs.
    pub fn vm_pid(&self) -> Option<u32> {
        self.inner.lock().vm.as_ref().and_then(|v| v.hv.pid())
    }

    fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }

    fn agent(&self) -> Result<AgentClient> {
        let mut g = self.inner.lock();
        let vm =
            g.vm.as_mut()
                .ok_or_else(|| Error::Vm(format!("pod {}: its vm is not running", self.id)))?;
        vm.hv
            .check_running()
            .map_err(|e| vm_err("the pod's vm", e))?;
        Ok(vm.agent.clone())
    }

    /// The error of the failed agent call `what`. When the connection broke (no answer of
    /// the agent's) because the VM ended by itself, that comes first, with how its process
    /// ended and its kept console log: a guest that panicked or reset, or a VMM that crashed,
    /// shows as a broken pipe otherwise. The wait for an exit under way holds the pod's lock
    /// (at most [`END_WAIT`], and only after a broken connection).
    fn agent_err(&self, what: String, e: AgentClientError) -> Error {
        if matches!(e, AgentClientError::Transport { .. }) {
            let ended = self
                .inner
                .lock()
                .vm
                .as_mut()
                .and_then(|v| v.hv.ended_by_itself(END_WAIT));
            if let Some(end) = ended {
                tracing::warn!(pod = %self.id, "the vm ended during {what}: {end}");
                return Error::Vm(format!(
                    "{what}: the pod's vm ended during the call: {end} (the call: {e})"
                ));
            }
        }
        vm_err(what, e)
    }

    fn container_guard<'a>(
        g: &'a mut MutexGuard<'_, Inner>,
        id: &str,
    ) -> Result<&'a mut VmContainer> {
        g.containers.get_mut(id).ok_or_else(|| Error::not_found(id))
    }

    fn proc_of(&self, id: &str, pid: i32) -> Result<Arc<VmProc>> {
        let mut g = self.inner.lock();
        let c = Self::container_guard(&mut g, id)?;
        c.procs
            .get(&pid)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("container {id} has no process with pid {pid}")))
    }
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    fs::write(path, pid.to_string()).map_err(|e| Error::io(path, e))
}

impl Containers for VmPod {
    fn create(&self, opts: CreateOptions) -> Result<i32> {
        let id = opts.id.clone();
        validate_id(&id)?;
        let spec = load_bundle_spec(&opts.bundle)?;
        if self.inner.lock().containers.contains_key(&id) {
            return Err(hull_container::Error::AlreadyExists(id).into());
        }
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let annotations = spec.annotations().clone().unwrap_or_default();
        let hooks = spec.hooks().clone().unwrap_or_default();
        let mut mounts = Vec::new();
        let result = (|| -> Result<(i32, Arc<VmProc>)> {
            self.check_pci_for(&id, &spec)?;
            let (mut gspec, guest_rootfs, storages) = match self.running_rootfs() {
                RootfsMode::Share => {
                    let cdir = self.shared().join(&id);
                    let (s, r) =
                        self.guest_spec(&id, &opts.bundle, spec.clone(), &cdir, &mut mounts)?;
                    (s, r, Vec::new())
                }
                RootfsMode::Disk => {
                    let (s, r, st) = self.rootfs_disk(&id, &opts.bundle, spec.clone())?;
                    (s, r, vec![st])
                }
            };
            devices::strip_vfio_nodes(&mut gspec);
            let json = serde_json::to_vec(&gspec)
                .map_err(|e| Error::invalid(format!("container {id}: spec: {e}")))?;
            let disks = self.disks_for(&id, &spec)?;
            let agent = self.agent()?;
            let pid = agent
                .create_container_with_disks(&id, &json, &guest_rootfs, storages, disks)
                .map_err(|e| self.agent_err(format!("create container {id} in the vm"), e))?
                as i32;
            let relayed = self.relay(
                &agent,
                &id,
                "",
                terminal,
                opts.console_socket.as_deref(),
                opts.stdio,
            );
            match relayed {
                Ok(p) => Ok((pid, p)),
                Err(e) => {
                    let _ = agent.remove_container(&id);
                    Err(e)
                }
            }
        })();
        let (pid, proc_) = match result {
            Ok(r) => r,
            Err(e) => {
                self.release_slots(&id);
                Self::unmount_all(&mounts);
                let _ = fs::remove_dir_all(self.shared().join(&id));
                return Err(e);
            }
        };
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        let mut procs = HashMap::new();
        procs.insert(pid, proc_);
        self.inner.lock().containers.insert(
            id.clone(),
            VmContainer {
                bundle: opts.bundle.clone(),
                rootfs: opts.bundle.join("rootfs"),
                created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                annotations,
                status: Status::Created,
                init_pid: pid,
                terminal,
                mounts,
                procs,
                poststart: hooks.poststart().clone().unwrap_or_default(),
                poststop: hooks.poststop().clone().unwrap_or_default(),
            },
        );
        tracing::info!(pod = %self.id, container = %id, pid, "created in the vm");
        Ok(pid)
    }

    fn start(&self, id: &str) -> Result<()> {
        {
            let mut g = self.inner.lock();
            let c = Self::container_guard(&mut g, id)?;
            if c.status != Status::Created {
                return Err(Error::wrong_status(id, c.status, "start"));
            }
        }
        // The agent answers once the program runs (exec'd): then the poststart hooks.
        self.agent()?
            .start_container(id)
            .map_err(|e| self.agent_err(format!("start container {id} in the vm"), e))?;
        let poststart = {
            let mut g = self.inner.lock();
            match g.containers.get_mut(id) {
                Some(c) => {
                    if c.status == Status::Created {
                        c.status = Status::Running;
                    }
                    c.poststart.clone()
                }
                None => Vec::new(),
            }
        };
        if !poststart.is_empty() {
            hooks::run_lenient(Phase::Poststart, &poststart, &self.state(id)?);
        }
        Ok(())
    }

    fn state(&self, id: &str) -> Result<ContainerState> {
        let vm_dead = {
            let mut g = self.inner.lock();
            g.vm.as_mut().is_none_or(|v| v.hv.check_running().is_err())
        };
        let mut g = self.inner.lock();
        let c = Self::container_guard(&mut g, id)?;
        if vm_dead {
            c.status = Status::Stopped;
        }
        Ok(ContainerState {
            oci_version: hull_container::OCI_VERSION.into(),
            id: id.to_string(),
            pid: if c.status == Status::Stopped {
                0
            } else {
                c.init_pid
            },
            status: c.status,
            bundle: c.bundle.clone(),
            rootfs: c.rootfs.clone(),
            created: c.created.clone(),
            owner: String::new(),
            annotations: c.annotations.clone(),
        })
    }

    fn list(&self) -> Result<Vec<ContainerState>> {
        let ids: Vec<String> = self.inner.lock().containers.keys().cloned().collect();
        ids.iter().map(|id| self.state(id)).collect()
    }

    fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32> {
        let status = self.state(id)?.status;
        if status != Status::Running {
            return Err(Error::wrong_status(id, status, "exec"));
        }
        let agent = self.agent()?;
        let exec_id = format!("exec-{}", self.exec_seq.fetch_add(1, Ordering::SeqCst) + 1);
        let mut opts = opts;
        if opts.in_guest {
            self.prepare_console(id, &mut opts.process)?;
        }
        let json = serde_json::to_vec(&opts.process)
            .map_err(|e| Error::invalid(format!("exec in {id}: process: {e}")))?;
        let started = if opts.in_guest {
            agent.exec_in_guest(id, &exec_id, &json)
        } else {
            agent.exec_process(id, &exec_id, &json)
        };
        let pid = started.map_err(|e| self.agent_err(format!("exec in container {id}"), e))? as i32;
        let terminal = opts.process.terminal().unwrap_or(false);
        let proc_ = match self.relay(
            &agent,
            id,
            &exec_id,
            terminal,
            opts.console_socket.as_deref(),
            opts.stdio,
        ) {
            Ok(p) => p,
            Err(e) => {
                let _ = agent.signal_process(id, &exec_id, libc::SIGKILL as u32, false);
                return Err(e);
            }
        };
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        let mut g = self.inner.lock();
        Self::container_guard(&mut g, id)?.procs.insert(pid, proc_);
        Ok(pid)
    }

    fn kill(&self, id: &str, signal: Sig, all: bool) -> Result<()> {
        let status = self.state(id)?.status;
        if status == Status::Stopped && !all {
            return Err(Error::wrong_status(id, status, "kill"));
        }
        self.agent()?
            .signal_process(id, "", signal.number() as u32, all)
            .map_err(|e| self.agent_err(format!("signal {signal} to container {id}"), e))
    }

    fn signal(&self, id: &str, pid: i32, signal: Sig) -> Result<()> {
        let p = self.proc_of(id, pid)?;
        self.agent()?
            .signal_process(id, &p.exec_id, signal.number() as u32, false)
            .map_err(|e| {
                self.agent_err(format!("signal {signal} to pid {pid} of container {id}"), e)
            })
    }

    fn wait(&self, id: &str, pid: i32) -> Result<ExitStatus> {
        let p = self.proc_of(id, pid)?;
        let code = loop {
            if let Some(code) = *p.exit.lock() {
                break code;
            }
            let agent = match self.agent() {
                Ok(a) => a,
                // The VM is gone: so is every process in it.
                Err(_) => break 255,
            };
            match agent.wait_process(id, &p.exec_id, WAIT_SLICE) {
                Ok(code) => break code,
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    // Another waiter may have collected it; the VM may have died.
                    if let Some(code) = *p.exit.lock() {
                        break code;
                    }
                    if self.agent().is_err() {
                        break 255;
                    }
                    return Err(vm_err(format!("wait for pid {pid} of container {id}"), e));
                }
            }
        };
        // Output first, then the exit: a caller that prints and exits loses nothing.
        let relays = std::mem::take(&mut *p.relays.lock());
        let deadline = Instant::now() + DRAIN;
        for r in relays {
            while !r.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
        p.done.store(true, Ordering::SeqCst);
        *p.exit.lock() = Some(code);
        {
            let mut g = self.inner.lock();
            if let Some(c) = g.containers.get_mut(id) {
                if pid == c.init_pid {
                    c.status = Status::Stopped;
                }
            }
        }
        Ok(if code > 128 && code < 128 + 65 {
            match Signal::try_from(code - 128) {
                Ok(s) => ExitStatus::Signaled(s),
                Err(_) => ExitStatus::Code(code),
            }
        } else {
            ExitStatus::Code(code)
        })
    }

    fn pids(&self, id: &str) -> Result<Vec<i32>> {
        self.state(id)?;
        let pids = self
            .agent()?
            .list_processes(id)
            .map_err(|e| vm_err(format!("processes of container {id}"), e))?;
        Ok(pids.into_iter().map(|p| p as i32).collect())
    }

    fn stats(&self, id: &str) -> Result<Stats> {
        self.state(id)?;
        let r = self
            .agent()?
            .stats_container(id)
            .map_err(|e| vm_err(format!("stats of container {id}"), e))?;
        // The agent reads them with the same driver and sends hull's `Stats` as it is.
        serde_json::from_slice(&r.stats_json)
            .map_err(|e| vm_err(format!("stats of container {id}: the agent's answer"), e))
    }

    fn pause(&self, id: &str) -> Result<()> {
        let status = self.state(id)?.status;
        if status != Status::Running {
            return Err(Error::wrong_status(id, status, "pause"));
        }
        self.agent()?
            .pause_container(id)
            .map_err(|e| vm_err(format!("pause container {id}"), e))?;
        let mut g = self.inner.lock();
        Self::container_guard(&mut g, id)?.status = Status::Paused;
        Ok(())
    }

    fn resume(&self, id: &str) -> Result<()> {
        let status = self.state(id)?.status;
        if status != Status::Paused {
            return Err(Error::wrong_status(id, status, "resume"));
        }
        self.agent()?
            .resume_container(id)
            .map_err(|e| vm_err(format!("resume container {id}"), e))?;
        let mut g = self.inner.lock();
        Self::container_guard(&mut g, id)?.status = Status::Running;
        Ok(())
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.state(id)?;
        let json = serde_json::to_vec(resources)
            .map_err(|e| Error::invalid(format!("update {id}: {e}")))?;
        self.agent()?
            .update_container(id, &json)
            .map_err(|e| vm_err(format!("update container {id}"), e))
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        let status = self.state(id)?.status;
        if !force && !status.deletable() {
            return Err(Error::wrong_status(id, status, "delete"));
        }
        let c = self.inner.lock().containers.remove(id);
        if let Ok(agent) = self.agent() {
            if let Err(e) = agent.remove_container(id) {
                tracing::debug!(pod = %self.id, container = %id, "remove in the vm: {e}");
            }
        }
        self.release_slots(id);
        let _ = fs::remove_dir_all(self.shared().join(id));
        if let Some(c) = c {
            Self::forget(&c);
            Self::run_poststop(id, &c);
        }
        Ok(())
    }

    fn oom_kills(&self, id: &str) -> Result<u64> {
        Ok(self.inner.lock().ooms.get(id).copied().unwrap_or(0))
    }
}

impl Pod for VmPod {
    fn isolation(&self) -> Isolation {
        Isolation::Vm
    }

    fn start_pod(&self, first_bundle: &Path) -> Result<()> {
        if self.inner.lock().vm.is_some() {
            return Ok(());
        }
        let first = load_bundle_spec(first_bundle)?;
        if let Err(e) = self.boot(first_bundle, &first) {
            // Nothing of a VM that did not come up stays: its dir, shares, sockets, logs.
            self.shut_down();
            return Err(e);
        }
        Ok(())
    }

    fn stop_pod(&self) -> Result<()> {
        // The containers go with the VM: removing each in the guest first (its mounts, cgroup
        // and state, ~50 ms under TCG) would be undone by the power-off.
        let containers: Vec<(String, VmContainer)> = self.inner.lock().containers.drain().collect();
        for (_, c) in &containers {
            Self::forget(c);
        }
        self.shut_down();
        for (id, c) in &containers {
            Self::run_poststop(id, c);
        }
        Ok(())
    }

    fn helper_pids(&self) -> Vec<i32> {
        self.vm_pid().map(|p| p as i32).into_iter().collect()
    }

    fn checkpoint(&self, id: &str, dir: &Path, leave_running: bool) -> Result<()> {
        self.state(id)?;
        self.checkpoint_pod(dir, leave_running)
    }

    fn restore(&self, dir: &Path, opts: CreateOptions) -> Result<i32> {
        self.restore_pod(dir, opts)
    }
}

impl VmPod {
    /// Runs a removed container's poststop hooks (a failing one is a warning).
    fn run_poststop(id: &str, c: &VmContainer) {
        if c.poststop.is_empty() {
            return;
        }
        let state = ContainerState {
            oci_version: hull_container::OCI_VERSION.into(),
            id: id.to_string(),
            pid: 0,
            status: Status::Stopped,
            bundle: c.bundle.clone(),
            rootfs: c.rootfs.clone(),
            created: c.created.clone(),
            owner: String::new(),
            annotations: c.annotations.clone(),
        };
        hooks::run_lenient(Phase::Poststop, &c.poststop, &state);
    }

    /// Lets a removed container's relays end and undoes its host mounts.
    fn forget(c: &VmContainer) {
        for p in c.procs.values() {
            p.done.store(true, Ordering::SeqCst);
        }
        Self::unmount_all(&c.mounts);
    }
}

impl Drop for VmPod {
    fn drop(&mut self) {
        let _ = self.stop_pod();
    }
}
