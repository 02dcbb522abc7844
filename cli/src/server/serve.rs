//! The server side: `hull sandbox-server` starts the pod's VM, creates the container with
//! the stdio `create` gave it, reports on the ready fd, then answers one [`Call`] per
//! connection (a thread each) until the container is deleted, and exits.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use hull_runtime::config::VmSection;
use hull_runtime::error::{chain, Error, Result};
use hull_runtime::pod::{Containers, CreateOptions, ExecOptions, Pod, Sig, Status, Stdio, VmPod};

use super::mirror::{Mirrors, LOST};
use super::record::{self, ServerRecord};
use super::wire::{self, Answer, Call, Mirrored, Reply, Request};

/// The exit code of a process that had not exited when its container was deleted.
const KILLED: i32 = 137;
/// How long a deleted server lets the calls in flight (the waits it ended) answer.
const DRAIN: Duration = Duration::from_secs(2);

/// What `hull create` hands the server.
#[derive(Debug)]
pub struct ServerArgs {
    /// State root.
    pub root: PathBuf,
    /// Container id.
    pub id: String,
    /// Bundle.
    pub bundle: PathBuf,
    /// Console socket for a terminal.
    pub console_socket: Option<PathBuf>,
    /// The `[vm]` config.
    pub vm: VmSection,
    /// fd on which to report "ok" or the error, then close.
    pub ready_fd: RawFd,
    /// Start the pod from this checkpoint (`hull restore`) instead of booting and creating.
    pub restore: Option<PathBuf>,
}

/// One vm container's server: its pod and the mirrors of its processes.
struct Server {
    /// The container's state dir.
    dir: PathBuf,
    /// The container.
    id: String,
    vm: VmPod,
    /// The init's pid in the guest.
    init_guest_pid: i32,
    mirrors: Mirrors,
    /// Calls being answered.
    calls: InFlight,
}

/// `hull sandbox-server`: create the container, report, then serve until it is deleted.
pub fn serve_main(a: ServerArgs) -> ! {
    // Nothing this process starts (QEMU) may hold the ready pipe open.
    // SAFETY: F_SETFD on an fd handed to us; no memory is involved.
    unsafe { libc::fcntl(a.ready_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let dir = a.root.join(&a.id);
    match start(&a, &dir) {
        Ok((server, listener)) => {
            report(a.ready_fd, "ok\n");
            server.serve(listener);
            std::process::exit(0)
        }
        Err(e) => {
            let _ = record::remove_state(&dir);
            report(a.ready_fd, &format!("{}\n", chain(&e)));
            std::process::exit(1)
        }
    }
}

/// Reports the outcome of start-up on the ready fd.
fn report(fd: RawFd, msg: &str) {
    // SAFETY: the fd was handed to us by `hull create` for exactly this message.
    let f = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::unistd::write(&f, msg.as_bytes());
}

/// Keeps this process' fd `n` under a new number (close-on-exec).
fn keep(n: RawFd) -> Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) of this process' own fd.
    let fd = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(Error::sys("keep the container's stdio", nix::Error::last()));
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts the pod, creates the container and binds the socket.
fn start(a: &ServerArgs, dir: &Path) -> Result<(Arc<Server>, UnixListener)> {
    // Our stdio is the container's; this process keeps /dev/null and a log file.
    let stdio = Stdio {
        stdin: Some(keep(0)?),
        stdout: Some(keep(1)?),
        stderr: Some(keep(2)?),
    };
    let log_path = dir.join("server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
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
    ServerRecord {
        server_pid: std::process::id() as i32,
        bundle: a.bundle.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        vm_dir: vm.vm_dir().to_path_buf(),
        mirrors: Vec::new(),
    }
    .write(dir)?;
    let opts = CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        console_socket: a.console_socket.clone(),
        detach: true,
        stdio,
        ..Default::default()
    };
    let init_guest_pid = match &a.restore {
        Some(checkpoint) => vm.restore(checkpoint, opts)?,
        None => {
            vm.start_pod(&a.bundle)?;
            vm.create(opts)?
        }
    };
    let sock = record::socket_path(dir);
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|e| Error::io(&sock, e))?;
    let server = Arc::new(Server {
        dir: dir.to_path_buf(),
        id: a.id.clone(),
        vm,
        init_guest_pid,
        mirrors: Mirrors::default(),
        calls: InFlight::default(),
    });
    Ok((server, listener))
}

impl Server {
    /// Answers calls, a thread each, until the container is deleted (which exits).
    fn serve(self: Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            let s = Arc::clone(&self);
            let _ = std::thread::Builder::new()
                .name("call".into())
                .spawn(move || s.connection(stream));
        }
    }

    /// One connection: one call, one reply.
    fn connection(self: Arc<Self>, stream: UnixStream) {
        let _in_flight = self.calls.enter();
        let (call, fds) = match wire::receive::<Call>(&stream) {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(container = %self.id, "bad call: {e}");
                return;
            }
        };
        if let Err(f) = call.check(&self.id) {
            let _ = wire::send(&stream, &Reply::Err(f), &[]);
            return;
        }
        let reply: Reply = self.handle(call.request, fds).map_err(|e| (&e).into());
        let deleted = matches!(reply, Ok(Answer::Deleted));
        if deleted {
            let _ = record::remove_state(&self.dir);
        }
        let _ = wire::send(&stream, &reply, &[]);
        if deleted {
            // The waits it ended, and other calls in flight, answer first.
            self.calls.drain(1, DRAIN);
            tracing::info!(container = %self.id, "deleted: sandbox server exits");
            std::process::exit(0);
        }
    }

    fn no_process(&self, mirror: i32) -> Error {
        Error::invalid(format!("container {} has no process {mirror}", self.id))
    }

    /// Carries out one request.
    fn handle(self: &Arc<Self>, request: Request, fds: Vec<OwnedFd>) -> Result<Answer> {
        let id = self.id.as_str();
        let done = |()| Answer::Done;
        match request {
            Request::Start => self.vm.start(id).map(done),
            Request::State => {
                let mut st = self.vm.state(id)?;
                st.pid = match st.status {
                    Status::Stopped => 0,
                    _ => self.mirrors.init().unwrap_or(0),
                };
                Ok(Answer::State(Box::new(st)))
            }
            Request::Kill { signal, all } => self.vm.kill(id, to_signal(signal)?, all).map(done),
            Request::Signal { pid, signal } => {
                let guest = self
                    .mirrors
                    .guest_pid(pid)
                    .ok_or_else(|| self.no_process(pid))?;
                self.vm.signal(id, guest, to_signal(signal)?).map(done)
            }
            Request::ConsoleLog => self.vm.console_log().map(Answer::Text),
            Request::Exec {
                process,
                console_socket,
                in_guest,
            } => {
                let mut fds = fds.into_iter();
                let stdio = Stdio {
                    stdin: fds.next(),
                    stdout: fds.next(),
                    stderr: fds.next(),
                };
                let guest_pid = self.vm.exec(
                    id,
                    ExecOptions {
                        process: *process,
                        console_socket,
                        detach: true,
                        stdio,
                        in_guest,
                        ..Default::default()
                    },
                )?;
                Ok(Answer::Started { guest_pid })
            }
            Request::Register { mirror, of } => {
                let (guest_pid, init) = match of {
                    Mirrored::Init => (self.init_guest_pid, true),
                    Mirrored::Exec { guest_pid } => (guest_pid, false),
                };
                self.mirrors.register(mirror, guest_pid, init)?;
                // Listed for `delete --force` after a server death.
                if let Err(e) = ServerRecord::add_mirror(&self.dir, mirror) {
                    tracing::warn!(container = %id, mirror, "record the mirror: {}", chain(&e));
                }
                self.watch(mirror, guest_pid);
                self.watch_mirror(mirror, guest_pid, init);
                Ok(Answer::Done)
            }
            Request::Wait { pid } => self
                .mirrors
                .wait(pid)
                .map(|code| Answer::Exited { code })
                .ok_or_else(|| self.no_process(pid)),
            Request::Pids => self.vm.pids(id).map(Answer::Pids),
            Request::Stats => Ok(Answer::Stats(Box::new(self.vm.stats(id)?))),
            Request::OomKills => self.vm.oom_kills(id).map(Answer::OomKills),
            Request::Pause => self.vm.pause(id).map(done),
            Request::Resume => self.vm.resume(id).map(done),
            Request::Update { resources } => self.vm.update(id, &resources).map(done),
            Request::Checkpoint {
                image_path,
                leave_running,
            } => {
                self.vm.checkpoint(id, &image_path, leave_running)?;
                if leave_running {
                    return Ok(Answer::Done);
                }
                // Saved and stopped (runc's checkpoint without --leave-running): the
                // container is gone, as after a forced delete.
                self.mirrors.end_all(KILLED);
                self.vm.stop_pod()?;
                Ok(Answer::Deleted)
            }
            Request::Delete { force } => {
                // The container is the pod: deleting it stops the pod's VM.
                let status = self.vm.state(id)?.status;
                if !force && !status.deletable() {
                    return Err(Error::wrong_status(id, status, "delete"));
                }
                // Processes that have not reported end as killed, not as lost with the VM.
                self.mirrors.end_all(KILLED);
                self.vm.stop_pod()?;
                Ok(Answer::Deleted)
            }
        }
    }

    /// Watches (in a thread) the mirror process itself: it stands for guest process
    /// `guest_pid` on the host, so a mirror killed before that process ended (`kill -9` of the
    /// pid `state` shows) kills it too, as killing a host container's init ends it. Then the
    /// container's state says what is true (stopped), not running with a dead pid.
    fn watch_mirror(self: &Arc<Self>, mirror: i32, guest_pid: i32, init: bool) {
        let s = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("mirror-{mirror}"))
            .spawn(move || {
                if let Err(e) = super::mirror::wait_gone(mirror) {
                    tracing::debug!(container = %s.id, mirror, "cannot watch the mirror: {e}");
                }
                if s.mirrors.has_exited(mirror) {
                    return;
                }
                tracing::warn!(container = %s.id, mirror, guest_pid, "the mirror was killed: killing what it stands for");
                let kill = Sig::try_from(libc::SIGKILL).expect("SIGKILL");
                let done = if init {
                    s.vm.kill(&s.id, kill, true)
                } else {
                    s.vm.signal(&s.id, guest_pid, kill)
                };
                if let Err(e) = done {
                    tracing::warn!(container = %s.id, mirror, "kill after the mirror's death: {}", chain(&e));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(container = %self.id, mirror, "no thread to watch the mirror: {e}");
        }
    }

    /// Waits (in a thread) for the guest process behind `mirror` and hands its status on.
    fn watch(self: &Arc<Self>, mirror: i32, guest_pid: i32) {
        let s = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{mirror}"))
            .spawn(move || {
                let code = match s.vm.wait(&s.id, guest_pid) {
                    Ok(st) => st.code(),
                    Err(e) => {
                        tracing::warn!(container = %s.id, mirror, "wait: {}", chain(&e));
                        LOST
                    }
                };
                s.mirrors.exited(mirror, code);
            });
        if let Err(e) = spawned {
            tracing::warn!(container = %self.id, mirror, "no thread to wait: {e}");
            self.mirrors.exited(mirror, LOST);
        }
    }
}

/// A signal number from the wire.
fn to_signal(n: i32) -> Result<Sig> {
    Ok(Sig::try_from(n)?)
}

/// A count of the calls being answered, so that a deleted server exits after their answers.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    changed: Condvar,
}

impl InFlight {
    /// One more call, until the guard is dropped.
    fn enter(&self) -> Entered<'_> {
        *self.count.lock() += 1;
        Entered(self)
    }

    /// Blocks (at most `limit`) until no more than `keep` calls are in flight.
    fn drain(&self, keep: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut n = self.count.lock();
        while *n > keep {
            if self.changed.wait_until(&mut n, deadline).timed_out() {
                return;
            }
        }
    }
}

/// A call in flight (see [`InFlight`]).
struct Entered<'a>(&'a InFlight);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        *self.0.count.lock() -= 1;
        self.0.changed.notify_all();
    }
}
