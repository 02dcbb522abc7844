//! The containerd task API (shim v2) translated onto the pod seam of `hull-runtime`: one shim
//! serves one pod. The first container's create chooses the pod's isolation and starts the
//! pod; the last container's delete stops it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::protobuf::EnumOrUnknown;
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::{ProcessInfo, Status as TaskStatus};
use containerd_shim::{ExitSignal, Task, TtrpcContext};
use hull_runtime::config::{Config, Isolation};
use hull_runtime::pod::host::Spawner;
use hull_runtime::pod::{CreateOptions, ExecOptions, HostPod, Pod, Sig, Status, VmPod};
use oci_spec::runtime::{LinuxResources, Process as OciProcess};
use parking_lot::{Condvar, Mutex};
use tracing::{info, warn};

use crate::config::ISOLATION_ANNOTATION;
use crate::error::{Error, Result};
use crate::events::{now, Publisher, Timestamp};
use crate::io::{self, IoPaths, IoState};
use crate::metrics::{self, CgroupMode};
use crate::reaper::Reaper;
use crate::rootfs;

/// The pod every container of this shim runs in.
type DynPod = Arc<dyn Pod>;

/// How long a process' pty output may keep draining after it exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

#[derive(Default)]
struct ProcState {
    pid: i32,
    started: bool,
    exit: Option<(u32, Timestamp)>,
}

/// One process containerd knows: a container's init or an exec.
struct Proc {
    /// "" for the init process.
    exec_id: String,
    paths: IoPaths,
    /// What an exec runs (None for init).
    spec: Option<OciProcess>,
    /// Held across a start and its start event; the waiter takes it before the exit event.
    life: Mutex<()>,
    st: Mutex<ProcState>,
    cv: Condvar,
    io: Mutex<IoState>,
}

impl Proc {
    fn new(exec_id: String, paths: IoPaths, spec: Option<OciProcess>) -> Arc<Self> {
        Arc::new(Self {
            exec_id,
            paths,
            spec,
            life: Mutex::new(()),
            st: Mutex::new(ProcState::default()),
            cv: Condvar::new(),
            io: Mutex::new(IoState::default()),
        })
    }

    fn exited(&self) -> Option<(u32, Timestamp)> {
        self.st.lock().exit.clone()
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    /// Rootfs we mounted from containerd's mounts (unmounted on delete).
    mounted_rootfs: Option<PathBuf>,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    /// Restored from a checkpoint: its init runs already (`Start` only reports it).
    restored: bool,
}

/// The shim's pod, once its first container chose it.
struct PodSlot {
    pod: DynPod,
    /// What the `delete` verb needs after a dead shim.
    record: BundleState,
}

/// The task service of one shim (one pod).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    events: Publisher,
    reaper: Arc<Reaper>,
    exit: Arc<ExitSignal>,
    pod: Mutex<Option<PodSlot>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    cgroups: CgroupMode,
    /// Held around `Containers::start`: libcontainer chdirs (process-wide) into the
    /// container's dir to reach its notify socket, so two starts must not overlap.
    cwd: Mutex<()>,
    /// OOM kills already published, per container.
    ooms: Mutex<HashMap<String, u64>>,
}

/// Name of the file in a bundle recording where its container's state lives, for the
/// `delete` verb that cleans up after a dead shim.
pub const BUNDLE_STATE_FILE: &str = "hull-shim.json";

/// What the `delete` verb needs to find a container after its shim died.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BundleState {
    /// The sandbox state root.
    pub root: PathBuf,
    /// Whether cgroups are managed through systemd.
    pub systemd_cgroup: bool,
    /// The pod's VM directory (vm mode): what is mounted under it goes with the container.
    #[serde(default)]
    pub vm_dir: Option<PathBuf>,
}

impl Service {
    /// A service publishing events to containerd's ttrpc `events_address`.
    pub fn new(namespace: &str, events_address: String, exit: Arc<ExitSignal>) -> Self {
        hull_container::spawn::remember_cwd();
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                events: Publisher::start(events_address, namespace.to_string()),
                reaper: Reaper::start(),
                exit,
                pod: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
                cgroups: metrics::cgroup_mode(),
                cwd: Mutex::new(()),
                ooms: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.inner
            .containers
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))
    }

    fn sandbox(&self) -> Result<DynPod> {
        self.inner
            .pod
            .lock()
            .as_ref()
            .map(|p| Arc::clone(&p.pod))
            .ok_or_else(|| {
                Error::FailedPrecondition("no container was created in this shim".into())
            })
    }

    /// The process `exec_id` of container `c` ("" = init).
    fn process(c: &Container, exec_id: &str) -> Result<Arc<Proc>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&c.init));
        }
        c.execs
            .lock()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::ExecNotFound {
                id: c.id.clone(),
                exec: exec_id.to_string(),
            })
    }

    /// The shim's pod: the first container (the pod's sandbox container under CRI) chooses
    /// its isolation from its annotation and config, and starts it; later containers join it.
    /// `start`: start the pod (not for a restore, which starts it from its checkpoint).
    fn pod_for(
        &self,
        id: &str,
        bundle: &Path,
        config: &Config,
        start: bool,
    ) -> Result<(DynPod, BundleState)> {
        let mut slot = self.inner.pod.lock();
        if let Some(p) = slot.as_ref() {
            return Ok((Arc::clone(&p.pod), p.record.clone()));
        }
        // The annotation alone (a JSON value, not the whole spec: spec parsing would stay
        // resident in every shim; the pod and the spawn helper read the spec themselves).
        let annotation = annotation(bundle, ISOLATION_ANNOTATION);
        let isolation = config
            .isolation_for(annotation.as_deref())
            .map_err(hull_runtime::Error::from)?;
        let root = config.shim_root(&self.inner.namespace);
        let (pod, vm_dir): (DynPod, _) = match isolation {
            Isolation::Vm => {
                let vm = VmPod::new(&root, id, config.vm.clone());
                let dir = vm.vm_dir().to_path_buf();
                (Arc::new(vm), Some(dir))
            }
            // libcontainer's clones must not run in this many-threaded process.
            Isolation::Host => (
                Arc::new(
                    HostPod::new(&root, config.shim.systemd_cgroup).with_spawner(Spawner::Helper),
                ),
                None,
            ),
        };
        info!(pod = %id, ?isolation, root = %root.display(), "starting the pod");
        if start {
            let _gate = self.inner.reaper.spawning();
            let started = pod.start_pod(bundle);
            for h in pod.helper_pids() {
                self.inner.reaper.claim(h);
            }
            started?;
        }
        let record = BundleState {
            root,
            systemd_cgroup: config.shim.systemd_cgroup,
            vm_dir,
        };
        *slot = Some(PodSlot {
            pod: Arc::clone(&pod),
            record: record.clone(),
        });
        Ok((pod, record))
    }

    /// Stops the pod (its last container is gone, or its first did not come up).
    fn stop_pod(&self) -> Result<()> {
        let slot = self.inner.pod.lock().take();
        if let Some(p) = slot {
            let _gate = self.inner.reaper.spawning();
            p.pod.stop_pod()?;
        }
        Ok(())
    }

    /// Wait for `pid` in its own thread; record and publish its exit.
    fn spawn_waiter(&self, sandbox: DynPod, cid: String, p: Arc<Proc>, pid: i32) {
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let status = match sandbox.wait(&cid, pid) {
                    Ok(s) => s.code() as u32,
                    Err(e) => {
                        warn!(container = %cid, pid, "wait: {}", hull_runtime::error::chain(&e));
                        255
                    }
                };
                // An OOM kill is published before the exit it caused, as runc's shim does.
                if let Ok(now) = sandbox.oom_kills(&cid) {
                    let mut seen = inner.ooms.lock();
                    let before = seen.entry(cid.clone()).or_insert(0);
                    if now > *before {
                        info!(container = %cid, pid, kills = now - *before, "oom");
                        *before = now;
                        inner.events.oom(&cid);
                    }
                }
                inner.reaper.release(pid);
                p.io.lock().finish(OUTPUT_DRAIN);
                let _life = p.life.lock();
                let at = now();
                p.st.lock().exit = Some((status, at.clone()));
                p.cv.notify_all();
                let exec = if p.exec_id.is_empty() {
                    &cid
                } else {
                    &p.exec_id
                };
                info!(container = %cid, exec = %p.exec_id, pid, status, "exited");
                inner.events.exit(&cid, exec, pid as u32, status, &at);
            });
        if let Err(e) = spawned {
            warn!(pid, "cannot start a waiter thread: {e}");
        }
    }

    /// containerd's checkpoint (`ctr task checkpoint`, `ctr c checkpoint --task`): into the
    /// options' image path, else the request's; the task runs on unless the options say
    /// `exit` (a vm pod is saved whole, and then its VM stops: every task of it exits).
    fn do_checkpoint(&self, req: CheckpointTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let sandbox = self.sandbox()?;
        let opts = crate::config::checkpoint_options(req.options.as_ref());
        let dir = opts
            .image_path
            .clone()
            .or_else(|| (!req.path.is_empty()).then(|| PathBuf::from(&req.path)))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("checkpoint of container {}: no path", c.id))
            })?;
        info!(container = %c.id, dir = %dir.display(), exit = opts.exit, "checkpoint");
        sandbox.checkpoint(&c.id, &dir, !opts.exit)?;
        Ok(())
    }

    fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        if self.inner.containers.lock().contains_key(&id) {
            return Err(Error::AlreadyExists(format!("container {id}")));
        }
        let restore = (!req.checkpoint.is_empty()).then(|| PathBuf::from(&req.checkpoint));
        let (config, _) = crate::config::for_task(req.options.as_ref())?;
        let bundle = PathBuf::from(&req.bundle);
        let first = self.inner.containers.lock().is_empty();
        if restore.is_some() && !first {
            return Err(Error::FailedPrecondition(format!(
                "container {id}: a checkpoint restores a whole pod, not a container into one"
            )));
        }
        let (sandbox, record) = self.pod_for(&id, &bundle, &config, restore.is_none())?;
        let created = self.create_in(&sandbox, &record, id.clone(), bundle, &req);
        if created.is_err() && first && self.inner.containers.lock().is_empty() {
            // Nothing of a pod whose first container did not come up stays (its VM).
            let _ = self.stop_pod();
        }
        created
    }

    fn create_in(
        &self,
        sandbox: &DynPod,
        record: &BundleState,
        id: String,
        bundle: PathBuf,
        req: &CreateTaskRequest,
    ) -> Result<CreateTaskResponse> {
        let state_file = bundle.join(BUNDLE_STATE_FILE);
        std::fs::write(&state_file, serde_json::to_vec(record).unwrap_or_default())
            .map_err(|e| Error::io(state_file.display(), e))?;

        let mounted_rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let target = bundle.join("rootfs");
            rootfs::mount(&id, &req.rootfs, &target)?;
            Some(target)
        };
        let undo = |e: Error| {
            if let Some(t) = &mounted_rootfs {
                rootfs::unmount(&id, t);
            }
            e
        };
        let paths = IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let prepared = io::prepare(&paths).map_err(undo)?;
        let console_socket = prepared.console.as_ref().map(|c| c.path().to_path_buf());
        let pid = {
            // A host pod's pid is a child of this shim (the helper exits), a vm pod's is the
            // guest's: both are claimed so that only their waiter reaps them.
            let _gate = self.inner.reaper.spawning();
            let opts = CreateOptions {
                id: id.clone(),
                bundle: bundle.clone(),
                console_socket,
                detach: true,
                stdio: prepared.stdio,
                ..Default::default()
            };
            let created = match &req.checkpoint {
                c if c.is_empty() => sandbox.create(opts),
                c => sandbox.restore(Path::new(c), opts),
            };
            for h in sandbox.helper_pids() {
                self.inner.reaper.claim(h);
            }
            let pid = created.map_err(|e| undo(e.into()))?;
            self.inner.reaper.claim(pid);
            pid
        };
        let init = Proc::new(String::new(), paths.clone(), None);
        init.st.lock().pid = pid;
        let mut state = prepared.state;
        if let Some(receiver) = &prepared.console {
            if let Err(e) = state.attach_console(receiver, &paths) {
                let _gate = self.inner.reaper.spawning();
                let _ = sandbox.delete(&id, true);
                drop(_gate);
                self.spawn_waiter(Arc::clone(sandbox), id.clone(), Arc::clone(&init), pid);
                return Err(undo(e));
            }
        }
        *init.io.lock() = state;
        let c = Arc::new(Container {
            id: id.clone(),
            bundle,
            mounted_rootfs,
            init: Arc::clone(&init),
            execs: Mutex::new(HashMap::new()),
            restored: !req.checkpoint.is_empty(),
        });
        self.inner.containers.lock().insert(id.clone(), c);
        self.spawn_waiter(Arc::clone(sandbox), id.clone(), init, pid);
        self.inner.events.create(&id, &req.bundle, pid as u32);
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
        let c = self.container(&req.id)?;
        let sandbox = self.sandbox()?;
        let p = Self::process(&c, &req.exec_id)?;
        let _life = p.life.lock();
        {
            let st = p.st.lock();
            if st.started || st.exit.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "process {} of container {} was started already",
                    if p.exec_id.is_empty() {
                        &c.id
                    } else {
                        &p.exec_id
                    },
                    c.id
                )));
            }
        }
        if p.exec_id.is_empty() {
            if !c.restored {
                let _cwd = self.inner.cwd.lock();
                let _gate = self.inner.reaper.spawning();
                sandbox.start(&c.id)?;
            } else if sandbox.state(&c.id)?.status == Status::Paused {
                // containerd pauses a task around its checkpoint: the restored one runs.
                sandbox.resume(&c.id)?;
            }
            let pid = {
                let mut st = p.st.lock();
                st.started = true;
                st.pid
            };
            self.inner.events.start_task(&c.id, pid as u32);
            return Ok(StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        if c.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is stopped: cannot exec {} in it",
                c.id, p.exec_id
            )));
        }
        let prepared = io::prepare(&p.paths)?;
        let console_socket = prepared.console.as_ref().map(|c| c.path().to_path_buf());
        let pid = {
            let _gate = self.inner.reaper.spawning();
            let pid = sandbox.exec(
                &c.id,
                ExecOptions {
                    process: p.spec.clone().unwrap_or_default(),
                    console_socket,
                    detach: true,
                    stdio: prepared.stdio,
                    ..Default::default()
                },
            )?;
            self.inner.reaper.claim(pid);
            pid
        };
        let mut state = prepared.state;
        let attached = match &prepared.console {
            Some(receiver) => state.attach_console(receiver, &p.paths),
            None => Ok(()),
        };
        *p.io.lock() = state;
        {
            let mut st = p.st.lock();
            st.pid = pid;
            st.started = true;
        }
        self.spawn_waiter(sandbox.clone(), c.id.clone(), Arc::clone(&p), pid);
        if let Err(e) = attached {
            let _ = sandbox.signal(&c.id, pid, Sig::KILL);
            return Err(e);
        }
        info!(container = %c.id, exec = %p.exec_id, pid, "exec started");
        self.inner
            .events
            .exec_started(&c.id, &p.exec_id, pid as u32);
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn do_state(&self, req: StateRequest) -> Result<StateResponse> {
        let c = self.container(&req.id)?;
        let p = Self::process(&c, &req.exec_id)?;
        let (pid, started, exit) = {
            let st = p.st.lock();
            (st.pid, st.started, st.exit.clone())
        };
        let status = match (&exit, started) {
            (Some(_), _) => TaskStatus::STOPPED,
            (None, false) => TaskStatus::CREATED,
            (None, true) if p.exec_id.is_empty() => match self.sandbox()?.state(&c.id) {
                Ok(s) => match s.status {
                    Status::Creating | Status::Created => TaskStatus::CREATED,
                    Status::Running => TaskStatus::RUNNING,
                    Status::Paused => TaskStatus::PAUSED,
                    Status::Stopped => TaskStatus::STOPPED,
                    Status::Unknown => TaskStatus::UNKNOWN,
                },
                Err(e) => {
                    warn!(container = %c.id, "state: {}", hull_runtime::error::chain(&e));
                    TaskStatus::UNKNOWN
                }
            },
            (None, true) => TaskStatus::RUNNING,
        };
        let (exit_status, exited_at) = match exit {
            Some((s, at)) => (s, Some(at)),
            None => (0, None),
        };
        Ok(StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: pid as u32,
            status: EnumOrUnknown::new(status),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: p.exec_id.clone(),
            ..Default::default()
        })
    }

    fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let c = self.container(&req.id)?;
        let p = Self::process(&c, &req.exec_id)?;
        let (pid, started, exit) = {
            let st = p.st.lock();
            (st.pid, st.started, st.exit.clone())
        };
        if !p.exec_id.is_empty() {
            if started && exit.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} of container {} is running: kill it before delete",
                    p.exec_id, c.id
                )));
            }
            c.execs.lock().remove(&p.exec_id);
            let (status, at) = exit.unwrap_or((0, now()));
            return Ok(DeleteResponse {
                pid: pid as u32,
                exit_status: status,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }
        if started && exit.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is running: kill it before delete",
                c.id
            )));
        }
        let sandbox = self.sandbox()?;
        let last = self.inner.containers.lock().len() == 1;
        if last {
            // The pod's last container: stopping the pod removes it (and a vm pod's VM).
            self.stop_pod()?;
        } else {
            let _gate = self.inner.reaper.spawning();
            match sandbox.delete(&c.id, true) {
                Ok(()) => {}
                Err(e) if e.kind() == hull_container::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        // A created container's init was killed by the delete: let its waiter record it.
        let (status, at) = {
            let mut st = p.st.lock();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while st.exit.is_none() && std::time::Instant::now() < deadline {
                p.cv.wait_for(&mut st, Duration::from_millis(100));
            }
            st.exit.clone().unwrap_or((137, now()))
        };
        if let Some(t) = &c.mounted_rootfs {
            rootfs::unmount(&c.id, t);
        }
        let _ = std::fs::remove_file(c.bundle.join(BUNDLE_STATE_FILE));
        self.inner.containers.lock().remove(&c.id);
        self.inner.ooms.lock().remove(&c.id);
        info!(container = %c.id, status, "deleted");
        self.inner.events.delete(&c.id, pid as u32, status, &at);
        Ok(DeleteResponse {
            pid: pid as u32,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    fn do_kill(&self, req: KillRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let sig = signal_of(req.signal)?;
        let p = Self::process(&c, &req.exec_id)?;
        let sandbox = self.sandbox()?;
        let (pid, started, exited) = {
            let st = p.st.lock();
            (st.pid, st.started, st.exit.is_some())
        };
        let _gate = self.inner.reaper.spawning();
        if p.exec_id.is_empty() {
            if req.all {
                return match sandbox.kill(&c.id, sig, true) {
                    Err(e) if !exited => Err(e.into()),
                    _ => Ok(()),
                };
            }
            if exited {
                return Err(Error::Finished {
                    id: c.id.clone(),
                    exec: c.id.clone(),
                });
            }
            sandbox.kill(&c.id, sig, false)?;
            return Ok(());
        }
        if exited {
            return Err(Error::Finished {
                id: c.id.clone(),
                exec: p.exec_id.clone(),
            });
        }
        if !started {
            return Err(Error::FailedPrecondition(format!(
                "exec {} of container {} is not started",
                p.exec_id, c.id
            )));
        }
        sandbox.signal(&c.id, pid, sig)?;
        Ok(())
    }

    fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "exec in container {}: an exec id is required",
                c.id
            )));
        }
        if c.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is stopped: cannot exec {} in it",
                c.id, req.exec_id
            )));
        }
        let spec: OciProcess = serde_json::from_slice(&req.spec.value).map_err(|e| {
            Error::InvalidArgument(format!(
                "exec {} in container {}: process spec: {e}",
                req.exec_id, c.id
            ))
        })?;
        let mut execs = c.execs.lock();
        if execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} in container {}",
                req.exec_id, c.id
            )));
        }
        let paths = IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        execs.insert(
            req.exec_id.clone(),
            Proc::new(req.exec_id.clone(), paths, Some(spec)),
        );
        drop(execs);
        self.inner.events.exec_added(&c.id, &req.exec_id);
        Ok(())
    }

    fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let c = self.container(&req.id)?;
        let p = Self::process(&c, &req.exec_id)?;
        let mut st = p.st.lock();
        while st.exit.is_none() {
            p.cv.wait(&mut st);
        }
        let (status, at) = st.exit.clone().unwrap_or((255, now()));
        Ok(WaitResponse {
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    fn do_update(&self, req: UpdateTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let resources: LinuxResources =
            serde_json::from_slice(&req.resources.value).map_err(|e| {
                Error::InvalidArgument(format!("update container {}: resources: {e}", c.id))
            })?;
        let _gate = self.inner.reaper.spawning();
        self.sandbox()?.update(&c.id, &resources)?;
        Ok(())
    }
}

/// A container annotation from its bundle's config.json (read before any config: the shim's
/// `start` verb groups a pod's containers by one).
pub fn annotation(bundle: &Path, key: &str) -> Option<String> {
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v.get("annotations")?.get(key)?.as_str().map(str::to_string)
}

fn reply<T>(what: &str, id: &str, r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        warn!(container = %id, "{what}: {e}");
        e.into()
    })
}

impl Task for Service {
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let id = req.id.clone();
        reply("state", &id, self.do_state(req))
    }

    fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let id = req.id.clone();
        reply("create", &id, self.do_create(req))
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let id = req.id.clone();
        reply("start", &id, self.do_start(req))
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let id = req.id.clone();
        reply("delete", &id, self.do_delete(req))
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let r = self.container(&req.id).and_then(|c| {
            let pids = self.sandbox()?.pids(&c.id)?;
            // Exec'd processes carry their exec id, as runc's shim reports them.
            let execs: HashMap<u32, String> = c
                .execs
                .lock()
                .values()
                .filter_map(|p| {
                    let st = p.st.lock();
                    (st.started && st.exit.is_none()).then(|| (st.pid as u32, p.exec_id.clone()))
                })
                .collect();
            let mut processes = Vec::with_capacity(pids.len());
            for pid in pids {
                let pid = pid as u32;
                let info = match execs.get(&pid) {
                    Some(exec_id) => {
                        let details = ProcessDetails {
                            exec_id: exec_id.clone(),
                            ..Default::default()
                        };
                        Some(crate::any::pack(&details).map_err(|e| {
                            Error::InvalidArgument(format!("encode process details: {e}"))
                        })?)
                    }
                    None => None,
                };
                processes.push(ProcessInfo {
                    pid,
                    info: info.into(),
                    ..Default::default()
                });
            }
            Ok(PidsResponse {
                processes,
                ..Default::default()
            })
        });
        reply("pids", &req.id, r)
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        let r = self.container(&req.id).and_then(|c| {
            self.sandbox()?.pause(&c.id)?;
            self.inner.events.paused(&c.id);
            Ok(Empty::new())
        });
        reply("pause", &req.id, r)
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        let r = self.container(&req.id).and_then(|c| {
            self.sandbox()?.resume(&c.id)?;
            self.inner.events.resumed(&c.id);
            Ok(Empty::new())
        });
        reply("resume", &req.id, r)
    }

    fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply(
            "checkpoint",
            &id,
            self.do_checkpoint(req).map(|_| Empty::new()),
        )
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply("kill", &id, self.do_kill(req).map(|_| Empty::new()))
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply("exec", &id, self.do_exec(req).map(|_| Empty::new()))
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let r = self.container(&req.id).and_then(|c| {
            let p = Self::process(&c, &req.exec_id)?;
            let io = p.io.lock();
            io.resize(req.width, req.height)?;
            Ok(Empty::new())
        });
        reply("resize pty", &req.id, r)
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let r = self.container(&req.id).and_then(|c| {
            let p = Self::process(&c, &req.exec_id)?;
            if req.stdin {
                p.io.lock().close_stdin();
            }
            Ok(Empty::new())
        });
        reply("close io", &req.id, r)
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        reply("update", &id, self.do_update(req).map(|_| Empty::new()))
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let id = req.id.clone();
        reply("wait", &id, self.do_wait(req))
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let r = self.container(&req.id).and_then(|c| {
            let stats = self.sandbox()?.stats(&c.id)?;
            Ok(StatsResponse {
                stats: Some(metrics::to_any(&stats, self.inner.cgroups)?).into(),
                ..Default::default()
            })
        });
        reply("stats", &req.id, r)
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let r = self.container(&req.id).map(|c| ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: c.init.st.lock().pid as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        });
        reply("connect", &req.id, r)
    }

    fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        let left = self.inner.containers.lock().len();
        if left == 0 {
            info!(container = %req.id, "last container gone: shim exits");
            self.inner.exit.signal();
        }
        Ok(Empty::new())
    }
}

/// A signal as containerd sends it: a number, 0 and the real-time ones too (Docker's and
/// systemd's `SIGRTMIN+3` is 37).
fn signal_of(n: u32) -> Result<Sig> {
    i32::try_from(n)
        .ok()
        .and_then(|n| Sig::try_from(n).ok())
        .ok_or_else(|| Error::InvalidArgument(format!("unknown signal {n}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_from_containerd_include_zero_and_real_time_ones() {
        assert_eq!(signal_of(15).unwrap(), Sig::TERM);
        assert_eq!(signal_of(0).unwrap().number(), 0);
        for n in 32..=64 {
            assert_eq!(signal_of(n).unwrap().number(), n as i32);
        }
        for bad in [65, 1000, u32::MAX] {
            assert!(
                matches!(signal_of(bad), Err(Error::InvalidArgument(m)) if m.contains(&bad.to_string())),
                "{bad}"
            );
        }
    }
}
