//! A process' standard streams: containerd's FIFOs, or a pty.
//!
//! Without a terminal, stdout and stderr go to the process as the FIFOs themselves
//! (opened read-write, as runc's shim does, so a reader that goes away never kills the
//! process with SIGPIPE); stdin is a pipe fed from its FIFO by a copy thread, so that
//! `CloseIO` can give the process its EOF. With a terminal, the pty master arrives on a
//! console socket and threads copy between it and the FIFOs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hull_container::console::ConsoleReceiver;
use hull_runtime::pod::Stdio;

use crate::error::{Error, Result};

/// Where containerd wants a process' streams.
#[derive(Debug, Clone, Default)]
pub struct IoPaths {
    /// stdin FIFO ("" = none).
    pub stdin: String,
    /// stdout FIFO ("" = none).
    pub stdout: String,
    /// stderr FIFO ("" = none).
    pub stderr: String,
    /// Whether the process gets a pty.
    pub terminal: bool,
}

/// The live side of a process' streams, kept by the shim.
#[derive(Default)]
pub struct IoState {
    /// Write end of the stdin pipe (no terminal) or the pty master (terminal); `None` once closed.
    stdin: Arc<Mutex<Option<File>>>,
    /// The pty master, for resizing.
    console: Option<File>,
    /// The thread copying the pty's output, joined before the exit is reported.
    output: Option<JoinHandle<()>>,
    stdin_path: String,
}

/// Directory of the short-lived console sockets (short: a socket path is at most 108 bytes).
const CONSOLE_DIR: &str = "/run/hull/console";
static CONSOLE_SEQ: AtomicU64 = AtomicU64::new(0);

/// What to hand to the sandbox for a new process, and what the shim keeps.
pub struct Prepared {
    /// Streams for the process.
    pub stdio: Stdio,
    /// Console socket when a terminal was asked for.
    pub console: Option<ConsoleReceiver>,
    /// The shim's side.
    pub state: IoState,
}

fn open_fifo_rw(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn dev_null() -> Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| Error::io("/dev/null", e))
}

/// Copy the stdin FIFO into `sink` until EOF or until `sink` is closed by `CloseIO`.
fn feed_stdin(path: String, sink: Arc<Mutex<Option<File>>>) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            // Blocks until containerd's writer opens it; `unblock_stdin` ends the wait.
            let Ok(mut fifo) = File::open(&path) else {
                return;
            };
            let mut buf = [0u8; 8192];
            loop {
                let n = match fifo.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut guard = match sink.lock() {
                    Ok(g) => g,
                    Err(_) => break,
                };
                let written = guard
                    .as_mut()
                    .is_some_and(|w| w.write_all(&buf[..n]).is_ok());
                if !written {
                    break;
                }
            }
            // EOF from containerd: the process sees EOF too (pipe), or ^D (pty).
            if let Ok(mut g) = sink.lock() {
                if let Some(w) = g.take() {
                    if is_tty(&w) {
                        let mut w = w;
                        let _ = w.write_all(&[4]);
                    }
                }
            }
        });
}

fn is_tty(f: &File) -> bool {
    nix::unistd::isatty(f.as_raw_fd()).unwrap_or(false)
}

/// Open a process' streams before it is created.
pub fn prepare(paths: &IoPaths) -> Result<Prepared> {
    let mut state = IoState {
        stdin_path: paths.stdin.clone(),
        ..Default::default()
    };
    if paths.terminal {
        std::fs::create_dir_all(CONSOLE_DIR).map_err(|e| Error::io(CONSOLE_DIR, e))?;
        let seq = CONSOLE_SEQ.fetch_add(1, Ordering::Relaxed);
        let receiver = ConsoleReceiver::bind(Path::new(CONSOLE_DIR), &seq.to_string())?;
        return Ok(Prepared {
            stdio: Stdio::default(),
            console: Some(receiver),
            state,
        });
    }
    let mut stdio = Stdio::default();
    if paths.stdin.is_empty() {
        stdio.stdin = Some(dev_null()?);
    } else {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("stdin pipe", e.into()))?;
        stdio.stdin = Some(r);
        state.stdin = Arc::new(Mutex::new(Some(File::from(w))));
        feed_stdin(paths.stdin.clone(), Arc::clone(&state.stdin));
    }
    stdio.stdout = Some(if paths.stdout.is_empty() {
        dev_null()?
    } else {
        open_fifo_rw(&paths.stdout)?.into()
    });
    stdio.stderr = Some(if paths.stderr.is_empty() {
        dev_null()?
    } else {
        open_fifo_rw(&paths.stderr)?.into()
    });
    Ok(Prepared {
        stdio,
        console: None,
        state,
    })
}

impl IoState {
    /// Take the pty master from the console socket and start copying (terminal only).
    pub fn attach_console(&mut self, receiver: &ConsoleReceiver, paths: &IoPaths) -> Result<()> {
        let master = File::from(receiver.receive()?);
        if !paths.stdout.is_empty() {
            let mut out = open_fifo_rw(&paths.stdout)?;
            let mut from = master.try_clone().map_err(|e| Error::io("pty master", e))?;
            self.output = std::thread::Builder::new()
                .name("pty-out".into())
                .spawn(move || {
                    let mut buf = [0u8; 8192];
                    // EIO once the last slave closes: the process is gone.
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                })
                .ok();
        }
        if !paths.stdin.is_empty() {
            let to = master.try_clone().map_err(|e| Error::io("pty master", e))?;
            self.stdin = Arc::new(Mutex::new(Some(to)));
            feed_stdin(paths.stdin.clone(), Arc::clone(&self.stdin));
        }
        self.console = Some(master);
        Ok(())
    }

    /// Set the pty's window size.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(master) = &self.console else {
            return Err(Error::FailedPrecondition(
                "the process has no terminal to resize".into(),
            ));
        };
        let (rows, cols) = (
            height.min(u16::MAX as u32) as u16,
            width.min(u16::MAX as u32) as u16,
        );
        hull_container::console::set_window_size(master.as_fd(), rows, cols)
            .map_err(|e| Error::io("pty master", e))
    }

    /// Close the process' stdin (`CloseIO`).
    pub fn close_stdin(&self) {
        if let Ok(mut g) = self.stdin.lock() {
            if let Some(w) = g.take() {
                if is_tty(&w) {
                    let mut w = w;
                    let _ = w.write_all(&[4]);
                }
            }
        }
        self.unblock_stdin();
    }

    /// End a stdin copy thread still waiting for containerd to open the FIFO.
    fn unblock_stdin(&self) {
        if self.stdin_path.is_empty() {
            return;
        }
        // Opening the write side completes the reader's blocking open; it then reads EOF.
        let _ = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.stdin_path);
    }

    /// The process has exited: let its output drain (bounded) and release stdin.
    pub fn finish(&mut self, limit: Duration) {
        if let Some(h) = self.output.take() {
            let deadline = Instant::now() + limit;
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        // The master stays open until the process is deleted: a late ResizePty is harmless.
        self.close_stdin();
    }
}
