//! [`ServedContainer`]: the client side of a sandbox server, one vm container as the pod
//! seam's [`Containers`], so the CLI's verbs use it exactly as they use `HostPod`. Each call
//! is one connection to the server's socket; a server that is gone is a typed
//! [`CallError`], on which `state` and `delete` fall back to the container's record.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

use hull_runtime::error::{Error, Result};
use hull_runtime::pod::{
    ContainerState, Containers, CreateOptions, ExecOptions, ExitStatus, Sig, Stats,
};

use super::mirror;
use super::record::{self, ServerRecord};
use super::wire::{self, Answer, Call, Mirrored, Request};

/// How long a verb waits for an answer (a wait has no bound).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call to the sandbox server failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No server listens on the container's socket: it died, and the VM with it.
    #[error("container {id}: its sandbox server does not answer ({source}); the VM is gone")]
    NoServer {
        /// The container.
        id: String,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The server went away during the call, without an answer.
    #[error("container {id}: the sandbox server closed the connection")]
    Died {
        /// The container.
        id: String,
    },
    /// The exchange failed otherwise (a timeout, an answer that makes no sense).
    #[error("container {id}: sandbox server: {reason}")]
    Exchange {
        /// The container.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered with a failure.
    #[error(transparent)]
    Failed(Error),
}

impl CallError {
    /// Whether the server is gone (no server, or it died during the call).
    pub fn server_gone(&self) -> bool {
        matches!(self, CallError::NoServer { .. } | CallError::Died { .. })
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Failed(e) => e,
            e => Error::Vm(e.to_string()),
        }
    }
}

/// Calls the server with `$request` and takes the answer `$answer` to `$value`.
macro_rules! ask {
    ($self:ident, $request:expr, $answer:pat => $value:expr) => {
        match $self.call($request, &[], Some(CALL_TIMEOUT))? {
            $answer => Ok($value),
            other => Err($self.unexpected(other).into()),
        }
    };
}

/// The one vm container a sandbox server serves, as the pod seam's [`Containers`]. Any
/// other id is NotFound.
#[derive(Debug, Clone)]
pub struct ServedContainer {
    dir: PathBuf,
    id: String,
}

impl ServedContainer {
    /// The guest's serial console output so far, boot log included (`hull console --log`).
    pub fn console_log(&self, id: &str) -> Result<String> {
        self.check(id)?;
        ask!(self, Request::ConsoleLog, Answer::Text(t) => t)
    }

    /// The container `id` under the state root `root`.
    pub fn new(root: &Path, id: &str) -> Self {
        ServedContainer {
            dir: root.join(id),
            id: id.to_string(),
        }
    }

    /// `id` is the container served, or NotFound.
    fn check(&self, id: &str) -> Result<()> {
        if id == self.id {
            Ok(())
        } else {
            Err(Error::not_found(id))
        }
    }

    /// One call: `request` (with `fds` as SCM_RIGHTS), its answer within `timeout`.
    fn call(
        &self,
        request: Request,
        fds: &[RawFd],
        timeout: Option<Duration>,
    ) -> Result<Answer, CallError> {
        let id = || self.id.clone();
        let stream = UnixStream::connect(record::socket_path(&self.dir))
            .map_err(|source| CallError::NoServer { id: id(), source })?;
        let lost = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                CallError::Died { id: id() }
            }
            _ => CallError::Exchange {
                id: id(),
                reason: e.to_string(),
            },
        };
        stream.set_read_timeout(timeout).map_err(lost)?;
        let call = Call {
            container: self.id.clone(),
            request,
        };
        wire::send(&stream, &call, fds).map_err(lost)?;
        match wire::receive::<wire::Reply>(&stream).map_err(lost)? {
            None => Err(CallError::Died { id: id() }),
            Some((reply, _)) => reply.map_err(|f| CallError::Failed(f.into())),
        }
    }

    /// An answer that does not fit the request.
    fn unexpected(&self, answer: Answer) -> CallError {
        CallError::Exchange {
            id: self.id.clone(),
            reason: format!("unexpected answer {answer:?}"),
        }
    }

    /// The exit code of the process behind `mirror`, from the server (blocks).
    fn wait_code(&self, mirror: i32) -> Result<i32> {
        match self.call(Request::Wait { pid: mirror }, &[], None)? {
            Answer::Exited { code } => Ok(code),
            other => Err(self.unexpected(other).into()),
        }
    }

    /// Forks the mirror of `of` (a process of this container), registers it with the server
    /// and writes its pid to `pid_file`. Call while this process runs no other thread that
    /// holds a lock (see [`mirror::fork`]). Returns the mirror's pid.
    pub fn mirror(&self, of: Mirrored, pid_file: Option<&Path>) -> Result<i32> {
        let pid = mirror::fork(
            |mirror| ask!(self, Request::Register { mirror, of }, Answer::Done => ()),
            |mirror| self.wait_code(mirror).unwrap_or(mirror::LOST),
        )?;
        if let Some(p) = pid_file {
            std::fs::write(p, pid.to_string()).map_err(|e| Error::io(p, e))?;
        }
        Ok(pid)
    }

    /// Saves the pod into `image_path` (`hull checkpoint`); unless `leave_running`, the pod
    /// then stops and the container is gone.
    pub fn checkpoint(&self, id: &str, image_path: &Path, leave_running: bool) -> Result<()> {
        self.check(id)?;
        let request = Request::Checkpoint {
            image_path: image_path.to_path_buf(),
            leave_running,
        };
        match self.call(request, &[], None)? {
            Answer::Done if leave_running => Ok(()),
            Answer::Deleted if !leave_running => self.await_gone(),
            other => Err(self.unexpected(other).into()),
        }
    }

    /// After [`Answer::Deleted`]: the server removes the state dir as it exits; waits for
    /// that briefly, then cleans up what is left.
    fn await_gone(&self) -> Result<()> {
        for _ in 0..200 {
            if !self.dir.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        record::clean_up_dead(&self.dir)
    }

    /// The record of a server that no longer answers: the container is stopped.
    fn dead_state(&self) -> Result<ContainerState> {
        let r = ServerRecord::read(&self.dir).map_err(|_| Error::not_found(&self.id))?;
        Ok(r.dead_state(&self.id))
    }
}

impl Containers for ServedContainer {
    fn create(&self, _opts: CreateOptions) -> Result<i32> {
        Err(Error::invalid(
            "a vm container is created by its sandbox server",
        ))
    }

    fn start(&self, id: &str) -> Result<()> {
        self.check(id)?;
        ask!(self, Request::Start, Answer::Done => ())
    }

    fn state(&self, id: &str) -> Result<ContainerState> {
        self.check(id)?;
        match self.call(Request::State, &[], Some(CALL_TIMEOUT)) {
            Ok(Answer::State(s)) => Ok(*s),
            Ok(other) => Err(self.unexpected(other).into()),
            // The server answered: what it said stands.
            Err(CallError::Failed(e)) => Err(e),
            // No server, or none that answers: the VM is gone, the container stopped.
            Err(_) => self.dead_state(),
        }
    }

    fn list(&self) -> Result<Vec<ContainerState>> {
        self.state(&self.id).map(|s| vec![s])
    }

    fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32> {
        self.check(id)?;
        let fd = |f: &Option<OwnedFd>, n: RawFd| f.as_ref().map_or(n, |f| f.as_raw_fd());
        let fds = [
            fd(&opts.stdio.stdin, 0),
            fd(&opts.stdio.stdout, 1),
            fd(&opts.stdio.stderr, 2),
        ];
        let request = Request::Exec {
            process: Box::new(opts.process),
            console_socket: opts.console_socket,
            in_guest: opts.in_guest,
        };
        let guest_pid = match self.call(request, &fds, Some(CALL_TIMEOUT))? {
            Answer::Started { guest_pid } => guest_pid,
            other => return Err(self.unexpected(other).into()),
        };
        // The caller (conmon, a runc shim) reaps the pid it is given as a subreaper: the
        // mirror must descend from this process, not from the server.
        self.mirror(Mirrored::Exec { guest_pid }, opts.pid_file.as_deref())
    }

    fn kill(&self, id: &str, signal: Sig, all: bool) -> Result<()> {
        self.check(id)?;
        let signal = signal.number();
        ask!(self, Request::Kill { signal, all }, Answer::Done => ())
    }

    fn signal(&self, id: &str, pid: i32, signal: Sig) -> Result<()> {
        self.check(id)?;
        let signal = signal.number();
        ask!(self, Request::Signal { pid, signal }, Answer::Done => ())
    }

    fn wait(&self, id: &str, pid: i32) -> Result<ExitStatus> {
        self.check(id)?;
        self.wait_code(pid).map(ExitStatus::Code)
    }

    fn pids(&self, id: &str) -> Result<Vec<i32>> {
        self.check(id)?;
        ask!(self, Request::Pids, Answer::Pids(pids) => pids)
    }

    fn stats(&self, id: &str) -> Result<Stats> {
        self.check(id)?;
        ask!(self, Request::Stats, Answer::Stats(s) => *s)
    }

    fn pause(&self, id: &str) -> Result<()> {
        self.check(id)?;
        ask!(self, Request::Pause, Answer::Done => ())
    }

    fn resume(&self, id: &str) -> Result<()> {
        self.check(id)?;
        ask!(self, Request::Resume, Answer::Done => ())
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.check(id)?;
        let resources = Box::new(resources.clone());
        ask!(self, Request::Update { resources }, Answer::Done => ())
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        self.check(id)?;
        match self.call(Request::Delete { force }, &[], Some(CALL_TIMEOUT)) {
            Ok(Answer::Deleted) => self.await_gone(),
            Ok(other) => Err(self.unexpected(other).into()),
            // A dead server's container is stopped: deleting it is always allowed.
            Err(e) if e.server_gone() => record::clean_up_dead(&self.dir),
            Err(e) => Err(e.into()),
        }
    }

    fn oom_kills(&self, id: &str) -> Result<u64> {
        self.check(id)?;
        ask!(self, Request::OomKills, Answer::OomKills(n) => n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_not_found(r: Result<impl std::fmt::Debug>, id: &str) {
        match r {
            Err(Error::Container(hull_container::Error::NotFound(got))) => assert_eq!(got, id),
            other => panic!("not NotFound({id}): {other:?}"),
        }
    }

    #[test]
    fn another_id_is_not_found_and_never_reaches_the_server() {
        let root = tempfile::tempdir().unwrap();
        let c = ServedContainer::new(root.path(), "c1");
        is_not_found(c.state("c2"), "c2");
        is_not_found(c.start("c2"), "c2");
        is_not_found(c.kill("c2", Sig::TERM, false), "c2");
        is_not_found(c.signal("c2", 5, Sig::TERM), "c2");
        is_not_found(c.wait("c2", 5), "c2");
        is_not_found(c.pids("c2"), "c2");
        is_not_found(c.stats("c2"), "c2");
        is_not_found(c.pause("c2"), "c2");
        is_not_found(c.resume("c2"), "c2");
        is_not_found(c.update("c2", &LinuxResources::default()), "c2");
        is_not_found(c.delete("c2", true), "c2");
        is_not_found(c.oom_kills("c2"), "c2");
        is_not_found(c.exec("c2", ExecOptions::default()), "c2");
    }

    #[test]
    fn no_server_is_a_typed_error_that_state_and_delete_act_on() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c1");
        std::fs::create_dir(&dir).unwrap();
        ServerRecord {
            server_pid: 0,
            bundle: "/b".into(),
            created: "2024-01-01T00:00:00Z".into(),
            vm_dir: root.path().join("vm"),
            mirrors: Vec::new(),
        }
        .write(&dir)
        .unwrap();
        let c = ServedContainer::new(root.path(), "c1");
        let e = c.call(Request::Pids, &[], Some(CALL_TIMEOUT)).unwrap_err();
        assert!(e.server_gone(), "{e}");
        assert!(
            e.to_string()
                .starts_with("container c1: its sandbox server does not answer"),
            "{e}"
        );
        let st = c.state("c1").unwrap();
        assert_eq!(st.status, hull_runtime::pod::Status::Stopped);
        assert_eq!(st.pid, 0);
        c.delete("c1", false).unwrap();
        assert!(!dir.exists());
        // Gone for good: its state is NotFound now.
        is_not_found(c.state("c1"), "c1");
    }

    /// A stand-in server in `<root>/c1` for one call: `answer` makes its reply, or none.
    fn one_call(
        root: &Path,
        answer: impl FnOnce(Call) -> Option<wire::Reply> + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let dir = root.join("c1");
        std::fs::create_dir(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(record::socket_path(&dir)).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let (call, _) = wire::receive::<Call>(&s).unwrap().unwrap();
            if let Some(reply) = answer(call) {
                wire::send(&s, &reply, &[]).unwrap();
            }
        })
    }

    #[test]
    fn a_server_that_hangs_up_died() {
        let root = tempfile::tempdir().unwrap();
        let server = one_call(root.path(), |_| None);
        let c = ServedContainer::new(root.path(), "c1");
        let e = c.call(Request::Pids, &[], Some(CALL_TIMEOUT)).unwrap_err();
        server.join().unwrap();
        assert!(matches!(e, CallError::Died { .. }), "{e:?}");
    }

    #[test]
    fn a_failure_from_the_server_keeps_its_type() {
        let root = tempfile::tempdir().unwrap();
        let server = one_call(root.path(), |call| {
            Some(Err(
                (&hull_runtime::Error::not_found(&call.container)).into()
            ))
        });
        let c = ServedContainer::new(root.path(), "c1");
        is_not_found(c.pids("c1"), "c1");
        server.join().unwrap();
    }

    #[test]
    fn an_answer_that_does_not_fit_is_an_exchange_error() {
        let root = tempfile::tempdir().unwrap();
        let server = one_call(root.path(), |_| Some(Ok(Answer::OomKills(1))));
        let c = ServedContainer::new(root.path(), "c1");
        let e = c.pids("c1").unwrap_err();
        server.join().unwrap();
        assert!(e.to_string().contains("unexpected answer"), "{e}");
    }
}
