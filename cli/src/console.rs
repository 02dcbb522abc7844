//! Foreground `run`/`exec` with `terminal: true` and no `--console-socket`: hull
//! receives the pty master itself (`hull_container::console`) and copies between it and its
//! own stdio, as runc does; its own terminal is raw meanwhile.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

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
