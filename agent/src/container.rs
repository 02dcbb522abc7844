//! Containers inside the guest, created and driven through libcontainer.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::Container as LcContainer;
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};

use crate::error::{AgentError, Result};
use crate::helper;
use crate::process::{self, Process};
use crate::reaper::Reaper;

/// How long libcontainer may take to hand over a pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a container or exec id: short, plain characters, usable as a file name.
pub fn validate_id(kind: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!("bad {kind} id {id:?}")))
    }
}

/// A container and the processes the agent started in it.
pub struct Container {
    /// The container id.
    pub id: String,
    lc: Mutex<LcContainer>,
    /// The init process.
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    bundle: PathBuf,
    lc_root: PathBuf,
    cgroup_path: PathBuf,
    /// The capabilities of the container's process, the default for execs.
    default_caps: Option<oci_spec::runtime::LinuxCapabilities>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the agent keeps libcontainer state and bundles.
#[derive(Debug, Clone)]
pub struct StateDirs {
    /// libcontainer's root (one directory per container).
    pub lc_root: PathBuf,
    /// Generated bundles (config.json, console sockets, exec process files).
    pub bundles: PathBuf,
    /// Use chroot instead of pivot_root (the guest's root is the initramfs).
    pub no_pivot: bool,
}

impl StateDirs {
    /// Creates the state directories under `base`.
    pub fn new(base: &Path, no_pivot: bool) -> Result<Self> {
        let dirs = StateDirs {
            lc_root: base.join("containers"),
            bundles: base.join("bundles"),
            no_pivot,
        };
        for d in [&dirs.lc_root, &dirs.bundles] {
            fs::create_dir_all(d).map_err(|e| AgentError::io(format!("create {d:?}"), e))?;
        }
        Ok(dirs)
    }
}

fn lc_err(
    id: &str,
    op: &'static str,
) -> impl FnOnce(libcontainer::error::LibcontainerError) -> AgentError {
    let container_id = id.to_string();
    move |source| AgentError::Libcontainer {
        container_id,
        op,
        source: Box::new(source),
    }
}

fn spec_err(id: &str, reason: impl Into<String>) -> AgentError {
    AgentError::InvalidSpec {
        container_id: id.to_string(),
        reason: reason.into(),
    }
}

/// Parses and checks an OCI spec from the host; sets the rootfs and a default cgroup path.
pub fn prepare_spec(id: &str, json: &[u8], rootfs: &Path) -> Result<Spec> {
    let mut spec: Spec = serde_json::from_slice(json).map_err(|e| spec_err(id, e.to_string()))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| spec_err(id, "no process"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(spec_err(id, "process.args is empty"));
    }
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    spec.set_root(Some(root));
    let mut linux = spec
        .linux()
        .clone()
        .ok_or_else(|| spec_err(id, "no linux section"))?;
    let cg_ok = linux
        .cgroups_path()
        .as_ref()
        .is_some_and(|p| p.is_absolute() && !p.components().any(|c| c.as_os_str() == ".."));
    if !cg_ok {
        linux.set_cgroups_path(Some(PathBuf::from(format!("/hull/{id}"))));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

impl Container {
    /// Creates (but does not start) a container whose spec and rootfs are already checked.
    pub fn create(id: &str, spec: Spec, dirs: &StateDirs, reaper: &Reaper) -> Result<Container> {
        let bundle = dirs.bundles.join(id);
        fs::create_dir_all(&bundle).map_err(|e| AgentError::io(format!("create {bundle:?}"), e))?;
        let result = Self::create_in(id, spec, dirs, &bundle, reaper);
        if result.is_err() {
            let _ = fs::remove_dir_all(&bundle);
            // libcontainer may leave a half-made container directory behind.
            let _ = fs::remove_dir_all(dirs.lc_root.join(id));
        }
        result
    }

    fn create_in(
        id: &str,
        spec: Spec,
        dirs: &StateDirs,
        bundle: &Path,
        reaper: &Reaper,
    ) -> Result<Container> {
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let default_caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone());
        let cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_default();
        spec.save(bundle.join("config.json"))
            .map_err(|e| spec_err(id, format!("save config.json: {e}")))?;

        let guard = reaper.fork_guard();
        let sock = bundle.join("console.sock");
        let (child, parent, console) = if terminal {
            (None, None, Some(process::console_listener(&sock)?))
        } else {
            let (child, parent) = process::stdio_pipes()?;
            (Some(child), Some(parent), None)
        };
        let job = helper::Job::Create {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            lc_root: dirs.lc_root.clone(),
            no_pivot: dirs.no_pivot,
            console: console.as_ref().map(|_| sock.clone()),
        };
        let pid = helper::run(&job, child).map_err(|reason| AgentError::ContainerOp {
            container_id: id.to_string(),
            op: "create",
            reason,
        })?;
        reaper.watch(pid);
        drop(guard);
        let lc = LcContainer::load(dirs.lc_root.join(id)).map_err(lc_err(id, "load"))?;
        let init = match (parent, console) {
            (Some(p), _) => Process::with_pipes(String::new(), pid, p),
            (None, Some(l)) => {
                let master = process::receive_pty_master(&l, CONSOLE_TIMEOUT)?;
                Process::with_tty(String::new(), pid, master)?
            }
            (None, None) => unreachable!("either pipes or a console socket is set up"),
        };
        tracing::info!(container_id = id, pid, "container created");
        Ok(Container {
            id: id.to_string(),
            lc: Mutex::new(lc),
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
            bundle: bundle.to_path_buf(),
            lc_root: dirs.lc_root.clone(),
            cgroup_path,
            default_caps,
        })
    }

    /// Starts the container's init process.
    pub fn start(&self, reaper: &Reaper) -> Result<()> {
        // Start hooks run as children that libcontainer waits for itself.
        let _guard = reaper.fork_guard();
        lock(&self.lc).start().map_err(lc_err(&self.id, "start"))?;
        tracing::info!(container_id = %self.id, "container started");
        Ok(())
    }

    /// Starts a new process inside the running container.
    pub fn exec(
        &self,
        exec_id: &str,
        process_json: &[u8],
        reaper: &Reaper,
    ) -> Result<Arc<Process>> {
        validate_id("exec", exec_id)?;
        if lock(&self.execs).contains_key(exec_id) {
            return Err(AgentError::ProcessExists {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            });
        }
        let mut proc: OciProcess =
            serde_json::from_slice(process_json).map_err(|e| spec_err(&self.id, e.to_string()))?;
        if proc.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(spec_err(&self.id, "exec process.args is empty"));
        }
        if proc.capabilities().is_none() {
            proc.set_capabilities(self.default_caps.clone());
        }
        let terminal = proc.terminal().unwrap_or(false);
        let proc_path = self.bundle.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&proc).map_err(|e| spec_err(&self.id, e.to_string()))?;
        fs::write(&proc_path, json)
            .map_err(|e| AgentError::io(format!("write {proc_path:?}"), e))?;

        let guard = reaper.fork_guard();
        let sock = self.bundle.join(format!("exec-{exec_id}.sock"));
        let (child, parent, console) = if terminal {
            (None, None, Some(process::console_listener(&sock)?))
        } else {
            let (child, parent) = process::stdio_pipes()?;
            (Some(child), Some(parent), None)
        };
        let job = helper::Job::Exec {
            id: self.id.clone(),
            lc_root: self.lc_root.clone(),
            process: proc_path.clone(),
            console: console.as_ref().map(|_| sock.clone()),
        };
        let result = helper::run(&job, child);
        let _ = fs::remove_file(&proc_path);
        let pid = result.map_err(|reason| AgentError::ContainerOp {
            container_id: self.id.clone(),
            op: "exec",
            reason,
        })?;
        reaper.watch(pid);
        drop(guard);
        let p = match (parent, console) {
            (Some(p), _) => Process::with_pipes(exec_id.to_string(), pid, p),
            (None, Some(l)) => {
                let master = process::receive_pty_master(&l, CONSOLE_TIMEOUT);
                let _ = fs::remove_file(self.bundle.join(format!("exec-{exec_id}.sock")));
                Process::with_tty(exec_id.to_string(), pid, master?)?
            }
            (None, None) => unreachable!("either pipes or a console socket is set up"),
        };
        let p = Arc::new(p);
        lock(&self.execs).insert(exec_id.to_string(), p.clone());
        tracing::info!(container_id = %self.id, exec_id, pid, "process started");
        Ok(p)
    }

    /// The process named by `exec_id` ("" is init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::ProcessNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    /// Forgets an exec whose exit status and output the host has fully collected, so a
    /// long-lived container does not accumulate finished processes and their descriptors.
    pub fn retire_if_finished(&self, exec_id: &str, reaper: &Reaper) {
        if exec_id.is_empty() {
            return;
        }
        let mut execs = lock(&self.execs);
        if let Some(p) = execs.get(exec_id) {
            if p.finished() {
                reaper.forget(p.pid);
                execs.remove(exec_id);
                tracing::debug!(container_id = %self.id, exec_id, "exec retired");
            }
        }
    }

    /// Signals one process, or every process of the container.
    pub fn signal(&self, exec_id: &str, signal: i32, all: bool, reaper: &Reaper) -> Result<()> {
        let sig = libcontainer::signal::Signal::try_from(signal)
            .map_err(|e| AgentError::InvalidArgument(format!("signal {signal}: {e}")))?;
        if exec_id.is_empty() || all {
            let mut lc = lock(&self.lc);
            lc.refresh_status().map_err(lc_err(&self.id, "kill"))?;
            return lc.kill(sig, all).map_err(lc_err(&self.id, "kill"));
        }
        let p = self.process(exec_id)?;
        if reaper.try_status(p.pid).is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {}: process {exec_id} has exited",
                self.id
            )));
        }
        // SAFETY: kill(2) on a pid the agent started and has not reaped (checked just above,
        // and reaping of watched pids is recorded, so the pid cannot have been reused).
        if unsafe { libc::kill(p.pid, signal) } != 0 {
            return Err(AgentError::last_os(format!("kill pid {}", p.pid)));
        }
        Ok(())
    }

    /// Freezes every process of the container.
    pub fn pause(&self) -> Result<()> {
        let mut lc = lock(&self.lc);
        lc.refresh_status().map_err(lc_err(&self.id, "pause"))?;
        lc.pause().map_err(lc_err(&self.id, "pause"))
    }

    /// Thaws the container.
    pub fn resume(&self) -> Result<()> {
        let mut lc = lock(&self.lc);
        lc.refresh_status().map_err(lc_err(&self.id, "resume"))?;
        lc.resume().map_err(lc_err(&self.id, "resume"))
    }

    fn cgroup(&self) -> Result<libcgroups::common::AnyCgroupManager> {
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: self.cgroup_path.clone(),
            systemd_cgroup: false,
            container_name: self.id.clone(),
        })
        .map_err(|e| AgentError::Cgroup {
            container_id: self.id.clone(),
            op: "open",
            reason: e.to_string(),
        })
    }

    /// Cgroup statistics.
    pub fn stats(&self) -> Result<libcgroups::stats::Stats> {
        let err = match self.cgroup()?.stats() {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        // libcgroups reads the v2 pressure files unconditionally; a guest kernel without
        // PSI has none. Read the plain v2 files then.
        let rel = self
            .cgroup_path
            .strip_prefix("/")
            .unwrap_or(&self.cgroup_path);
        let dir = Path::new("/sys/fs/cgroup").join(rel);
        if dir.join("cgroup.controllers").exists() {
            return Ok(v2_stats(&dir));
        }
        Err(AgentError::Cgroup {
            container_id: self.id.clone(),
            op: "stats",
            reason: err.to_string(),
        })
    }

    /// The pids in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let pids = self
            .cgroup()?
            .get_all_pids()
            .map_err(|e| AgentError::Cgroup {
                container_id: self.id.clone(),
                op: "list pids",
                reason: e.to_string(),
            })?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// Applies new resource limits.
    pub fn update(&self, resources_json: &[u8]) -> Result<()> {
        let resources: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| spec_err(&self.id, format!("resources: {e}")))?;
        let opt = ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.cgroup()?.apply(&opt).map_err(|e| AgentError::Cgroup {
            container_id: self.id.clone(),
            op: "update",
            reason: e.to_string(),
        })
    }

    /// Count of OOM kills in the container's cgroup (v2 `memory.events`, v1 `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        let rel = self
            .cgroup_path
            .strip_prefix("/")
            .unwrap_or(&self.cgroup_path);
        let candidates = [
            (
                Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
                "oom_kill ",
            ),
            (
                Path::new("/sys/fs/cgroup/memory")
                    .join(rel)
                    .join("memory.oom_control"),
                "oom_kill ",
            ),
        ];
        for (file, key) in candidates {
            if let Ok(text) = fs::read_to_string(&file) {
                if let Some(v) = text
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
                {
                    return v;
                }
            }
        }
        0
    }

    /// Kills what is left and deletes the container and its state.
    pub fn remove(&self, reaper: &Reaper) -> Result<()> {
        let mut lc = lock(&self.lc);
        let _ = lc.refresh_status();
        if lc.can_kill() {
            if let Ok(sig) = libcontainer::signal::Signal::try_from(libc::SIGKILL) {
                let _ = lc.kill(sig, true);
            }
        }
        // Give the init a moment to die so libcontainer sees it stopped.
        let _ = reaper.wait(self.init.pid, Some(Duration::from_secs(5)));
        {
            // Poststop hooks run as children that libcontainer waits for itself.
            let _guard = reaper.fork_guard();
            lc.delete(true).map_err(lc_err(&self.id, "delete"))?;
        }
        reaper.forget(self.init.pid);
        for p in lock(&self.execs).values() {
            reaper.forget(p.pid);
        }
        let _ = fs::remove_dir_all(&self.bundle);
        tracing::info!(container_id = %self.id, "container removed");
        Ok(())
    }
}

/// Stats of a cgroup v2 directory from its plain files (no pressure files needed).
fn v2_stats(dir: &Path) -> libcgroups::stats::Stats {
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
    let num = |f: &str| read(f).trim().parse::<u64>().unwrap_or(0);
    let keyed = |f: &str, k: &str| -> u64 {
        read(f)
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut s = libcgroups::stats::Stats::default();
    s.cpu.usage.usage_total = keyed("cpu.stat", "usage_usec") * 1000;
    s.cpu.usage.usage_user = keyed("cpu.stat", "user_usec") * 1000;
    s.cpu.usage.usage_kernel = keyed("cpu.stat", "system_usec") * 1000;
    s.cpu.throttling.periods = keyed("cpu.stat", "nr_periods");
    s.cpu.throttling.throttled_periods = keyed("cpu.stat", "nr_throttled");
    s.cpu.throttling.throttled_time = keyed("cpu.stat", "throttled_usec") * 1000;
    s.memory.memory.usage = num("memory.current");
    s.memory.memory.max_usage = num("memory.peak");
    s.memory.memory.limit = num("memory.max"); // "max" reads as 0: no limit
    s.memory.memory.fail_count = keyed("memory.events", "max");
    s.memory.cache = keyed("memory.stat", "file");
    s.pids.current = num("pids.current");
    s.pids.limit = num("pids.max");
    s
}
