//! A hypervisor process owned by its handle: it never outlives the handle (killed and reaped
//! on drop) nor this process (`PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The child and the thread that spawned it. PR_SET_PDEATHSIG fires when the *thread* that
/// forked exits, so a dedicated thread forks the child and lives until it is reaped.
#[derive(Debug)]
pub(crate) struct OwnedChild {
    pub(crate) child: Child,
    what: &'static str,
    keeper: Option<std::thread::JoinHandle<()>>,
    release: Option<mpsc::Sender<()>>,
}

impl OwnedChild {
    /// Spawns `cmd` (named `what` in logs) from a keeper thread.
    pub(crate) fn spawn(mut cmd: Command, what: &'static str) -> std::io::Result<OwnedChild> {
        let (tx, rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let keeper = std::thread::Builder::new()
            .name(format!("{what}-keeper"))
            .spawn(move || {
                // SAFETY: getpid(2) has no preconditions.
                let parent = unsafe { libc::getpid() };
                // SAFETY: the closure runs in the forked child before exec and calls only
                // async-signal-safe functions (prctl, getppid, _exit).
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The parent may have died before prctl took effect.
                        if libc::getppid() != parent {
                            libc::_exit(1);
                        }
                        Ok(())
                    });
                }
                let spawned = cmd.spawn();
                let ok = spawned.is_ok();
                let _ = tx.send(spawned);
                if ok {
                    // Stay alive until the handle has reaped the child (or is gone).
                    let _ = released.recv();
                }
            })?;
        let child = rx
            .recv()
            .map_err(|_| std::io::Error::other(format!("{what}-keeper thread died")))??;
        Ok(OwnedChild {
            child,
            what,
            keeper: Some(keeper),
            release: Some(release),
        })
    }

    /// Kills and reaps the child; its exit status if it could be collected.
    pub(crate) fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.release_keeper();
        status
    }

    /// Waits up to `bound` for the child to exit on its own.
    pub(crate) fn wait_exit_for(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets the keeper thread end (call once the child is reaped).
    pub(crate) fn release_keeper(&mut self) {
        drop(self.release.take());
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            tracing::debug!(pid = self.child.id(), what = self.what, "killing on drop");
        }
        self.kill_and_reap();
    }
}

/// The state of a backend's hypervisor process (`what`: "qemu", "hull-vmm"), as
/// `Hypervisor::check_running` reports it: `Ok` while it runs, else why not. A process found
/// dead is recorded in `exit` and its handle dropped.
pub(crate) fn running_status(
    child: &mut Option<OwnedChild>,
    exit: &mut Option<ExitStatus>,
    stopped: bool,
    what: &str,
) -> Result<(), String> {
    let Some(c) = child.as_mut() else {
        return Err(match (stopped, exit) {
            (true, _) => "stopped".to_string(),
            (false, Some(s)) => format!("{what} exited: {s}"),
            (false, None) => "not booted".to_string(),
        });
    };
    match c.child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(s)) => {
            *exit = Some(s);
            if let Some(mut c) = child.take() {
                c.release_keeper();
            }
            tracing::warn!(status = %s, "{what} exited under a running vm");
            Err(format!("{what} exited: {s}"))
        }
        Err(e) => Err(format!("{what} state unknown: {e}")),
    }
}

/// Kills and reaps a backend's hypervisor process now; records how it ended (a status already
/// recorded stays).
pub(crate) fn kill(child: &mut Option<OwnedChild>, exit: &mut Option<ExitStatus>) {
    if let Some(mut c) = child.take() {
        let status = c.kill_and_reap();
        *exit = exit.or(status);
    }
}

/// Waits up to `bound` for a backend's hypervisor process to exit on its own; records the
/// status.
pub(crate) fn wait_exit(
    child: &mut Option<OwnedChild>,
    exit: &mut Option<ExitStatus>,
    bound: Duration,
) -> Option<ExitStatus> {
    let s = child.as_mut()?.wait_exit_for(bound);
    if s.is_some() {
        *exit = s;
    }
    s
}

/// Why a boot failed: the last line the hypervisor printed to `own_log`, else the guest's
/// last console line.
pub(crate) fn boot_failure_reason(own_log: &Path, console_log: &Path) -> String {
    let last_line = |p: &Path| {
        std::fs::read_to_string(p).ok().and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
    };
    last_line(own_log)
        .or_else(|| last_line(console_log).map(|l| format!("guest: {l}")))
        .unwrap_or_else(|| "no output".into())
}
