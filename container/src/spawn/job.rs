//! What a spawn helper is asked, how it answers (one message each way on a `SOCK_SEQPACKET`
//! socket), and doing it: the part both ways of getting a helper (re-exec and zygote) share.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};

use crate::error::{chain, Error, ErrorKind, Result};
use crate::options::{CreateOptions, ExecOptions, Stdio};
use crate::root::ContainerRoot;

/// The largest answer read back; a longer error message is cut to fit.
const MAX_REPLY: usize = 32 * 1024;

/// One request: the state root to work in and the job.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Request {
    /// The state root.
    pub root: PathBuf,
    /// Cgroups through systemd.
    pub systemd_cgroup: bool,
    /// What to do there.
    pub job: Job,
}

/// The two calls that clone container processes.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Job {
    /// [`ContainerRoot::create`].
    Create {
        /// Container id.
        id: String,
        /// Bundle directory.
        bundle: PathBuf,
        /// Where to write the init pid.
        pid_file: Option<PathBuf>,
        /// Console socket for a terminal.
        console_socket: Option<PathBuf>,
        /// chroot/move-mount instead of pivot_root.
        no_pivot: bool,
    },
    /// [`ContainerRoot::exec`].
    Exec {
        /// Container id.
        id: String,
        /// The process to start, as its OCI JSON: only libcontainer parses it (one parser of
        /// a `Process` in the binary, not two).
        process_json: String,
        /// Where to write its pid.
        pid_file: Option<PathBuf>,
        /// Console socket for a terminal.
        console_socket: Option<PathBuf>,
    },
}

/// The helper's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    /// The new process' pid.
    Pid(i32),
    /// What went wrong, with the kind kept for the caller's status codes.
    Failed {
        /// The kind of failure.
        kind: ErrorKind,
        /// Its one-line cause.
        message: String,
    },
}

impl Reply {
    /// A failure of the helper mechanism itself (not of libcontainer).
    pub fn failed(message: impl Into<String>) -> Self {
        Reply::Failed {
            kind: ErrorKind::Other,
            message: message.into(),
        }
    }

    /// The pid, or the error the helper reported.
    pub fn into_result(self) -> Result<i32> {
        match self {
            Reply::Pid(pid) => Ok(pid),
            Reply::Failed { kind, message } => Err(Error::Spawn { kind, message }),
        }
    }
}

/// Do the JSON-encoded `request` in this process, which must have one thread; the new
/// process' standard streams are `stdio` (an unset one: this process' own).
pub(super) fn serve(request: &[u8], stdio: Stdio) -> Reply {
    let Request {
        root,
        systemd_cgroup,
        job,
    } = match serde_json::from_slice(request) {
        Ok(r) => r,
        Err(e) => {
            return Reply::Failed {
                kind: ErrorKind::Invalid,
                message: format!("spawn helper: bad request: {e}"),
            }
        }
    };
    let root = ContainerRoot::new(root, systemd_cgroup);
    let result = match job {
        Job::Create {
            id,
            bundle,
            pid_file,
            console_socket,
            no_pivot,
        } => {
            let opts = CreateOptions {
                id,
                bundle,
                pid_file,
                console_socket,
                no_pivot,
                detach: true,
                stdio,
                ..Default::default()
            };
            root.create(opts)
        }
        Job::Exec {
            id,
            process_json,
            pid_file,
            console_socket,
        } => root.exec_json(
            &id,
            process_json.as_bytes(),
            ExecOptions {
                pid_file,
                console_socket,
                detach: true,
                stdio,
                ..Default::default()
            },
        ),
    };
    match result {
        Ok(pid) => Reply::Pid(pid),
        Err(e) => {
            let mut message = chain(&e);
            if message.len() > MAX_REPLY / 2 {
                let mut end = MAX_REPLY / 2;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            Reply::Failed {
                kind: e.kind(),
                message,
            }
        }
    }
}

/// Send `reply` as one message on a `SOCK_SEQPACKET` socket (best effort: the asker may be
/// gone).
pub(super) fn send_reply(to: BorrowedFd<'_>, reply: &Reply) {
    let text = serde_json::to_vec(reply).unwrap_or_default();
    let _ = send(to.as_raw_fd(), &text, MsgFlags::MSG_NOSIGNAL);
}

/// Receive the one answer on a `SOCK_SEQPACKET` socket; `None` when none came (with
/// `MSG_DONTWAIT`: none is there) or it is not one.
pub(super) fn recv_reply(from: BorrowedFd<'_>, flags: MsgFlags) -> Option<Reply> {
    let mut buf = vec![0u8; MAX_REPLY];
    loop {
        match recv(from.as_raw_fd(), &mut buf, flags) {
            Ok(n) => return serde_json::from_slice(&buf[..n]).ok(),
            Err(nix::Error::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec): one message is one answer, so
/// the asker never waits for an end of file that a container process may hold off.
pub(super) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("spawn helper socket pair", e))
}
