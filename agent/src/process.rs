//! Processes the agent started (container inits and execs) and their stdio.
//!
//! Without a terminal a process gets three pipes; the agent keeps the far ends. With a terminal
//! libcontainer creates the pty inside the container and hands its master over a console socket.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hull_container::Stdio;
use parking_lot::Mutex;

use crate::error::{AgentError, Result};

/// The largest chunk one ReadStdout/ReadStderr returns.
pub const MAX_READ: usize = 1 << 20;

/// The ends the agent keeps.
pub struct ParentStdio {
    stdin: File,
    stdout: File,
    stderr: File,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(AgentError::last_os("pipe2"));
    }
    // SAFETY: pipe2 succeeded, both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Three pipes for a process without a terminal: its ends, and the agent's.
pub fn stdio_pipes() -> Result<(Stdio, ParentStdio)> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok((
        Stdio {
            stdin: Some(in_r),
            stdout: Some(out_w),
            stderr: Some(err_w),
        },
        ParentStdio {
            stdin: File::from(in_w),
            stdout: File::from(out_r),
            stderr: File::from(err_r),
        },
    ))
}

/// Binds the console socket libcontainer sends the pty master to.
pub fn console_listener(path: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| AgentError::io(format!("bind console socket {path:?}"), e))?;
    l.set_nonblocking(true)
        .map_err(|e| AgentError::io("console socket nonblocking", e))?;
    Ok(l)
}

/// Receives the pty master from libcontainer (it connected during container creation).
pub fn receive_pty_master(listener: &UnixListener, timeout: Duration) -> Result<File> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(AgentError::io(
                        "receive pty master",
                        io::Error::new(io::ErrorKind::TimedOut, "no console connection"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(AgentError::io("accept console socket", e)),
        }
    };
    stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(timeout)))
        .map_err(|e| AgentError::io("console socket options", e))?;
    let mut data = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for one SCM_RIGHTS message with one descriptor (aligned generously).
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: zeroed msghdr is a valid empty header; every pointer set below outlives recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
    // SAFETY: `msg` points at live buffers sized as declared.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(AgentError::last_os("recvmsg pty master"));
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/CMSG_DATA stay inside `cmsg_buf`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32);
            return Ok(File::from_raw_fd(fd));
        }
    }
    Err(AgentError::io(
        "receive pty master",
        io::Error::new(io::ErrorKind::InvalidData, "no descriptor in message"),
    ))
}

/// A process the agent started: its pid and the agent's ends of its stdio.
pub struct Process {
    /// The exec id ("" for the container's init).
    pub exec_id: String,
    /// The pid in the agent's pid namespace.
    pub pid: i32,
    stdin: Mutex<Option<File>>,
    stdout: Option<File>,
    stderr: Option<File>,
    tty: Option<File>,
    waited: AtomicBool,
    out_eof: AtomicBool,
    err_eof: AtomicBool,
}

impl Process {
    /// A process with pipes.
    pub fn with_pipes(exec_id: String, pid: i32, p: ParentStdio) -> Self {
        Process {
            exec_id,
            pid,
            stdin: Mutex::new(Some(p.stdin)),
            stdout: Some(p.stdout),
            stderr: Some(p.stderr),
            tty: None,
            waited: AtomicBool::new(false),
            out_eof: AtomicBool::new(false),
            err_eof: AtomicBool::new(false),
        }
    }

    /// A process on a terminal: stdin and stdout are the pty master, stderr is merged.
    pub fn with_tty(exec_id: String, pid: i32, master: File) -> Result<Self> {
        let input = master
            .try_clone()
            .map_err(|e| AgentError::io("dup pty master", e))?;
        let output = master
            .try_clone()
            .map_err(|e| AgentError::io("dup pty master", e))?;
        Ok(Process {
            exec_id,
            pid,
            stdin: Mutex::new(Some(input)),
            stdout: Some(output),
            stderr: None,
            tty: Some(master),
            waited: AtomicBool::new(false),
            out_eof: AtomicBool::new(false),
            err_eof: AtomicBool::new(true),
        })
    }

    /// Writes to stdin; returns the bytes written.
    pub fn write_stdin(&self, data: &[u8]) -> Result<usize> {
        let mut guard = self.stdin.lock();
        let f = guard
            .as_mut()
            .ok_or_else(|| AgentError::FailedPrecondition("stdin is closed".into()))?;
        f.write_all(data)
            .map_err(|e| AgentError::io(format!("write stdin of pid {}", self.pid), e))?;
        Ok(data.len())
    }

    /// Closes stdin (the process sees end of file; on a tty, sends EOF).
    pub fn close_stdin(&self) -> Result<()> {
        let mut guard = self.stdin.lock();
        if let (Some(f), Some(_)) = (guard.as_mut(), self.tty.as_ref()) {
            // On a terminal the master stays open for output; send the EOF character instead.
            let _ = f.write_all(&[4]);
            return Ok(());
        }
        guard.take();
        Ok(())
    }

    fn read_from(
        file: Option<&File>,
        len: usize,
        wait: Option<Duration>,
        what: &str,
    ) -> Result<(Vec<u8>, bool)> {
        let Some(mut f) = file else {
            return Ok((Vec::new(), true));
        };
        if let Some(wait) = wait {
            // Answer "no data yet" before the caller's deadline rather than leave a thread
            // blocked in read(2) for a reply nobody waits for.
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = wait.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n == 0 {
                return Ok((Vec::new(), false));
            }
        }
        let mut buf = vec![0u8; len.clamp(1, MAX_READ)];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return Ok((Vec::new(), true)),
                Ok(n) => {
                    buf.truncate(n);
                    return Ok((buf, false));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A pty master reads EIO once the last slave is closed: that is its end.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok((Vec::new(), true)),
                Err(e) => return Err(AgentError::io(format!("read {what}"), e)),
            }
        }
    }

    /// Reads up to `len` bytes of stdout, waiting up to `wait` (forever if `None`) for some;
    /// `true` at end of stream, empty and `false` when nothing came in time.
    pub fn read_stdout(&self, len: usize, wait: Option<Duration>) -> Result<(Vec<u8>, bool)> {
        let r = Self::read_from(self.stdout.as_ref(), len, wait, "stdout")?;
        if r.1 {
            self.out_eof.store(true, Ordering::SeqCst);
        }
        Ok(r)
    }

    /// Reads up to `len` bytes of stderr, like [`Process::read_stdout`].
    pub fn read_stderr(&self, len: usize, wait: Option<Duration>) -> Result<(Vec<u8>, bool)> {
        let r = Self::read_from(self.stderr.as_ref(), len, wait, "stderr")?;
        if r.1 {
            self.err_eof.store(true, Ordering::SeqCst);
        }
        Ok(r)
    }

    /// Records that the host has collected the exit status; stdin is of no use any more.
    pub fn mark_waited(&self) {
        self.waited.store(true, Ordering::SeqCst);
        self.stdin.lock().take();
    }

    /// Exit status collected and output read to its end: nothing left for the host.
    pub fn finished(&self) -> bool {
        self.waited.load(Ordering::SeqCst)
            && self.out_eof.load(Ordering::SeqCst)
            && self.err_eof.load(Ordering::SeqCst)
    }

    /// Resizes the process's terminal.
    pub fn resize_tty(&self, rows: u16, cols: u16) -> Result<()> {
        let tty = self
            .tty
            .as_ref()
            .ok_or_else(|| AgentError::FailedPrecondition("process has no terminal".into()))?;
        hull_container::console::set_window_size(tty.as_fd(), rows, cols)
            .map_err(|e| AgentError::io("TIOCSWINSZ", e))
    }
}
