//! A terminal session: a process on a fresh pty, bridged to a websocket. Binary frames
//! carry the terminal's bytes both ways; a text frame from the page is a control message
//! (`{"type":"resize","cols":C,"rows":R}` sets the pty's window size, TIOCSWINSZ); when
//! the process ends the page gets `{"type":"exit","code":N}` and the socket closes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

use crate::error::{Error, Result};
use crate::inventory::Isolation;

/// How long the process may take to end after a hang-up before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_write_int_bad!(set_controlling_terminal, libc::TIOCSCTTY);

/// The command a terminal into container `id` of state root `root` runs: for a vm
/// container `hull console ID`, a root shell in the pod's guest outside its containers
/// (the pod that will not answer is reached there); for a host container a shell in the
/// container, `hull exec -t ID /bin/sh`.
pub fn shell_command(hull: &Path, root: &Path, id: &str, isolation: Isolation) -> Command {
    let mut cmd = Command::new(hull);
    cmd.arg("--root").arg(root);
    match isolation {
        Isolation::Vm => cmd.args(["console", id]),
        Isolation::Host => cmd.args(["exec", "-t", id, "/bin/sh"]),
    };
    cmd
}

/// A pty master, non-blocking, watched by the runtime.
pub struct Pty {
    master: AsyncFd<OwnedFd>,
}

/// Opens a pty pair (both ends close-on-exec): the master and the slave.
fn open_pair(cols: u16, rows: u16) -> Result<(OwnedFd, OwnedFd)> {
    use nix::pty::{grantpt, posix_openpt, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| Error::pty("posix_openpt", e))?;
    grantpt(&master).map_err(|e| Error::pty("grantpt", e))?;
    unlockpt(&master).map_err(|e| Error::pty("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| Error::pty("ptsname", e))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::pty("open the slave", e))?;
    // SAFETY: `open` just returned this fd; nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // SAFETY: posix_openpt returned the master; `into_raw_fd` hands its ownership over.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    resize_fd(&master, cols, rows)?;
    let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| Error::pty("get flags", e))?;
    nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| Error::pty("set O_NONBLOCK", e))?;
    Ok((master, slave))
}

fn resize_fd(fd: &OwnedFd, cols: u16, rows: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
    unsafe { set_winsize(fd.as_raw_fd(), &ws) }.map_err(|e| Error::pty("TIOCSWINSZ", e))?;
    Ok(())
}

impl Pty {
    /// Starts `cmd` on a new pty of `cols` x `rows`: stdin, stdout and stderr on the pty,
    /// which is the controlling terminal of the process's new session.
    pub fn spawn(mut cmd: Command, cols: u16, rows: u16) -> Result<(Pty, Child)> {
        let (master, slave) = open_pair(cols, rows)?;
        let clone = |fd: &OwnedFd| fd.try_clone().map_err(|e| Error::pty("dup the slave", e));
        cmd.stdin(Stdio::from(clone(&slave)?))
            .stdout(Stdio::from(clone(&slave)?))
            .stderr(Stdio::from(slave))
            .env("TERM", "xterm-256color")
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec: a new session, and
        // the pty on fd 0 as its controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                set_controlling_terminal(0, 0)?;
                Ok(())
            });
        }
        let program = std::path::PathBuf::from(cmd.as_std().get_program());
        let child = cmd
            .spawn()
            .map_err(|source| Error::Spawn { program, source })?;
        // The slave's copies went with `cmd`: reads of the master end (EIO) once the
        // process and its children closed it.
        drop(cmd);
        // SAFETY: an `OwnedFd` is open for its whole life and always returns the same fd.
        let master = unsafe { AsyncFd::register(master) }
            .map_err(|e| Error::pty("watch the master", std::io::Error::from(e)))?;
        Ok((Pty { master }, child))
    }

    /// Sets the window size (the process gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        resize_fd(self.master.get_ref(), cols, rows)
    }

    /// Reads what the process wrote; `Ok(0)` once every holder of the slave is gone.
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(std::io::Error::from)
            }) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the process.
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// A control message from the page.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    /// The terminal's size changed.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// Runs `cmd` on a pty and bridges it to `socket` until either ends; then the process's
/// session gets SIGHUP (SIGKILL after a grace period).
pub async fn bridge(socket: WebSocket, cmd: Command, label: String) {
    let (mut tx, mut rx) = socket.split();
    let (pty, mut child) = match Pty::spawn(cmd, 80, 24) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(terminal = %label, "{e}");
            let msg = serde_json::json!({"type": "error", "message": e.to_string()}).to_string();
            let _ = tx.send(Message::Text(msg.into())).await;
            return;
        }
    };
    let pid = child.id().map(|p| p as i32);
    tracing::info!(terminal = %label, pid, "terminal opened");
    let output = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pty.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
        }
        true
    };
    let input = async {
        while let Some(Ok(msg)) = rx.next().await {
            let go_on = match msg {
                Message::Binary(b) => pty.write_all(&b).await.is_ok(),
                Message::Text(t) => {
                    match serde_json::from_str::<Control>(&t) {
                        Ok(Control::Resize { cols, rows }) if cols > 0 && rows > 0 => {
                            if let Err(e) = pty.resize(cols, rows) {
                                tracing::warn!(terminal = %label, "{e}");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(terminal = %label, "bad control message: {e}"),
                    }
                    true
                }
                Message::Close(_) => false,
                _ => true,
            };
            if !go_on {
                break;
            }
        }
    };
    // The output ends when the process (and whatever holds its pty) is gone; the input
    // when the page goes.
    let process_ended = tokio::select! {
        alive = output => alive,
        () = input => false,
    };
    if !process_ended {
        if let Some(p) = pid {
            let _ = killpg(Pid::from_raw(p), Signal::SIGHUP);
        }
    }
    let status = match tokio::time::timeout(HANGUP_GRACE, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let code = status.and_then(|s| s.code()).unwrap_or(-1);
    tracing::info!(terminal = %label, pid, code, "terminal closed");
    if process_ended {
        let exit = serde_json::json!({"type": "exit", "code": code}).to_string();
        let _ = tx.send(Message::Text(exit.into())).await;
        let _ = tx.send(Message::Close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_until(pty: &Pty, needle: &str) -> String {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let n = pty.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                all.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&all).contains(needle) {
                    return;
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&all).into_owned();
        assert!(found.is_ok(), "no {needle:?} in {text:?}");
        text
    }

    #[tokio::test]
    async fn a_shell_on_the_pty_sees_its_terminal_and_the_window_size() {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-i");
        let (pty, mut child) = Pty::spawn(cmd, 80, 24).unwrap();
        pty.write_all(b"tty; stty size\n").await.unwrap();
        let first = read_until(&pty, "24 80").await;
        assert!(first.contains("/dev/pts/"), "{first}");
        pty.resize(132, 50).unwrap();
        pty.write_all(b"echo hull-$((6*7)); stty size\n")
            .await
            .unwrap();
        let out = read_until(&pty, "50 132").await;
        assert!(out.contains("hull-42"), "{out}");
        pty.write_all(b"exit 3\n").await.unwrap();
        let st = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(st.code(), Some(3));
    }
}
