//! Reaping without stealing exits.
//!
//! The shim is the child subreaper of everything it starts. Each container process it
//! owns (an init or an exec) has one waiter thread blocked in `Containers::wait(pid)`, a
//! waitpid on that pid alone. Anything else that becomes our zombie (an orphan, an
//! intermediate process nobody waits for) is reaped here, on SIGCHLD, by pid: never
//! with `waitpid(-1)`, and never while a pod call that may fork and wait for its own
//! children (libcontainer's create and exec, hooks) is in flight. Those calls hold the
//! spawn gate shared; the reaper takes it exclusively. A pid returned by such a call is
//! claimed before the gate is released, so the reaper never sees it unclaimed.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// The reaper of unclaimed children.
#[derive(Default)]
pub struct Reaper {
    gate: RwLock<()>,
    claimed: Mutex<HashSet<i32>>,
}

impl Reaper {
    /// Start reaping on SIGCHLD in a background thread.
    pub fn start() -> Arc<Self> {
        let reaper = Arc::new(Self::default());
        let r = Arc::clone(&reaper);
        match signal_hook::iterator::Signals::new([libc::SIGCHLD]) {
            Ok(mut signals) => {
                let spawned = std::thread::Builder::new()
                    .name("reaper".into())
                    .spawn(move || {
                        for _ in signals.forever() {
                            r.reap_unclaimed();
                        }
                    });
                if let Err(e) = spawned {
                    warn!("cannot start the reaper thread: {e}");
                }
            }
            Err(e) => warn!("cannot watch SIGCHLD, orphans stay zombies: {e}"),
        }
        reaper
    }

    /// Hold this while calling into the pod (it may fork and wait for its own children).
    pub fn spawning(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read()
    }

    /// Mark `pid` as waited for by its own waiter; call with the gate held.
    pub fn claim(&self, pid: i32) {
        self.claimed.lock().insert(pid);
    }

    /// The waiter of `pid` has reaped it.
    pub fn release(&self, pid: i32) {
        self.claimed.lock().remove(&pid);
    }

    /// Reap every zombie child that no waiter owns.
    pub fn reap_unclaimed(&self) {
        let _exclusive = self.gate.write();
        let claimed = self.claimed.lock().clone();
        for pid in zombie_children() {
            if claimed.contains(&pid) {
                continue;
            }
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => debug!(pid, ?status, "reaped an unclaimed child"),
                Err(e) => debug!(pid, "reap: {e}"),
            }
        }
    }
}

/// Pids of this process' children that are zombies now.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut pids = Vec::new();
    // Children of every thread (CONFIG_PROC_CHILDREN); else scan /proc for our ppid.
    let tasks = std::fs::read_dir("/proc/self/task");
    let mut have_children_files = false;
    if let Ok(tasks) = tasks {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                have_children_files = true;
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if !have_children_files {
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if stat_field(pid, 1).as_deref() == Some(me.as_str()) {
                    pids.push(pid);
                }
            }
        }
    }
    pids.retain(|&p| stat_field(p, 0).as_deref() == Some("Z"));
    pids
}

/// Field `n` after the command name in /proc/<pid>/stat: 0 = state, 1 = ppid.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_children_are_left_to_their_waiter() {
        let reaper = Reaper::default();
        // Reaped below by `reap_unclaimed`, not by `Child::wait`.
        #[allow(clippy::zombie_processes)]
        let pid = std::process::Command::new("true").spawn().unwrap().id() as i32;
        reaper.claim(pid);
        // Let it become a zombie, then reap: it must stay for its owner.
        while stat_field(pid, 0).as_deref() != Some("Z") {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        reaper.reap_unclaimed();
        assert_eq!(stat_field(pid, 0).as_deref(), Some("Z"));
        reaper.release(pid);
        reaper.reap_unclaimed();
        assert_eq!(stat_field(pid, 0), None, "unclaimed zombie reaped");
    }
}
