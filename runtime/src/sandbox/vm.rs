//! `VmSandbox`: the containers of one pod inside the pod's own VM.
//!
//! The first container boots the VM through a [`Hypervisor`] backend; the agent in the guest
//! (`hull-agent`) creates every container there. Root filesystems reach the guest through one
//! host directory shared at boot (`<vm dir>/shared`, virtio-9p tag `hullshare`, mounted by
//! the agent at `/run/hull/shared`): each container's rootfs, and the host files its spec
//! bind-mounts, are bind-mounted under it. Standard streams are relayed between the fds the
//! caller hands over and the agent's stream calls; a terminal is a host pty whose master goes
//! to the caller's console socket, relayed to the guest's pty (window size included). Pids are
//! the guest's. The last container deleted stops the VM.

use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxResources, Spec};

use super::host::{load_bundle_spec, validate_id};
use super::{ContainerState, CreateOptions, ExecOptions, ExitStatus, Sandbox, Stats, Status};
use crate::agent_client::{AgentClient, Storage};
use crate::config::VmSection;
use crate::error::{Error, Result};
use crate::hypervisor::{self, Hypervisor};

/// The 9p tag of the shared directory.
const SHARE_TAG: &str = "hullshare";
/// Where the agent mounts the shared directory (its allowed root).
const GUEST_SHARED: &str = "/run/hull/shared";
/// One stream read asks for at most this much.
const READ_CHUNK: usize = 64 * 1024;
/// How long output may keep draining after its process exited.
const DRAIN: Duration = Duration::from_secs(5);
/// Bound of one WaitProcess call (the wait loops; a dead VM is noticed between calls).
const WAIT_SLICE: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn vm_err(what: impl std::fmt::Display, e: impl std::error::Error + 'static) -> Error {
    Error::Vm(format!("{what}: {}", crate::error::chain(&e)))
}

/// One process of a container: the init ("" exec id) or an exec.
struct VmProc {
    exec_id: String,
    /// Output relays, joined (bounded) before the exit is reported.
    relays: Mutex<Vec<JoinHandle<()>>>,
    exit: Mutex<Option<i32>>,
    exited: Condvar,
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
    /// Host mounts under the shared dir, innermost last.
    mounts: Vec<PathBuf>,
    procs: HashMap<i32, Arc<VmProc>>,
}

struct Vm {
    hv: Box<dyn Hypervisor>,
    agent: AgentClient,
}

#[derive(Default)]
struct Inner {
    vm: Option<Vm>,
    containers: HashMap<String, VmContainer>,
    ooms: HashMap<String, u64>,
}

/// The containers of one pod in the pod's VM.
pub struct VmSandbox {
    root: PathBuf,
    dir: PathBuf,
    config: VmSection,
    inner: Arc<Mutex<Inner>>,
    exec_seq: AtomicU64,
}

impl std::fmt::Debug for VmSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmSandbox")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl VmSandbox {
    /// A sandbox named `sandbox_id` whose state lives under `root`; nothing runs until the
    /// first `create`.
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
        VmSandbox {
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
        lock(&self.inner).vm.as_ref().and_then(|v| v.hv.pid())
    }

    fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }

    fn agent(&self) -> Result<AgentClient> {
        let mut g = lock(&self.inner);
        let vm =
            g.vm.as_mut()
                .ok_or_else(|| Error::Vm("the pod's vm is not running".into()))?;
        vm.hv
            .check_running()
            .map_err(|e| vm_err("the pod's vm", e))?;
        Ok(vm.agent.clone())
    }

    /// Boots the VM for the first container (its spec's limits size the VM).
    fn boot(&self, spec: &Spec) -> Result<()> {
        if lock(&self.inner).vm.is_some() {
            return Ok(());
        }
        let mut cfg = self.config.vm_config(&self.dir.join("vm"))?;
        if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            if let Some(limit) = res.memory().as_ref().and_then(|m| m.limit()) {
                if limit > 0 {
                    cfg.memory_mib += (limit as u64).div_ceil(1 << 20) as u32;
                }
            }
            if let Some(cpu) = res.cpu() {
                if let (Some(q), Some(p)) = (cpu.quota(), cpu.period()) {
                    if q > 0 && p > 0 {
                        cfg.vcpus = cfg.vcpus.max((q as u64).div_ceil(p) as u32);
                    }
                }
            }
        }
        let shared = self.shared();
        fs::create_dir_all(&shared).map_err(|e| Error::io(&shared, e))?;
        cfg.shares.push(hypervisor::Share {
            host_dir: shared.clone(),
            tag: SHARE_TAG.into(),
        });
        let backend = self.config.backend()?;
        let kernel = cfg.kernel.clone();
        let mut hv = hypervisor::select(backend, cfg).map_err(|e| vm_err("vm", e))?;
        let booted = hv.boot().map_err(|e| {
            vm_err(
                format!("boot the pod's vm (kernel {})", kernel.display()),
                e,
            )
        })?;
        tracing::info!(backend = hv.backend(), boot = ?booted.boot_time, dir = %self.dir.display(), "vm up");
        let storage = Storage {
            source: SHARE_TAG.into(),
            fstype: "9p".into(),
            options: vec![
                "trans=virtio".into(),
                "version=9p2000.L".into(),
                "msize=262144".into(),
                "cache=mmap".into(),
            ],
            mount_point: GUEST_SHARED.into(),
            ..Default::default()
        };
        let hostname = spec.hostname().clone().unwrap_or_else(|| "hull".into());
        if let Err(e) = booted
            .agent
            .setup_sandbox("pod", &hostname, &[], vec![storage])
        {
            let _ = hv.stop();
            return Err(vm_err("set up the pod in the vm", e));
        }
        self.watch_ooms(booted.agent.clone());
        lock(&self.inner).vm = Some(Vm {
            hv,
            agent: booted.agent,
        });
        Ok(())
    }

    /// Counts OOM kills the agent reports, per container.
    fn watch_ooms(&self, agent: AgentClient) {
        let inner = Arc::downgrade(&self.inner);
        let _ = std::thread::Builder::new()
            .name("vm-oom".into())
            .spawn(move || loop {
                let r = agent.get_oom_event(Duration::from_secs(60));
                let Some(inner) = inner.upgrade() else { return };
                match r {
                    Ok(id) if !id.is_empty() => *lock(&inner).ooms.entry(id).or_insert(0) += 1,
                    Ok(_) => {}
                    Err(e) if e.is_timeout() => {}
                    Err(_) => {
                        if lock(&inner).vm.is_none() {
                            return;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            });
    }

    /// Stops the VM and removes its directory (the last container is gone).
    fn shut_down(&self) {
        let vm = lock(&self.inner).vm.take();
        if let Some(mut vm) = vm {
            let _ = vm.agent.destroy_sandbox("pod", false);
            if let Err(e) = vm.hv.stop() {
                tracing::warn!("stop the pod's vm: {e}");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(&self.root);
    }

    fn container_guard<'a>(
        g: &'a mut MutexGuard<'_, Inner>,
        id: &str,
    ) -> Result<&'a mut VmContainer> {
        g.containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    fn proc_of(&self, id: &str, pid: i32) -> Result<Arc<VmProc>> {
        let mut g = lock(&self.inner);
        let c = Self::container_guard(&mut g, id)?;
        c.procs.get(&pid).cloned().ok_or_else(|| {
            Error::InvalidInput(format!("container {id} has no process with pid {pid}"))
        })
    }

    /// Bind-mounts `src` at `dst` (created as a file or dir like `src`).
    fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<()> {
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

    fn unmount_all(mounts: &[PathBuf]) {
        for m in mounts.iter().rev() {
            if let Err(e) = umount2(m.as_path(), MntFlags::MNT_DETACH) {
                tracing::warn!(mount = %m.display(), "unmount: {e}");
            }
        }
    }

    /// The spec the guest gets: rootfs and bind sources moved into the shared dir, host
    /// namespace paths, hooks and host cgroup paths dropped. Returns the host mounts made.
    fn guest_spec(
        &self,
        id: &str,
        bundle: &Path,
        mut spec: Spec,
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
        let cdir = self.shared().join(id);
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
                        return Err(Error::InvalidInput(format!(
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
                // pod (CRI's way to share the pod's pid/ipc/uts/net namespaces) names that
                // container's namespace in the guest too: the pids we hand out are the
                // guest's. Other paths (a CNI netns on the host) mean nothing in the guest:
                // the container gets a namespace of its own there.
                let pod_pids: Vec<i32> = lock(&self.inner)
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

    /// Starts the relays between the caller's fds and the agent's streams of one process.
    fn relay(
        &self,
        agent: &AgentClient,
        id: &str,
        exec_id: &str,
        terminal: bool,
        console_socket: Option<&Path>,
        stdio: super::Stdio,
    ) -> Result<Arc<VmProc>> {
        let done = Arc::new(AtomicBool::new(false));
        let proc_ = Arc::new(VmProc {
            exec_id: exec_id.to_string(),
            relays: Mutex::new(Vec::new()),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            done: Arc::clone(&done),
        });
        let dup = |fd: Option<OwnedFd>, n: i32| -> Result<OwnedFd> {
            match fd {
                Some(f) => Ok(f),
                // SAFETY: fd n (0/1/2) is this process' own stdio, valid for the call.
                None => unsafe { BorrowedFd::borrow_raw(n) }
                    .try_clone_to_owned()
                    .map_err(|e| Error::io(format!("/proc/self/fd/{n}"), e)),
            }
        };
        let (input, output, errout) = if terminal {
            let Some(sock) = console_socket else {
                return Err(Error::InvalidInput(format!(
                    "container {id}: a terminal needs a console socket"
                )));
            };
            let pty = nix::pty::openpty(None, None).map_err(|e| Error::sys("openpty", e))?;
            make_raw(&pty.slave);
            send_fd(sock, &pty.master)?;
            let slave2 = pty
                .slave
                .try_clone()
                .map_err(|e| Error::io("pty slave", e))?;
            (pty.slave, slave2, None)
        } else {
            (
                dup(stdio.stdin, 0)?,
                dup(stdio.stdout, 1)?,
                Some(dup(stdio.stderr, 2)?),
            )
        };
        let mut relays = Vec::new();
        relays.push(spawn_output(agent.clone(), id, exec_id, output, false)?);
        if let Some(e) = errout {
            relays.push(spawn_output(agent.clone(), id, exec_id, e, true)?);
        }
        *lock(&proc_.relays) = relays;
        spawn_input(agent.clone(), id, exec_id, input, terminal, done)?;
        Ok(proc_)
    }
}

/// The pid of a `/proc/<pid>/ns/<type>` path.
fn proc_ns_pid(path: &Path) -> Option<i32> {
    let rest = path.strip_prefix("/proc").ok()?;
    let mut parts = rest.iter();
    let pid = parts.next()?.to_str()?.parse().ok()?;
    (parts.next()? == "ns" && parts.next().is_some() && parts.next().is_none()).then_some(pid)
}

/// Sets a host pty slave raw: the guest's pty does the line discipline.
fn make_raw(fd: &OwnedFd) {
    if let Ok(mut t) = nix::sys::termios::tcgetattr(fd) {
        nix::sys::termios::cfmakeraw(&mut t);
        let _ = nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &t);
    }
}

/// Sends `fd` over the unix socket at `path` (SCM_RIGHTS), as runc hands a pty master over.
fn send_fd(path: &Path, fd: &OwnedFd) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| Error::io(path, e))?;
    let fds = [fd.as_raw_fd()];
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| Error::sys(format!("send the pty master to {}", path.display()), e))?;
    Ok(())
}

/// Copies one output stream of a guest process into `to` until its end.
fn spawn_output(
    agent: AgentClient,
    id: &str,
    exec_id: &str,
    to: OwnedFd,
    stderr: bool,
) -> Result<JoinHandle<()>> {
    let (id, exec_id) = (id.to_string(), exec_id.to_string());
    std::thread::Builder::new()
        .name(if stderr { "vm-stderr" } else { "vm-stdout" }.into())
        .spawn(move || {
            let mut to = fs::File::from(to);
            loop {
                let r = if stderr {
                    agent.read_stderr(&id, &exec_id, READ_CHUNK)
                } else {
                    agent.read_stdout(&id, &exec_id, READ_CHUNK)
                };
                match r {
                    Ok(c) if c.eof => return,
                    Ok(c) => {
                        if !c.data.is_empty() && to.write_all(&c.data).is_err() {
                            // Nobody reads any more: keep draining so the guest never blocks.
                            continue;
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => {
                        tracing::debug!(container = %id, exec = %exec_id, "output relay ends: {e}");
                        return;
                    }
                }
            }
        })
        .map_err(|e| Error::io("spawn an output relay", e))
}

/// Copies the caller's input into the guest process; for a terminal, also passes window size
/// changes of the host pty on. Ends at EOF (closing the guest's stdin) or when `done`.
fn spawn_input(
    agent: AgentClient,
    id: &str,
    exec_id: &str,
    from: OwnedFd,
    terminal: bool,
    done: Arc<AtomicBool>,
) -> Result<()> {
    let (id, exec_id) = (id.to_string(), exec_id.to_string());
    std::thread::Builder::new()
        .name("vm-stdin".into())
        .spawn(move || {
            let mut from = fs::File::from(from);
            let mut size = (0u16, 0u16);
            let mut buf = vec![0u8; 16 * 1024];
            while !done.load(Ordering::SeqCst) {
                if terminal {
                    if let Some(ws) = winsize(&from) {
                        if ws != size && ws != (0, 0) {
                            size = ws;
                            let _ = agent.tty_win_resize(&id, &exec_id, ws.0 as u32, ws.1 as u32);
                        }
                    }
                }
                let mut pfd = libc::pollfd {
                    fd: from.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                let n = unsafe { libc::poll(&mut pfd, 1, 200) };
                if n == 0
                    || (n < 0
                        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR))
                {
                    continue;
                }
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut off = 0;
                        while off < n {
                            match agent.write_stdin(&id, &exec_id, &buf[off..n]) {
                                Ok(w) if w > 0 => off += w,
                                _ => return,
                            }
                        }
                    }
                }
            }
            if !done.load(Ordering::SeqCst) && !terminal {
                let _ = agent.close_stdin(&id, &exec_id);
            }
        })
        .map(|_| ())
        .map_err(|e| Error::io("spawn the input relay", e))
}

/// (rows, cols) of a terminal.
fn winsize(f: &fs::File) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the live local.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some((ws.ws_row, ws.ws_col))
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    fs::write(path, pid.to_string()).map_err(|e| Error::io(path, e))
}

impl Sandbox for VmSandbox {
    fn create(&self, opts: CreateOptions) -> Result<i32> {
        let id = opts.id.clone();
        validate_id(&id)?;
        let spec = load_bundle_spec(&opts.bundle)?;
        if lock(&self.inner).containers.contains_key(&id) {
            return Err(Error::AlreadyExists(id));
        }
        let first = lock(&self.inner).vm.is_none();
        if let Err(e) = self.boot(&spec) {
            // Nothing of a VM that did not come up stays: its dir, shares, sockets, logs.
            if first {
                self.shut_down();
            }
            return Err(e);
        }
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let annotations = spec.annotations().clone().unwrap_or_default();
        let mut mounts = Vec::new();
        let result = (|| -> Result<(i32, Arc<VmProc>)> {
            let (gspec, guest_rootfs) =
                self.guest_spec(&id, &opts.bundle, spec.clone(), &mut mounts)?;
            let json = serde_json::to_vec(&gspec)
                .map_err(|e| Error::InvalidInput(format!("container {id}: spec: {e}")))?;
            let agent = self.agent()?;
            let pid = agent
                .create_container(&id, &json, &guest_rootfs, Vec::new())
                .map_err(|e| vm_err(format!("create container {id} in the vm"), e))?
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
                Self::unmount_all(&mounts);
                let _ = fs::remove_dir_all(self.shared().join(&id));
                if first && lock(&self.inner).containers.is_empty() {
                    self.shut_down();
                }
                return Err(e);
            }
        };
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        let mut procs = HashMap::new();
        procs.insert(pid, proc_);
        lock(&self.inner).containers.insert(
            id.clone(),
            VmContainer {
                bundle: opts.bundle.clone(),
                rootfs: opts.bundle.join("rootfs"),
                created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                annotations,
                status: Status::Created,
                init_pid: pid,
                mounts,
                procs,
            },
        );
        tracing::info!(container = %id, pid, "created in the vm");
        Ok(pid)
    }

    fn start(&self, id: &str) -> Result<()> {
        {
            let mut g = lock(&self.inner);
            let c = Self::container_guard(&mut g, id)?;
            if c.status != Status::Created {
                return Err(Error::WrongStatus {
                    id: id.to_string(),
                    status: c.status.to_string(),
                    op: "start",
                });
            }
        }
        self.agent()?
            .start_container(id)
            .map_err(|e| vm_err(format!("start container {id} in the vm"), e))?;
        let mut g = lock(&self.inner);
        if let Some(c) = g.containers.get_mut(id) {
            if c.status == Status::Created {
                c.status = Status::Running;
            }
        }
        Ok(())
    }

    fn state(&self, id: &str) -> Result<ContainerState> {
        let vm_dead = {
            let mut g = lock(&self.inner);
            g.vm.as_mut().is_none_or(|v| v.hv.check_running().is_err())
        };
        let mut g = lock(&self.inner);
        let c = Self::container_guard(&mut g, id)?;
        if vm_dead {
            c.status = Status::Stopped;
        }
        Ok(ContainerState {
            oci_version: "1.2.0".into(),
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
        let ids: Vec<String> = lock(&self.inner).containers.keys().cloned().collect();
        ids.iter().map(|id| self.state(id)).collect()
    }

    fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32> {
        let status = self.state(id)?.status;
        if status != Status::Running {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status.to_string(),
                op: "exec",
            });
        }
        let agent = self.agent()?;
        let exec_id = format!("exec-{}", self.exec_seq.fetch_add(1, Ordering::SeqCst) + 1);
        let json = serde_json::to_vec(&opts.process)
            .map_err(|e| Error::InvalidInput(format!("exec in {id}: process: {e}")))?;
        let pid = agent
            .exec_process(id, &exec_id, &json)
            .map_err(|e| vm_err(format!("exec in container {id}"), e))? as i32;
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
        let mut g = lock(&self.inner);
        Self::container_guard(&mut g, id)?.procs.insert(pid, proc_);
        Ok(pid)
    }

    fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let status = self.state(id)?.status;
        if status == Status::Stopped && !all {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status.to_string(),
                op: "kill",
            });
        }
        self.agent()?
            .signal_process(id, "", signal as u32, all)
            .map_err(|e| vm_err(format!("signal {signal} to container {id}"), e))
    }

    fn signal(&self, id: &str, pid: i32, signal: Signal) -> Result<()> {
        let p = self.proc_of(id, pid)?;
        self.agent()?
            .signal_process(id, &p.exec_id, signal as u32, false)
            .map_err(|e| vm_err(format!("signal {signal} to pid {pid} of container {id}"), e))
    }

    fn wait(&self, id: &str, pid: i32) -> Result<ExitStatus> {
        let p = self.proc_of(id, pid)?;
        let code = loop {
            if let Some(code) = *lock(&p.exit) {
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
                    if let Some(code) = *lock(&p.exit) {
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
        let relays = std::mem::take(&mut *lock(&p.relays));
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
        *lock(&p.exit) = Some(code);
        p.exited.notify_all();
        {
            let mut g = lock(&self.inner);
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
        let mut s = Stats::default();
        if let Some(cpu) = r.cpu.as_ref() {
            s.cpu.usage.usage_total = cpu.usage_total_ns;
            s.cpu.usage.usage_user = cpu.usage_user_ns;
            s.cpu.usage.usage_kernel = cpu.usage_kernel_ns;
            s.cpu.throttling.throttled_periods = cpu.throttled_periods;
            s.cpu.throttling.throttled_time = cpu.throttled_time_ns;
        }
        if let Some(m) = r.memory.as_ref() {
            s.memory.memory.usage = m.usage_bytes;
            s.memory.memory.max_usage = m.max_usage_bytes;
            s.memory.memory.limit = m.limit_bytes;
            s.memory.memory.fail_count = m.fail_count;
            s.memory.cache = m.cache_bytes;
        }
        if let Some(p) = r.pids.as_ref() {
            s.pids.current = p.current;
            s.pids.limit = p.limit;
        }
        Ok(s)
    }

    fn pause(&self, id: &str) -> Result<()> {
        let status = self.state(id)?.status;
        if status != Status::Running {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status.to_string(),
                op: "pause",
            });
        }
        self.agent()?
            .pause_container(id)
            .map_err(|e| vm_err(format!("pause container {id}"), e))?;
        let mut g = lock(&self.inner);
        Self::container_guard(&mut g, id)?.status = Status::Paused;
        Ok(())
    }

    fn resume(&self, id: &str) -> Result<()> {
        let status = self.state(id)?.status;
        if status != Status::Paused {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status.to_string(),
                op: "resume",
            });
        }
        self.agent()?
            .resume_container(id)
            .map_err(|e| vm_err(format!("resume container {id}"), e))?;
        let mut g = lock(&self.inner);
        Self::container_guard(&mut g, id)?.status = Status::Running;
        Ok(())
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.state(id)?;
        let json = serde_json::to_vec(resources)
            .map_err(|e| Error::InvalidInput(format!("update {id}: {e}")))?;
        self.agent()?
            .update_container(id, &json)
            .map_err(|e| vm_err(format!("update container {id}"), e))
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        let status = self.state(id)?.status;
        if status != Status::Stopped && status != Status::Created && !force {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status.to_string(),
                op: "delete",
            });
        }
        let (c, last) = {
            let mut g = lock(&self.inner);
            let c = g.containers.remove(id);
            (c, g.containers.is_empty())
        };
        // The last container's delete stops the VM: removing it in the guest first (its
        // mounts, cgroup and state, ~50 ms under TCG) would be undone by the power-off.
        if !last {
            if let Ok(agent) = self.agent() {
                if let Err(e) = agent.remove_container(id) {
                    tracing::debug!(container = %id, "remove in the vm: {e}");
                }
            }
        }
        if let Some(c) = c {
            for p in c.procs.values() {
                p.done.store(true, Ordering::SeqCst);
            }
            Self::unmount_all(&c.mounts);
        }
        let _ = fs::remove_dir_all(self.shared().join(id));
        if lock(&self.inner).containers.is_empty() {
            self.shut_down();
        }
        Ok(())
    }

    fn oom_kills(&self, id: &str) -> Result<u64> {
        Ok(lock(&self.inner).ooms.get(id).copied().unwrap_or(0))
    }

    fn helper_pids(&self) -> Vec<i32> {
        self.vm_pid().map(|p| p as i32).into_iter().collect()
    }
}

impl Drop for VmSandbox {
    fn drop(&mut self) {
        let ids: Vec<String> = lock(&self.inner).containers.keys().cloned().collect();
        for id in ids {
            let _ = self.delete(&id, true);
        }
        if lock(&self.inner).vm.is_some() {
            self.shut_down();
        }
    }
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
