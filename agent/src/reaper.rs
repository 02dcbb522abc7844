//! Zombie reaping for the agent as PID 1 (or as a child subreaper) and exit statuses of the
//! processes the agent started.
//!
//! libcontainer waits for its own helper processes with `waitpid(pid)`; reaping them behind its
//! back would fail container creation. So every process creation runs under [`Reaper::fork_guard`],
//! and the reaper only reaps while it holds that same lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

/// Exit status table and reaping lock.
#[derive(Default)]
pub struct Reaper {
    fork_lock: Mutex<()>,
    table: Mutex<Table>,
    exited: Condvar,
}

#[derive(Default)]
struct Table {
    watched: HashSet<i32>,
    exits: HashMap<i32, i32>,
}

/// Held while processes are being created; the reaper stays away meanwhile.
pub struct ForkGuard<'a> {
    _held: MutexGuard<'a, ()>,
}

/// Converts a wait status into a shell-style exit code (128 + signal when killed).
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

impl Reaper {
    /// A reaper with an empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Reaper::default())
    }

    /// Keeps the reaper away while a process is being created and registered.
    pub fn fork_guard(&self) -> ForkGuard<'_> {
        ForkGuard {
            _held: self.fork_lock.lock(),
        }
    }

    /// Records the exit status of `pid` when it is reaped. Call under the fork guard.
    pub fn watch(&self, pid: i32) {
        let mut t = self.table.lock();
        t.exits.remove(&pid);
        t.watched.insert(pid);
    }

    /// Forgets a process (its container or exec was removed).
    pub fn forget(&self, pid: i32) {
        let mut t = self.table.lock();
        t.watched.remove(&pid);
        t.exits.remove(&pid);
    }

    /// The exit code of `pid` if it has exited.
    pub fn try_status(&self, pid: i32) -> Option<i32> {
        self.table.lock().exits.get(&pid).copied()
    }

    /// Blocks until `pid` exits and returns its exit code; `None` on timeout.
    pub fn wait(&self, pid: i32, timeout: Option<Duration>) -> Option<i32> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut t = self.table.lock();
        loop {
            if let Some(code) = t.exits.get(&pid) {
                return Some(*code);
            }
            let step = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    left.min(Duration::from_secs(1))
                }
                None => Duration::from_secs(1),
            };
            self.exited.wait_for(&mut t, step);
        }
    }

    /// Reaps every exited child; records watched ones and wakes their waiters.
    pub fn reap_all(&self) {
        let _guard = self.fork_lock.lock();
        let mut any = false;
        loop {
            let mut status = 0;
            // SAFETY: waitpid with WNOHANG on any child; `status` is a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let mut t = self.table.lock();
            if t.watched.remove(&pid) {
                let code = exit_code(status);
                tracing::debug!(pid, code, "process exited");
                t.exits.insert(pid, code);
                any = true;
            }
        }
        if any {
            self.exited.notify_all();
        }
    }

    /// Starts the reaping thread, woken by SIGCHLD.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                me.reap_all();
                // Coalesced SIGCHLDs still wake this loop once; reap_all takes every zombie.
                for _ in signals.forever() {
                    me.reap_all();
                }
            })?;
        Ok(())
    }
}
