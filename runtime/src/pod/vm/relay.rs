//! The standard streams of a vm pod's processes: relays between the fds the caller hands over
//! and the agent's stream calls. A terminal is a host pty whose master goes to the caller's
//! console socket, relayed to the guest's pty (window size included).

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::thread::JoinHandle;

use hull_agent_client::AgentClient;

use super::{VmPod, VmProc};
use crate::error::{Error, Result};
use crate::pod::Stdio;

/// One stream read asks for at most this much.
const READ_CHUNK: usize = 64 * 1024;

impl VmPod {
    /// Starts the relays between the caller's fds and the agent's streams of one process.
    pub(super) fn relay(
        &self,
        agent: &AgentClient,
        id: &str,
        exec_id: &str,
        terminal: bool,
        console_socket: Option<&Path>,
        stdio: Stdio,
    ) -> Result<Arc<VmProc>> {
        let done = Arc::new(AtomicBool::new(false));
        let proc_ = Arc::new(VmProc {
            exec_id: exec_id.to_string(),
            relays: Mutex::new(Vec::new()),
            exit: Mutex::new(None),
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
                return Err(Error::invalid(format!(
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
        *proc_.relays.lock() = relays;
        spawn_input(agent.clone(), id, exec_id, input, terminal, done)?;
        Ok(proc_)
    }
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
                    if let Some(ws) = hull_container::console::window_size(from.as_fd()) {
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
