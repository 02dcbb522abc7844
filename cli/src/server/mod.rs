//! The CLI's sandbox server: what keeps a vm container's VM alive between the one-shot verbs
//! of Docker and Podman (`create`, `start`, `exec`, `kill`, `delete`, ...).
//!
//! `hull create` of a vm container starts `hull sandbox-server` detached. The server owns a
//! [`VmPod`] (the code the shim uses), creates the container with the stdio `create` was
//! given, and serves the [`Containers`] calls of later verbs on `<root>/<id>/sandbox.sock`, one
//! JSON request per connection (an exec's stdio fds ride along as SCM_RIGHTS).
//! [`RemoteSandbox`] is the client side: the CLI's verbs use it exactly as they use
//! `HostPod`.
//!
//! Callers of a runc-style runtime wait for the pid in `--pid-file` (containerd's runc shim
//! and conmon reap it as subreapers). The container's processes live in the guest, so for
//! each of them the server leaves a host *mirror*: an orphaned process that blocks on a pipe
//! and exits with the guest process' exit status when the server writes it (255 if the
//! server dies). Pids the CLI reports are the mirrors'.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use oci_spec::runtime::{LinuxResources, Process};
use serde::{Deserialize, Serialize};

use hull_runtime::config::VmSection;
use hull_runtime::error::{chain, Error, Result};
use hull_runtime::pod::{
    ContainerState, Containers, CreateOptions, ExecOptions, ExitStatus, Pod, Stats, Status, Stdio,
    VmPod,
};

/// The server's socket in the container's state dir.
pub const SOCKET: &str = "sandbox.sock";
/// What the server records about itself (for verbs that find it dead).
pub const RECORD: &str = "sandbox.json";
/// How long a verb waits for an answer (a wait has no bound).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A vm container's server, as recorded in its state dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The server's pid.
    pub server_pid: i32,
    /// The bundle.
    pub bundle: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The VM's directory (sockets, console log, shared dir).
    pub vm_dir: PathBuf,
    /// Mirror pids handed out, for `delete --force` after a server died.
    #[serde(default)]
    pub mirrors: Vec<i32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Start,
    State,
    Kill {
        signal: i32,
        all: bool,
    },
    Signal {
        pid: i32,
        signal: i32,
    },
    Exec {
        process: Box<Process>,
        console_socket: Option<PathBuf>,
    },
    /// A mirror (host pid) for the guest process `guest`, forked by the calling verb.
    Register {
        mirror: i32,
        guest: i32,
    },
    Wait {
        pid: i32,
    },
    Pids,
    Stats,
    OomKills,
    Pause,
    Resume,
    Update {
        resources: Box<LinuxResources>,
    },
    Delete {
        force: bool,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Response {
    error: Option<String>,
    #[serde(default)]
    value: serde_json::Value,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server's socket for the container state dir `dir`: in the dir, or (a unix socket
/// path has at most 108 bytes; Docker's state dirs are long) under /run/hull/sock.
pub fn socket_path(dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let p = dir.join(SOCKET);
    if p.as_os_str().len() < 100 {
        return p;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    PathBuf::from(format!("/run/hull/sock/{:016x}.sock", h.finish()))
}

/// Whether `<root>/<id>` is a vm container served by a sandbox server.
pub fn is_vm_container(root: &Path, id: &str) -> bool {
    hull_container::validate_id(id).is_ok() && root.join(id).join(RECORD).exists()
}

fn read_record(dir: &Path) -> Result<ServerRecord> {
    let path = dir.join(RECORD);
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}

fn write_record(dir: &Path, r: &ServerRecord) -> Result<()> {
    let path = dir.join(RECORD);
    let tmp = dir.join(".sandbox.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(r).unwrap_or_default())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// The [`Containers`] of one vm container, served by its sandbox server.
#[derive(Debug, Clone)]
pub struct RemoteSandbox {
    dir: PathBuf,
    id: String,
}

impl RemoteSandbox {
    /// The container `id` under the state root `root`.
    pub fn new(root: &Path, id: &str) -> Self {
        RemoteSandbox {
            dir: root.join(id),
            id: id.to_string(),
        }
    }

    fn call(&self, req: &Request, fds: &[RawFd], timeout: Option<Duration>) -> Result<Response> {
        let sock = socket_path(&self.dir);
        let stream = UnixStream::connect(&sock).map_err(|e| {
            Error::Vm(format!(
                "container {}: its sandbox server does not answer ({e}); the VM is gone",
                self.id
            ))
        })?;
        stream
            .set_read_timeout(timeout)
            .map_err(|e| Error::io(&sock, e))?;
        let mut line =
            serde_json::to_vec(req).map_err(|e| Error::invalid(format!("request: {e}")))?;
        line.push(b'\n');
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        let mut sent = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&line)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| Error::sys(format!("send to the sandbox server of {}", self.id), e))?;
        while sent < line.len() {
            sent += (&stream)
                .write(&line[sent..])
                .map_err(|e| Error::io(&sock, e))?;
        }
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .map_err(|e| Error::io(&sock, e))?;
        if answer.is_empty() {
            return Err(Error::Vm(format!(
                "container {}: the sandbox server closed the connection",
                self.id
            )));
        }
        let r: Response = serde_json::from_str(&answer)
            .map_err(|e| Error::Vm(format!("sandbox server answer: {e}")))?;
        match r.error {
            Some(e) => Err(Error::Vm(e)),
            None => Ok(r),
        }
    }

    fn simple(&self, req: Request) -> Result<serde_json::Value> {
        self.call(&req, &[], Some(CALL_TIMEOUT)).map(|r| r.value)
    }

    fn value<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T> {
        serde_json::from_value(self.simple(req)?)
            .map_err(|e| Error::Vm(format!("sandbox server answer: {e}")))
    }

    /// The record of a server that no longer answers.
    fn dead_state(&self) -> Result<ContainerState> {
        let r = read_record(&self.dir).map_err(|_| Error::not_found(&self.id))?;
        Ok(ContainerState {
            oci_version: "1.2.0".into(),
            id: self.id.clone(),
            pid: 0,
            status: Status::Stopped,
            bundle: r.bundle.clone(),
            rootfs: r.bundle.join("rootfs"),
            created: r.created,
            owner: String::new(),
            annotations: Default::default(),
        })
    }

    /// Removes what a dead server left: mirrors, mounts under the VM dir, the state dir.
    fn clean_up_dead(&self) -> Result<()> {
        if let Ok(r) = read_record(&self.dir) {
            for pid in r.mirrors.iter().chain(std::iter::once(&r.server_pid)) {
                if *pid > 0 && pid_is(*pid, &["hull"]) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
                }
            }
            unmount_under(&r.vm_dir);
            let _ = std::fs::remove_dir_all(&r.vm_dir);
        }
        unmount_under(&self.dir);
        let _ = std::fs::remove_file(socket_path(&self.dir));
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

/// Whether `pid` runs one of `names` (so a recycled pid is never killed).
fn pid_is(pid: i32, names: &[&str]) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| names.iter().any(|n| c.trim().starts_with(n)))
        .unwrap_or(false)
}

/// Unmounts everything mounted under `dir` (deepest first).
fn unmount_under(dir: &Path) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

impl RemoteSandbox {
    /// Forks an orphaned mirror of guest process `guest` (call while single-threaded): it
    /// waits through the server and exits with the process' status (255 if the server
    /// goes away). Returns its pid once the server knows it.
    fn fork_mirror(&self, guest: i32) -> Result<i32> {
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("pipe for a mirror", e))?;
        let (pid_r, pid_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("pipe for a mirror", e))?;
        // SAFETY: this verb's process has one thread here (the CLI starts none before an
        // exec), so the children may run ordinary code.
        match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork a mirror", e))? {
            nix::unistd::ForkResult::Child => {
                drop(go_w);
                drop(pid_r);
                // SAFETY: as above.
                if let Ok(nix::unistd::ForkResult::Parent { child }) =
                    unsafe { nix::unistd::fork() }
                {
                    let _ = nix::unistd::write(&pid_w, &child.as_raw().to_ne_bytes());
                    // SAFETY: leave without running the parent's destructors or atexit.
                    unsafe { libc::_exit(0) };
                }
                drop(pid_w);
                // SAFETY: renames this (single-threaded) process.
                unsafe { libc::prctl(libc::PR_SET_NAME, c"hull-mirror".as_ptr()) };
                let null = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null");
                if let Ok(null) = null {
                    for fd in 0..3 {
                        // SAFETY: dup2 onto our own stdio from an fd we hold.
                        unsafe { libc::dup2(null.as_raw_fd(), fd) };
                    }
                }
                let mut b = [0u8; 1];
                let registered = matches!(nix::unistd::read(go_r.as_raw_fd(), &mut b), Ok(1));
                let me = std::process::id() as i32;
                let code = match registered {
                    true => self.wait(&self.id, me).map(|s| s.code()).unwrap_or(255),
                    false => 255,
                };
                // SAFETY: as above.
                unsafe { libc::_exit(code & 0xff) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(go_r);
                drop(pid_w);
                let _ = nix::sys::wait::waitpid(child, None);
                let mut buf = [0u8; 4];
                let n = nix::unistd::read(pid_r.as_raw_fd(), &mut buf)
                    .map_err(|e| Error::sys("mirror pid", e))?;
                let mirror = i32::from_ne_bytes(buf);
                if n != 4 || mirror <= 0 {
                    return Err(Error::Vm("the mirror process did not start".into()));
                }
                self.simple(Request::Register { mirror, guest })?;
                let _ = nix::unistd::write(&go_w, b"g");
                Ok(mirror)
            }
        }
    }
}

impl Containers for RemoteSandbox {
    fn create(&self, _opts: CreateOptions) -> Result<i32> {
        Err(Error::invalid(
            "a vm container is created by its sandbox server",
        ))
    }

    fn start(&self, _id: &str) -> Result<()> {
        self.simple(Request::Start).map(|_| ())
    }

    fn state(&self, _id: &str) -> Result<ContainerState> {
        match self.value(Request::State) {
            Ok(s) => Ok(s),
            Err(_) if self.dir.exists() => self.dead_state(),
            Err(e) => Err(e),
        }
    }

    fn list(&self) -> Result<Vec<ContainerState>> {
        self.state(&self.id).map(|s| vec![s])
    }

    fn exec(&self, _id: &str, opts: ExecOptions) -> Result<i32> {
        let fd = |f: &Option<OwnedFd>, n: RawFd| f.as_ref().map_or(n, |f| f.as_raw_fd());
        let fds = [
            fd(&opts.stdio.stdin, 0),
            fd(&opts.stdio.stdout, 1),
            fd(&opts.stdio.stderr, 2),
        ];
        let req = Request::Exec {
            process: Box::new(opts.process),
            console_socket: opts.console_socket,
        };
        let r = self.call(&req, &fds, Some(CALL_TIMEOUT))?;
        let guest: i32 =
            serde_json::from_value(r.value).map_err(|e| Error::Vm(format!("exec answer: {e}")))?;
        // The caller (conmon, a runc shim) reaps the pid it is given as a subreaper: the
        // mirror must descend from this process, not from the server.
        let mirror = self.fork_mirror(guest)?;
        if let Some(p) = &opts.pid_file {
            std::fs::write(p, mirror.to_string()).map_err(|e| Error::io(p, e))?;
        }
        Ok(mirror)
    }

    fn kill(&self, _id: &str, signal: Signal, all: bool) -> Result<()> {
        self.simple(Request::Kill {
            signal: signal as i32,
            all,
        })
        .map(|_| ())
    }

    fn signal(&self, _id: &str, pid: i32, signal: Signal) -> Result<()> {
        self.simple(Request::Signal {
            pid,
            signal: signal as i32,
        })
        .map(|_| ())
    }

    fn wait(&self, _id: &str, pid: i32) -> Result<ExitStatus> {
        let code: i32 = serde_json::from_value(self.call(&Request::Wait { pid }, &[], None)?.value)
            .map_err(|e| Error::Vm(format!("wait answer: {e}")))?;
        Ok(ExitStatus::Code(code))
    }

    fn pids(&self, _id: &str) -> Result<Vec<i32>> {
        self.value(Request::Pids)
    }

    fn stats(&self, _id: &str) -> Result<Stats> {
        self.value::<Stats>(Request::Stats)
    }

    fn pause(&self, _id: &str) -> Result<()> {
        self.simple(Request::Pause).map(|_| ())
    }

    fn resume(&self, _id: &str) -> Result<()> {
        self.simple(Request::Resume).map(|_| ())
    }

    fn update(&self, _id: &str, resources: &LinuxResources) -> Result<()> {
        self.simple(Request::Update {
            resources: Box::new(resources.clone()),
        })
        .map(|_| ())
    }

    fn delete(&self, _id: &str, force: bool) -> Result<()> {
        match self.simple(Request::Delete { force }) {
            Ok(_) => {
                // The server removes the state dir as it exits; wait for that briefly.
                for _ in 0..200 {
                    if !self.dir.exists() {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                self.clean_up_dead()
            }
            // A dead server's container is stopped: deleting it is always allowed.
            Err(e) if e.to_string().contains("does not answer") => self.clean_up_dead(),
            Err(e) => Err(e),
        }
    }

    fn oom_kills(&self, _id: &str) -> Result<u64> {
        self.value(Request::OomKills)
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// What `hull create` hands the server.
#[derive(Debug)]
pub struct ServerArgs {
    /// State root.
    pub root: PathBuf,
    /// Container id.
    pub id: String,
    /// Bundle.
    pub bundle: PathBuf,
    /// Where to write the init's (mirror) pid.
    pub pid_file: Option<PathBuf>,
    /// Console socket for a terminal.
    pub console_socket: Option<PathBuf>,
    /// The `[vm]` config.
    pub vm: VmSection,
    /// fd on which to report "ok" or the error, then close.
    pub ready_fd: RawFd,
}

/// A guest process and the pipe of its host mirror.
struct Mirror {
    guest_pid: i32,
    notify: Option<OwnedFd>,
    exit: Option<i32>,
}

struct Server {
    dir: PathBuf,
    id: String,
    vm: VmPod,
    /// By mirror (host) pid.
    procs: Mutex<HashMap<i32, Mirror>>,
    init: i32,
    exited: std::sync::Condvar,
}

/// Forks a mirror: an orphan (so the caller's subreaper adopts it) that exits with the
/// status written to its pipe. Returns its pid and the pipe's write end.
fn spawn_mirror() -> Result<(i32, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("pipe for a mirror", e))?;
    let (pr, pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("pipe for a mirror", e))?;
    let (r_fd, pw_fd) = (r.as_raw_fd(), pw.as_raw_fd());
    // SAFETY: between fork and _exit the children call only async-signal-safe functions
    // (fork, dup2, close_range, read, write, prctl, _exit) on fds that are valid here.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(Error::sys("fork a mirror", nix::Error::last()));
    }
    if child == 0 {
        // SAFETY: see above.
        unsafe {
            let grandchild = libc::fork();
            if grandchild == 0 {
                libc::prctl(libc::PR_SET_NAME, c"hull-mirror".as_ptr());
                libc::dup2(r_fd, 3);
                libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                let mut buf = [0u8; 4];
                let mut got = 0usize;
                while got < 4 {
                    let n = libc::read(3, buf.as_mut_ptr().add(got).cast(), 4 - got);
                    if n <= 0 {
                        libc::_exit(255);
                    }
                    got += n as usize;
                }
                libc::_exit(i32::from_ne_bytes(buf) & 0xff);
            }
            let bytes = grandchild.to_ne_bytes();
            libc::write(pw_fd, bytes.as_ptr().cast(), 4);
            libc::_exit(0);
        }
    }
    drop(r);
    drop(pw);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
    let mut buf = [0u8; 4];
    let n = nix::unistd::read(pr.as_raw_fd(), &mut buf).map_err(|e| Error::sys("mirror pid", e))?;
    let pid = i32::from_ne_bytes(buf);
    if n != 4 || pid <= 0 {
        return Err(Error::Vm("the mirror process did not start".into()));
    }
    Ok((pid, w))
}

fn notify_mirror(fd: &OwnedFd, code: i32) {
    let _ = nix::unistd::write(fd, &code.to_ne_bytes());
}

impl Server {
    /// Wait for the guest process behind `mirror` and pass its status on.
    fn watch(self: &Arc<Self>, mirror: i32) {
        let s = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name(format!("watch-{mirror}"))
            .spawn(move || {
                let guest = match lock(&s.procs).get(&mirror) {
                    Some(m) => m.guest_pid,
                    None => return,
                };
                let code = match s.vm.wait(&s.id, guest) {
                    Ok(st) => st.code(),
                    Err(e) => {
                        tracing::warn!(mirror, "wait: {}", chain(&e));
                        255
                    }
                };
                let mut procs = lock(&s.procs);
                if let Some(m) = procs.get_mut(&mirror) {
                    m.exit = Some(code);
                    if let Some(fd) = m.notify.take() {
                        notify_mirror(&fd, code);
                    }
                }
                drop(procs);
                s.exited.notify_all();
            });
    }

    fn guest_pid(&self, mirror: i32) -> Result<i32> {
        lock(&self.procs)
            .get(&mirror)
            .map(|m| m.guest_pid)
            .ok_or_else(|| Error::invalid(format!("container {} has no process {mirror}", self.id)))
    }

    fn add_mirror(&self, guest_pid: i32) -> Result<i32> {
        let (pid, notify) = spawn_mirror()?;
        lock(&self.procs).insert(
            pid,
            Mirror {
                guest_pid,
                notify: Some(notify),
                exit: None,
            },
        );
        self.remember_mirror(pid);
        Ok(pid)
    }

    /// Records a mirror for `delete --force` after a server death.
    fn remember_mirror(&self, pid: i32) {
        if let Ok(mut r) = read_record(&self.dir) {
            r.mirrors.push(pid);
            let _ = write_record(&self.dir, &r);
        }
    }

    fn handle(self: &Arc<Self>, req: Request, fds: Vec<OwnedFd>) -> Result<serde_json::Value> {
        let id = self.id.as_str();
        let v = |x: ()| serde_json::to_value(x).unwrap_or_default();
        match req {
            Request::Start => self.vm.start(id).map(v),
            Request::State => {
                let mut st = self.vm.state(id)?;
                st.pid = if st.status == Status::Stopped {
                    0
                } else {
                    self.init
                };
                Ok(serde_json::to_value(st).unwrap_or_default())
            }
            Request::Kill { signal, all } => {
                let sig = Signal::try_from(signal).map_err(|_| {
                    Error::from(hull_container::Error::UnknownSignal(signal.to_string()))
                })?;
                self.vm.kill(id, sig, all).map(v)
            }
            Request::Signal { pid, signal } => {
                let sig = Signal::try_from(signal).map_err(|_| {
                    Error::from(hull_container::Error::UnknownSignal(signal.to_string()))
                })?;
                self.vm.signal(id, self.guest_pid(pid)?, sig).map(v)
            }
            Request::Register { mirror, guest } => {
                lock(&self.procs).insert(
                    mirror,
                    Mirror {
                        guest_pid: guest,
                        notify: None,
                        exit: None,
                    },
                );
                self.remember_mirror(mirror);
                self.watch(mirror);
                Ok(serde_json::Value::Null)
            }
            Request::Exec {
                process,
                console_socket,
            } => {
                let mut fds = fds.into_iter();
                let stdio = Stdio {
                    stdin: fds.next(),
                    stdout: fds.next(),
                    stderr: fds.next(),
                };
                let guest = self.vm.exec(
                    id,
                    ExecOptions {
                        process: *process,
                        console_socket,
                        detach: true,
                        stdio,
                        ..Default::default()
                    },
                )?;
                Ok(serde_json::to_value(guest).unwrap_or_default())
            }
            Request::Wait { pid } => {
                let mut procs = lock(&self.procs);
                loop {
                    match procs.get(&pid) {
                        None => {
                            return Err(Error::invalid(format!(
                                "container {id} has no process {pid}"
                            )))
                        }
                        Some(Mirror {
                            exit: Some(code), ..
                        }) => return Ok(serde_json::to_value(*code).unwrap_or_default()),
                        Some(_) => {
                            procs = self.exited.wait(procs).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                }
            }
            Request::Pids => Ok(serde_json::to_value(self.vm.pids(id)?).unwrap_or_default()),
            Request::Stats => Ok(serde_json::to_value(self.vm.stats(id)?).unwrap_or_default()),
            Request::OomKills => {
                Ok(serde_json::to_value(self.vm.oom_kills(id)?).unwrap_or_default())
            }
            Request::Pause => self.vm.pause(id).map(v),
            Request::Resume => self.vm.resume(id).map(v),
            Request::Update { resources } => self.vm.update(id, &resources).map(v),
            Request::Delete { force } => {
                // The container is the pod: deleting it stops the pod's VM.
                let status = self.vm.state(id)?.status;
                if !force && !status.deletable() {
                    return Err(Error::wrong_status(id, status, "delete"));
                }
                self.vm.stop_pod().map(v)
            }
        }
    }

    fn serve(self: Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            let s = Arc::clone(&self);
            let _ = std::thread::Builder::new()
                .name("request".into())
                .spawn(move || s.connection(stream));
        }
    }

    fn connection(self: Arc<Self>, stream: UnixStream) {
        let (line, fds) = match read_request(&stream) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("bad request: {e}");
                return;
            }
        };
        let req: std::result::Result<Request, _> = serde_json::from_slice(&line);
        let (resp, deleted) = match req {
            Ok(req) => {
                let is_delete = matches!(req, Request::Delete { .. });
                match self.handle(req, fds) {
                    Ok(value) => (Response { error: None, value }, is_delete),
                    Err(e) => (
                        Response {
                            error: Some(chain(&e)),
                            value: serde_json::Value::Null,
                        },
                        false,
                    ),
                }
            }
            Err(e) => (
                Response {
                    error: Some(format!("bad request: {e}")),
                    value: serde_json::Value::Null,
                },
                false,
            ),
        };
        if deleted {
            // Leave nothing: mirrors of processes that never reported get an error status.
            for m in lock(&self.procs).values_mut() {
                if let Some(fd) = m.notify.take() {
                    notify_mirror(&fd, 137);
                }
            }
            let _ = std::fs::remove_file(socket_path(&self.dir));
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        let _ = (&stream).write_all(&out);
        if deleted {
            tracing::info!(container = %self.id, "deleted: sandbox server exits");
            std::process::exit(0);
        }
    }
}

/// Reads one request line and the fds sent with it.
fn read_request(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut fds = Vec::new();
    let n = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 3]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| Error::sys("receive a request", e))?;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(list) = c {
                    for fd in list {
                        // SAFETY: the kernel just installed these fds in our table for us.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        msg.bytes
    };
    buf.truncate(n);
    if !buf.ends_with(b"\n") {
        let mut rest = Vec::new();
        BufReader::new(stream)
            .read_until(b'\n', &mut rest)
            .map_err(|e| Error::io("request", e))?;
        buf.extend_from_slice(&rest);
    }
    Ok((buf, fds))
}

/// Reports the outcome of start-up on the ready fd.
fn report(fd: RawFd, msg: &str) {
    // SAFETY: the fd was handed to us by `hull create` for exactly this message.
    let f = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::unistd::write(&f, msg.as_bytes());
}

/// `hull sandbox-server`: create the container, report, then serve until it is deleted.
pub fn serve_main(a: ServerArgs) -> ! {
    // Nothing this process starts (QEMU, mirrors) may hold the ready pipe open.
    // SAFETY: F_SETFD on an fd handed to us; no memory is involved.
    unsafe { libc::fcntl(a.ready_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let dir = a.root.join(&a.id);
    match start_server(&a, &dir) {
        Ok((server, listener)) => {
            report(a.ready_fd, "ok\n");
            server.serve(listener);
            std::process::exit(0)
        }
        Err(e) => {
            let _ = std::fs::remove_file(socket_path(&dir));
            let _ = std::fs::remove_dir_all(&dir);
            report(a.ready_fd, &format!("{}\n", chain(&e)));
            std::process::exit(1)
        }
    }
}

fn start_server(a: &ServerArgs, dir: &Path) -> Result<(Arc<Server>, UnixListener)> {
    // Our stdio is the container's; this process keeps /dev/null and a log file.
    // SAFETY: dup(2) of this process' own stdio fds.
    let keep = |n: RawFd| -> Result<OwnedFd> {
        let fd = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            return Err(Error::sys("keep the container's stdio", nix::Error::last()));
        }
        // SAFETY: a new fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let stdio = Stdio {
        stdin: Some(keep(0)?),
        stdout: Some(keep(1)?),
        stderr: Some(keep(2)?),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .map_err(|e| Error::io(dir.join("server.log"), e))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("/dev/null", e))?;
    // SAFETY: dup2 onto this process' own stdio fds from fds we hold.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }

    let vm = VmPod::new(dir, &a.id, a.vm.clone());
    let record = ServerRecord {
        server_pid: std::process::id() as i32,
        bundle: a.bundle.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        vm_dir: vm.vm_dir().to_path_buf(),
        mirrors: Vec::new(),
    };
    write_record(dir, &record)?;
    let spec = hull_container::load_bundle_spec(&a.bundle)?;
    vm.start_pod(&spec)?;
    let guest = vm.create(CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        console_socket: a.console_socket.clone(),
        detach: true,
        stdio,
        ..Default::default()
    })?;
    let sock = socket_path(dir);
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|e| Error::io(&sock, e))?;
    let server = Arc::new(Server {
        dir: dir.to_path_buf(),
        id: a.id.clone(),
        vm,
        procs: Mutex::new(HashMap::new()),
        init: 0,
        exited: std::sync::Condvar::new(),
    });
    let mirror = server.add_mirror(guest)?;
    // `init` is fixed once the mirror exists.
    let server = {
        let mut s = Arc::try_unwrap(server).map_err(|_| Error::Vm("server in use".into()))?;
        s.init = mirror;
        Arc::new(s)
    };
    if let Some(p) = &a.pid_file {
        std::fs::write(p, mirror.to_string()).map_err(|e| Error::io(p, e))?;
    }
    server.watch(mirror);
    Ok((server, listener))
}
