//! Foreground `run`/`exec` with `terminal: true` and no `--console-socket`: hull
//! receives the pty master itself (`hull_container::console`) and copies between it and its
//! own stdio, as runc does; its own terminal is raw meanwhile.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::termios::{self, SetArg, Termios};

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

/// hull's own terminal size (stdin's) as a process's `consoleSize`, so that the process's pty
/// has it from the start (`None` when stdin is no terminal).
pub fn console_size() -> Option<oci_spec::runtime::Box> {
    let (rows, cols) = stdin_size()?;
    oci_spec::runtime::BoxBuilder::default()
        .height(u64::from(rows))
        .width(u64::from(cols))
        .build()
        .ok()
}

/// The window size (rows, columns) of hull's own terminal (stdin), if it has one.
fn stdin_size() -> Option<(u16, u16)> {
    hull_container::console::window_size(std::io::stdin().as_fd()).filter(|s| *s != (0, 0))
}

/// Keeps the pty behind `master` the size of hull's own terminal (stdin): now, and on every
/// change (polled: SIGWINCH is the container's, forwarded to it), until `done`.
fn follow_window_size(master: std::fs::File, done: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    let apply = move |(rows, cols): (u16, u16)| {
        let _ = hull_container::console::set_window_size(master.as_fd(), rows, cols);
    };
    let Some(mut last) = stdin_size() else {
        return; // stdin is no terminal: nothing to follow
    };
    apply(last);
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if let Some(size) = stdin_size().filter(|s| *s != last) {
                apply(size);
                last = size;
            }
        }
    });
}

/// Copy stdin -> master and master -> stdout on background threads, keeping the pty the
/// size of hull's terminal. The output thread is returned so the caller can drain it after
/// the process exits.
pub fn proxy(master: OwnedFd) -> std::thread::JoinHandle<()> {
    let out = std::fs::File::from(master);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Ok(m) = out.try_clone() {
        follow_window_size(m, done.clone());
    }
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
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    })
}
