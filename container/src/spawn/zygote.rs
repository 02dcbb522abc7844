//! The zygote: a copy of the caller forked while it still had one thread, which forks one
//! helper per request. A fork of a one-thread process is as safe as a fresh exec and costs no
//! exec (starting the agent binary anew takes ~0.25 s under TCG, on every create and exec).
//!
//! One request is one `SOCK_SEQPACKET` message: the request's JSON, and as `SCM_RIGHTS` the
//! socket to answer on and the new process' stdin, stdout and stderr. Each request brings its
//! own answer socket, so callers on several threads need no lock between them.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use super::job::{recv_reply, send_reply, seqpacket_pair, serve, Reply};
use crate::error::{Error, ErrorKind, Result};
use crate::options::Stdio;

/// The largest request the zygote reads (a request carries an OCI process, its environment
/// included).
const MAX_REQUEST: usize = 256 * 1024;

/// The caller's end of the socket to the zygote, once started.
static ZYGOTE: OnceLock<OwnedFd> = OnceLock::new();
/// Set when the zygote stopped answering: helpers re-execute from then on.
static GONE: AtomicBool = AtomicBool::new(false);

/// Fork the zygote. Call while this process has one thread, before it starts any.
pub fn start() -> Result<()> {
    if ZYGOTE.get().is_some() {
        return Ok(());
    }
    let (caller_end, zygote_end) = seqpacket_pair()?;
    // SAFETY: the caller guarantees this process has one thread, so the child may run
    // ordinary code (allocate, take locks) until it exits.
    match unsafe { fork() }.map_err(|e| Error::sys("fork the zygote", e))? {
        ForkResult::Child => {
            drop(caller_end);
            main(zygote_end)
        }
        ForkResult::Parent { .. } => {
            drop(zygote_end);
            let _ = ZYGOTE.set(caller_end);
            Ok(())
        }
    }
}

/// Have the zygote do `request`; the streams back when there is no zygote (or no longer one).
pub(super) fn run(request: &str, stdio: Stdio) -> std::result::Result<Result<i32>, Stdio> {
    let Some(sock) = ZYGOTE.get().filter(|_| !GONE.load(Ordering::Relaxed)) else {
        return Err(stdio);
    };
    let (mine, theirs) = match seqpacket_pair() {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let streams = [&stdio.stdin, &stdio.stdout, &stdio.stderr];
    let null = match streams.iter().any(|s| s.is_none()) {
        true => match dev_null() {
            Ok(f) => Some(f),
            Err(e) => return Ok(Err(e)),
        },
        false => None,
    };
    let mut fds: [RawFd; 4] = [theirs.as_raw_fd(); 4];
    for (fd, s) in fds[1..].iter_mut().zip(streams) {
        *fd = s.as_ref().or(null.as_ref()).map_or(-1, |f| f.as_raw_fd());
    }
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(request.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    if let Err(e) = sent {
        gone(e);
        return Err(stdio);
    }
    // Only the zygote and its helper hold the answering end and the streams now.
    drop((theirs, stdio, null));
    Ok(match recv_reply(mine.as_fd(), MsgFlags::empty()) {
        Some(reply) => reply.into_result(),
        None => {
            gone("it ended without an answer");
            Err(Error::Spawn {
                kind: ErrorKind::Other,
                message: "the zygote ended without an answer".into(),
            })
        }
    })
}

fn gone(why: impl std::fmt::Display) {
    if !GONE.swap(true, Ordering::Relaxed) {
        tracing::warn!("the zygote is gone ({why}); spawn helpers re-execute this binary");
    }
}

fn dev_null() -> Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| Error::io("/dev/null", e))
}

/// The zygote's loop: one forked helper per request. Ends when the caller's end closes.
fn main(sock: OwnedFd) -> ! {
    // SAFETY: PR_SET_NAME reads the NUL-terminated name; it renames this process only.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"hull-zygote".as_ptr()) };
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (n, truncated, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([RawFd; 4]);
            let msg = match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::Error::EINTR) => continue,
                Err(_) => break,
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmRights(list) = c {
                    // SAFETY: the kernel just installed these fds in our table for us
                    // (SCM_RIGHTS); nothing else owns them.
                    fds.extend(
                        list.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let truncated = msg
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
            (msg.bytes, truncated, fds)
        };
        if n == 0 && fds.is_empty() {
            break;
        }
        let mut fds = fds.into_iter();
        let Some(reply_to) = fds.next() else {
            continue;
        };
        match (fds.next(), fds.next(), fds.next()) {
            (Some(i), Some(o), Some(e)) if !truncated => {
                fork_helper(&buf[..n], &reply_to, [i, o, e])
            }
            _ => send_reply(
                reply_to.as_fd(),
                &Reply::Failed {
                    kind: ErrorKind::Invalid,
                    message: "the zygote got a truncated request".into(),
                },
            ),
        }
    }
    // SAFETY: _exit(2) ends this copy of the caller without running its cleanup.
    unsafe { libc::_exit(0) }
}

/// Fork a helper for one request and wait for it; answer for it if it died without answering.
fn fork_helper(request: &[u8], reply_to: &OwnedFd, stdio: [OwnedFd; 3]) {
    // SAFETY: the zygote has one thread.
    match unsafe { fork() } {
        Err(e) => send_reply(
            reply_to.as_fd(),
            &Reply::failed(format!("fork the spawn helper: {e}")),
        ),
        Ok(ForkResult::Child) => {
            // Handed to libcontainer, not put on the helper's own 0..2: the helper's log lines
            // (the caller's logger, inherited) stay out of the container's streams.
            let [stdin, stdout, stderr] = stdio;
            let stdio = Stdio {
                stdin: Some(stdin),
                stdout: Some(stdout),
                stderr: Some(stderr),
            };
            send_reply(reply_to.as_fd(), &serve(request, stdio));
            // SAFETY: _exit(2) ends the helper without running the zygote's cleanup.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(stdio);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::Error::EINTR) => continue,
                    other => break other,
                }
            };
            if !matches!(status, Ok(WaitStatus::Exited(_, 0))) {
                send_reply(
                    reply_to.as_fd(),
                    &Reply::failed(format!("the spawn helper died ({status:?})")),
                );
            }
        }
    }
}
