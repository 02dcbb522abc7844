//! Foreground `run`/`exec` with `terminal: true` and no `--console-socket`: hull
//! receives the pty master itself and copies between it and its own stdio, as runc does.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{Error, Result};

/// A private console socket that receives one pty master.
pub struct ConsoleReceiver {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleReceiver {
    /// Listen on a fresh socket under `dir`.
    pub fn bind(dir: &Path, id: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!(".console-{id}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self { listener, path })
    }

    /// The socket's path, to hand to the container builder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept the container's connection and take the pty master it sends.
    pub fn receive(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|e| Error::io(&self.path, e))?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| Error::sys("receive pty master", e))?;
        for c in msg
            .cmsgs()
            .map_err(|e| Error::sys("receive pty master", e))?
        {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this fd in our table for us
                    // (SCM_RIGHTS); nothing else owns it.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(Error::InvalidInput(
            "console socket: the container sent no pty master".into(),
        ))
    }
}

impl Drop for ConsoleReceiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Puts stdin in raw mode while alive, if it is a terminal.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    /// Switch stdin to raw mode when it is a tty.
    pub fn enter() -> Self {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        }
        Self { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
        }
    }
}

/// Copy stdin -> master and master -> stdout on background threads.
/// The output thread is returned so the caller can drain it after the process exits.
pub fn proxy(master: OwnedFd) -> std::thread::JoinHandle<()> {
    let out = std::fs::File::from(master);
    let input = out.try_clone();
    if let Ok(mut input) = input {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || input.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    std::thread::spawn(move || {
        let mut out = out;
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        // EIO once the last slave fd closes: the process is gone.
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = stdout.flush();
        }
    })
}
