//! The sandbox server's wire: one [`Call`] per connection, as a JSON line (an exec's stdio
//! fds ride along as SCM_RIGHTS), answered by one [`Reply`] line: the typed [`Answer`] or a
//! typed [`Failure`] that the client turns back into the error the server had.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use hull_runtime::error::{chain, ErrorKind};
use hull_runtime::pod::{ContainerState, Stats};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use oci_spec::runtime::{LinuxResources, Process};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// At most this many fds ride with one call (an exec's stdin, stdout, stderr).
const MAX_FDS: usize = 3;

/// One call: the container it is about (the server serves one) and what to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// The container id the caller means.
    pub container: String,
    /// What to do.
    pub request: Request,
}

impl Call {
    /// A server of `served` refuses a call about another container as that one's NotFound.
    pub fn check(&self, served: &str) -> Result<(), Failure> {
        if self.container == served {
            Ok(())
        } else {
            Err(Failure::NotFound {
                id: self.container.clone(),
            })
        }
    }
}

/// What a verb asks of the server; the comment names the [`Answer`] it gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Let the init run the user process. [`Answer::Done`]
    Start,
    /// The container's state. [`Answer::State`]
    State,
    /// A signal to the init, or to every process with `all`. [`Answer::Done`]
    Kill {
        /// Signal number.
        signal: i32,
        /// Every process of the container.
        all: bool,
    },
    /// A signal to one process, by its mirror's pid. [`Answer::Done`]
    Signal {
        /// The mirror's (host) pid.
        pid: i32,
        /// Signal number.
        signal: i32,
    },
    /// Another process in the container, its stdio the fds sent with the call.
    /// [`Answer::Started`]
    Exec {
        /// The process.
        process: Box<Process>,
        /// Where its pty master goes, for a terminal.
        console_socket: Option<PathBuf>,
        /// Run it in the pod's guest, outside the container (`hull console`).
        #[serde(default)]
        in_guest: bool,
    },
    /// The guest's serial console output so far (boot log included). [`Answer::Text`]
    ConsoleLog,
    /// A mirror the calling verb forked stands for a guest process. [`Answer::Done`]
    Register {
        /// The mirror's (host) pid.
        mirror: i32,
        /// The process it stands for.
        of: Mirrored,
    },
    /// Blocks until the process behind a mirror exits. [`Answer::Exited`]
    Wait {
        /// The mirror's (host) pid.
        pid: i32,
    },
    /// Pids of the container's processes, the guest's. [`Answer::Pids`]
    Pids,
    /// Resource usage. [`Answer::Stats`]
    Stats,
    /// OOM kills so far. [`Answer::OomKills`]
    OomKills,
    /// Freeze the container. [`Answer::Done`]
    Pause,
    /// Thaw the container. [`Answer::Done`]
    Resume,
    /// New resource limits. [`Answer::Done`]
    Update {
        /// The limits.
        resources: Box<LinuxResources>,
    },
    /// Save the pod's VM into `image_path` (`hull checkpoint`): [`Answer::Done`] when it runs
    /// on (`leave_running`), else the pod stops and the server exits: [`Answer::Deleted`].
    Checkpoint {
        /// The checkpoint directory.
        image_path: PathBuf,
        /// Let the pod run on.
        leave_running: bool,
    },
    /// Delete the container, and with it the pod: the server exits. [`Answer::Deleted`]
    Delete {
        /// Even if it runs.
        force: bool,
    },
}

/// The guest process a mirror stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mirrored {
    /// The container's init (its guest pid is the server's to know).
    Init,
    /// An exec'd process.
    Exec {
        /// Its pid in the guest, as [`Answer::Started`] gave it.
        guest_pid: i32,
    },
}

/// What the server answers a [`Request`] that succeeded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done; nothing to report.
    Done,
    /// Text (the guest's console log).
    Text(String),
    /// The container's state.
    State(Box<ContainerState>),
    /// An exec'd process runs.
    Started {
        /// Its pid in the guest.
        guest_pid: i32,
    },
    /// The process behind a mirror exited.
    Exited {
        /// Its exit code (128 + signal if a signal killed it).
        code: i32,
    },
    /// Pids of the container's processes in the guest.
    Pids(Vec<i32>),
    /// Resource usage.
    Stats(Box<Stats>),
    /// OOM kills so far.
    OomKills(u64),
    /// The container and its pod are gone; the server exits.
    Deleted,
}

/// Why a call failed, as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The server serves no container by this id (`hull_container::Error::NotFound`).
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// Any other error: its kind and its one line, as the user is to read it.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// The error and its causes, one line.
        message: String,
    },
}

impl From<&hull_runtime::Error> for Failure {
    fn from(e: &hull_runtime::Error) -> Self {
        match e {
            hull_runtime::Error::Container(hull_container::Error::NotFound(id)) => {
                Failure::NotFound { id: id.clone() }
            }
            e => Failure::Error {
                kind: e.kind(),
                message: chain(e),
            },
        }
    }
}

impl From<Failure> for hull_runtime::Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::NotFound { id } => hull_container::Error::NotFound(id).into(),
            Failure::Error { kind, message } => hull_runtime::Error::Served { kind, message },
        }
    }
}

/// The server's answer to one call.
pub type Reply = Result<Answer, Failure>;

/// Sends `msg` as one line, with `fds` as SCM_RIGHTS on its first bytes.
pub fn send<T: Serialize>(stream: &UnixStream, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&line)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    let mut w = stream;
    w.write_all(&line[sent..])
}

/// Receives one line sent by [`send`] and the fds sent with it (close-on-exec). `Ok(None)`
/// when the peer closed the connection without a word.
pub fn receive<T: DeserializeOwned>(
    stream: &UnixStream,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut fds = Vec::new();
    let n = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(list) = c {
                for fd in list {
                    // SAFETY: the kernel just installed these fds in our table for us.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        msg.bytes
    };
    buf.truncate(n);
    if buf.is_empty() {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        BufReader::new(stream).read_until(b'\n', &mut buf)?;
    }
    let msg = serde_json::from_slice(&buf)?;
    Ok(Some((msg, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `msg` through a socket pair, with `fds`.
    fn cross<T: Serialize + DeserializeOwned>(msg: &T, fds: &[RawFd]) -> (T, Vec<OwnedFd>) {
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, msg, fds).unwrap();
        receive(&b).unwrap().expect("a message")
    }

    fn json<T: Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn every_request_round_trips() {
        let mut process = Process::default();
        process.set_args(Some(vec!["sh".into(), "-c".into(), "exit 3".into()]));
        // Sets serialize in no fixed order: the JSON comparison below wants none.
        process.set_capabilities(None);
        let requests = vec![
            Request::Start,
            Request::State,
            Request::Kill {
                signal: 9,
                all: true,
            },
            Request::Signal {
                pid: 42,
                signal: 15,
            },
            Request::Exec {
                process: Box::new(process),
                console_socket: Some("/tmp/console.sock".into()),
                in_guest: true,
            },
            Request::ConsoleLog,
            Request::Register {
                mirror: 7,
                of: Mirrored::Init,
            },
            Request::Register {
                mirror: 8,
                of: Mirrored::Exec { guest_pid: 12 },
            },
            Request::Wait { pid: 7 },
            Request::Pids,
            Request::Stats,
            Request::OomKills,
            Request::Pause,
            Request::Resume,
            Request::Update {
                resources: Box::default(),
            },
            Request::Checkpoint {
                image_path: "/ck".into(),
                leave_running: true,
            },
            Request::Delete { force: true },
        ];
        for request in requests {
            let call = Call {
                container: "c1".into(),
                request,
            };
            let (back, fds) = cross(&call, &[]);
            assert!(fds.is_empty());
            assert_eq!(json(&back), json(&call));
        }
    }

    #[test]
    fn every_answer_round_trips() {
        let state = ContainerState {
            oci_version: hull_container::OCI_VERSION.into(),
            id: "c1".into(),
            pid: 77,
            status: hull_runtime::pod::Status::Running,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2024-01-01T00:00:00Z".into(),
            owner: String::new(),
            annotations: Default::default(),
        };
        let mut stats = Stats::default();
        stats.pids.current = 3;
        let answers = vec![
            Answer::Done,
            Answer::State(Box::new(state)),
            Answer::Started { guest_pid: 12 },
            Answer::Exited { code: 137 },
            Answer::Pids(vec![1, 12]),
            Answer::Stats(Box::new(stats)),
            Answer::OomKills(2),
            Answer::Deleted,
        ];
        for answer in answers {
            let reply: Reply = Ok(answer);
            let (back, _) = cross(&reply, &[]);
            assert_eq!(json(&back), json(&reply));
        }
    }

    #[test]
    fn every_failure_round_trips_with_its_kind_and_line() {
        let errors: Vec<hull_runtime::Error> = vec![
            hull_runtime::Error::not_found("c1"),
            hull_runtime::Error::wrong_status("c1", "stopped", "exec"),
            hull_runtime::Error::invalid("container c1 has no process 5"),
            hull_container::Error::Unsupported("no pause here".into()).into(),
            hull_runtime::Error::Vm("exec in container c1: the vm is gone".into()),
            hull_container::Error::AlreadyExists("c1".into()).into(),
        ];
        for e in errors {
            let reply: Reply = Err(Failure::from(&e));
            let (back, _) = cross(&reply, &[]);
            let back = hull_runtime::Error::from(back.expect_err("a failure"));
            assert_eq!(back.kind(), e.kind(), "{e}");
            assert_eq!(chain(&back), chain(&e));
        }
    }

    #[test]
    fn a_not_found_crosses_as_not_found() {
        let reply: Reply = Err(Failure::from(&hull_runtime::Error::not_found("c1")));
        let (back, _) = cross(&reply, &[]);
        match hull_runtime::Error::from(back.expect_err("a failure")) {
            hull_runtime::Error::Container(hull_container::Error::NotFound(id)) => {
                assert_eq!(id, "c1")
            }
            other => panic!("not a NotFound: {other:?}"),
        }
    }

    #[test]
    fn a_call_about_another_container_is_not_found() {
        let call = Call {
            container: "other".into(),
            request: Request::State,
        };
        assert_eq!(call.check("other"), Ok(()));
        assert_eq!(
            call.check("c1"),
            Err(Failure::NotFound { id: "other".into() })
        );
    }

    #[test]
    fn fds_ride_with_the_call() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let call = Call {
            container: "c1".into(),
            request: Request::Pids,
        };
        let (_, fds) = cross(&call, &[r.as_raw_fd(), w.as_raw_fd()]);
        assert_eq!(fds.len(), 2);
        nix::unistd::write(&fds[1], b"x").unwrap();
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut b).unwrap(), 1);
    }

    #[test]
    fn a_closed_connection_is_no_message() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(receive::<Call>(&b).unwrap().is_none());
    }
}
