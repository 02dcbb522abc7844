//! The foreground side of `run` and `exec`: the caller's stdio and terminal for the
//! container process, the signals it receives passed on, and the subreaper that waits.

use std::path::Path;

use hull_runtime::pod::Stdio;
use nix::sys::signal::{SigSet, Signal};

use crate::console;
use crate::error::{Error, Result};

/// libcontainer re-opens a stdio fd that is the host's /dev/null as the container's
/// /dev/null, read-only, so the container's writes to it would fail. For a foreground
/// container, hand it a pipe instead and discard what arrives.
pub fn null_safe_stdio() -> Result<Stdio> {
    use std::os::fd::AsRawFd;
    let is_null = |fd: i32| {
        nix::sys::stat::fstat(fd)
            .map(|st| {
                (st.st_mode & libc::S_IFMT) == libc::S_IFCHR
                    && libc::major(st.st_rdev) == 1
                    && libc::minor(st.st_rdev) == 3
            })
            .unwrap_or(false)
    };
    let drain = || -> Result<std::os::fd::OwnedFd> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("pipe for a /dev/null stdio", e))?;
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(r);
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        });
        Ok(w)
    };
    let mut stdio = Stdio::default();
    if is_null(std::io::stdout().as_raw_fd()) {
        stdio.stdout = Some(drain()?);
    }
    if is_null(std::io::stderr().as_raw_fd()) {
        stdio.stderr = Some(drain()?);
    }
    Ok(stdio)
}

/// Make this process the reaper of the container's processes so that it can wait for them.
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only changes a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(Error::sys("become child subreaper", nix::Error::last()));
    }
    Ok(())
}

/// Signals a foreground `run`/`exec` passes on to the container process.
pub fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

/// Forward the signals a foreground process receives to `pid` (runc's signal proxy).
pub fn forward_signals(pid: i32) {
    forward_signals_with(move |sig| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    });
}

/// Block the forwarded signals in this thread, before it starts any other: threads inherit
/// the mask, so the signal-forwarding thread is the only one that ever takes them (a thread
/// with them unblocked would take e.g. SIGTERM's default action and end hull).
pub fn block_forwarded() {
    let _ = forwarded().thread_block();
}

/// Pass each signal a foreground `run`/`exec` receives to `deliver`.
pub fn forward_signals_with(deliver: impl Fn(Signal) + Send + 'static) {
    let set = forwarded();
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || loop {
        if let Ok(sig) = set.wait() {
            deliver(sig);
        }
    });
}

/// The terminal side of a foreground `run`/`exec`: when the process wants a terminal and
/// the caller gave no console socket, hull receives the pty master itself and copies it
/// to and from its own stdio, as runc does.
pub struct Foreground {
    receiver: Option<hull_container::console::ConsoleReceiver>,
    /// The console socket the process' pty master goes to: ours, or the caller's.
    pub console_socket: Option<std::path::PathBuf>,
}

/// A foreground process' pty proxy while it runs.
pub struct Attached {
    output: Option<std::thread::JoinHandle<()>>,
    _raw: Option<console::RawMode>,
}

impl Foreground {
    pub fn new(
        root: &Path,
        id: &str,
        terminal: bool,
        given: Option<std::path::PathBuf>,
    ) -> Result<Self> {
        let receiver = if terminal && given.is_none() {
            Some(hull_container::console::ConsoleReceiver::bind(root, id)?)
        } else {
            None
        };
        let console_socket = receiver.as_ref().map(|r| r.path().to_path_buf()).or(given);
        Ok(Self {
            receiver,
            console_socket,
        })
    }

    /// libcontainer takes a console socket only for a detached process.
    pub fn detached(&self) -> bool {
        self.console_socket.is_some()
    }

    /// The process' stdio: ours (made /dev/null-safe) unless a pty carries it.
    pub fn stdio(&self) -> Result<Stdio> {
        if self.receiver.is_some() {
            Ok(Stdio::default())
        } else {
            null_safe_stdio()
        }
    }

    /// Once the process exists: take its pty master and start copying.
    pub fn attach(&self) -> Result<Attached> {
        let Some(r) = &self.receiver else {
            return Ok(Attached {
                output: None,
                _raw: None,
            });
        };
        let master = r.receive()?;
        Ok(Attached {
            _raw: Some(console::RawMode::enter()),
            output: Some(console::proxy(master)),
        })
    }
}

impl Attached {
    /// Drain the pty output after the process exited, then restore the terminal.
    pub fn finish(self) {
        if let Some(out) = self.output {
            let _ = out.join();
        }
    }
}
