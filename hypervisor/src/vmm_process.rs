//! The VMM process a backend runs (QEMU, hull-vmm), owned by its handle: it never outlives
//! the handle (killed and reaped on drop) nor this process (`PR_SET_PDEATHSIG`). It also
//! holds the boot wait: watching the VMM while the guest's agent comes up.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_agent_client::{AgentChannel, AgentClient, AgentClientError};

use crate::error::{HypervisorError, Result};

/// The child and the thread that spawned it. PR_SET_PDEATHSIG fires when the *thread* that
/// forked exits, so a dedicated thread forks the child and lives until it is reaped.
#[derive(Debug)]
struct OwnedChild {
    child: Child,
    what: &'static str,
    keeper: Option<std::thread::JoinHandle<()>>,
    release: Option<mpsc::Sender<()>>,
}

impl OwnedChild {
    /// Spawns `cmd` (named `what` in logs) from a keeper thread; the child inherits `inherit`
    /// (open fds of this process, close-on-exec here) by their numbers, and no other fd.
    /// The caller keeps them open until this returns.
    fn spawn(
        mut cmd: Command,
        what: &'static str,
        inherit: Vec<RawFd>,
    ) -> std::io::Result<OwnedChild> {
        let (tx, rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let keeper = std::thread::Builder::new()
            .name(format!("{what}-keeper"))
            .spawn(move || {
                // SAFETY: getpid(2) has no preconditions.
                let parent = unsafe { libc::getpid() };
                // SAFETY: the closure runs in the forked child before exec and calls only
                // async-signal-safe functions (prctl, getppid, _exit, fcntl), allocating
                // nothing (`inherit` was built before the fork). The fds it makes inheritable
                // are the child's copies of fds the caller holds open across the spawn.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The parent may have died before prctl took effect.
                        if libc::getppid() != parent {
                            libc::_exit(1);
                        }
                        for &fd in &inherit {
                            let flags = libc::fcntl(fd, libc::F_GETFD);
                            if flags < 0
                                || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                            {
                                return Err(std::io::Error::last_os_error());
                            }
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
    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.release_keeper();
        status
    }

    /// Waits up to `bound` for the child to exit on its own.
    fn wait_exit_for(&mut self, bound: Duration) -> Option<ExitStatus> {
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
    fn release_keeper(&mut self) {
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

/// Where the logs of failed VM starts are kept.
pub(crate) const FAILED_BOOT_LOGS: &str = "/var/log/hull/failed-boots";
/// How many failed starts' logs are kept.
const FAILED_BOOT_KEEP: usize = 20;

/// Removes the oldest entries of `dir` (by name: they start with a timestamp) beyond `keep`.
fn prune_oldest(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for old in &names[..excess] {
        let _ = std::fs::remove_dir_all(old);
    }
}

/// A backend's VMM process (`what`: "qemu", "hull-vmm"): started, watched, stopped, and
/// waited on while its guest boots.
#[derive(Debug)]
pub(crate) struct VmmProcess {
    what: &'static str,
    /// The VMM's own stderr (why it refused to start).
    own_log: PathBuf,
    /// The guest's console.
    console_log: PathBuf,
    child: Option<OwnedChild>,
    exit: Option<ExitStatus>,
    stopped: bool,
    /// The logs kept when the VM was found ended by itself (kept once).
    kept_after_end: Option<PathBuf>,
}

impl VmmProcess {
    /// A VMM named `what` whose stderr goes to `own_log` and whose guest writes its console
    /// to `console_log`; nothing runs until [`VmmProcess::spawn`].
    pub(crate) fn new(what: &'static str, own_log: PathBuf, console_log: PathBuf) -> Self {
        VmmProcess {
            what,
            own_log,
            console_log,
            child: None,
            exit: None,
            stopped: false,
            kept_after_end: None,
        }
    }

    /// Starts `cmd` (the program `binary`), which inherits the fds `inherit` by their numbers
    /// (the caller holds them open meanwhile); returns when it started.
    pub(crate) fn spawn(
        &mut self,
        cmd: Command,
        binary: &str,
        inherit: Vec<RawFd>,
    ) -> Result<Instant> {
        tracing::debug!(?cmd, ?inherit, "starting {}", self.what);
        let started = Instant::now();
        let child = OwnedChild::spawn(cmd, self.what, inherit).map_err(|source| {
            HypervisorError::Spawn {
                binary: binary.to_string(),
                source,
            }
        })?;
        tracing::info!(pid = child.child.id(), "{} started", self.what);
        self.child = Some(child);
        self.exit = None;
        self.stopped = false;
        self.kept_after_end = None;
        Ok(started)
    }

    /// The VMM's pid while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.child.id())
    }

    /// Whether it was started and not yet found dead, killed or stopped.
    pub(crate) fn started(&self) -> bool {
        self.child.is_some()
    }

    /// `Ok` while the VMM runs, else why not. A VMM found dead is recorded and its handle
    /// dropped.
    fn alive(&mut self) -> std::result::Result<(), String> {
        let what = self.what;
        let Some(c) = self.child.as_mut() else {
            return Err(match (self.stopped, self.exit) {
                (true, _) => "stopped".to_string(),
                (false, Some(s)) => format!("{what} exited: {s}"),
                (false, None) => "not booted".to_string(),
            });
        };
        match c.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(s)) => {
                self.exit = Some(s);
                if let Some(mut c) = self.child.take() {
                    c.release_keeper();
                }
                tracing::warn!(status = %s, "{what} exited under a running vm");
                Err(format!("{what} exited: {s}"))
            }
            Err(e) => Err(format!("{what} state unknown: {e}")),
        }
    }

    /// Errors ([`HypervisorError::NotRunning`]) unless the VMM runs.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        self.alive().map_err(|status| HypervisorError::NotRunning {
            status,
            console_log: self.console_log.clone(),
        })
    }

    /// After a call into the running guest failed: `Some` when the VMM ended by itself (it
    /// exited, and was not stopped), waiting up to `bound` for an exit under way (a guest that
    /// reset or panicked closes its connections just before its VMM exits). The VMM's and the
    /// guest's logs are then kept, once, as a failed start's are ([`FAILED_BOOT_LOGS`]), and
    /// the error ([`HypervisorError::NotRunning`]) says how it ended and names the kept
    /// console log.
    pub(crate) fn ended_by_itself(&mut self, bound: Duration) -> Option<HypervisorError> {
        if self.stopped {
            return None;
        }
        if self.child.is_some() {
            self.wait_exit(bound);
        }
        let status = self.alive().err()?;
        // Never started, or its state is unknown: nothing ended by itself.
        self.exit?;
        if self.kept_after_end.is_none() {
            self.kept_after_end = Some(self.keep_logs("ended"));
        }
        Some(HypervisorError::NotRunning {
            status,
            console_log: self.kept_after_end.clone()?,
        })
    }

    /// Kills and reaps the VMM now; records how it ended (a status already recorded stays).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let status = c.kill_and_reap();
            self.exit = self.exit.or(status);
        }
    }

    /// Copies the VMM's log and the guest's console log of a failed start (`why`) to a
    /// directory of their own under [`FAILED_BOOT_LOGS`], which keeps the newest
    /// [`FAILED_BOOT_KEEP`]: the VM's own directory goes with the failed pod. Returns the kept
    /// console log (the original's path when nothing could be kept).
    pub(crate) fn keep_logs(&self, why: &str) -> PathBuf {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let dir = Path::new(FAILED_BOOT_LOGS).join(format!(
            "{stamp}-{}-{}-{why}",
            std::process::id(),
            self.what
        ));
        let kept = std::fs::create_dir_all(&dir).and_then(|()| {
            for (from, name) in [
                (&self.own_log, "vmm.log"),
                (&self.console_log, "console.log"),
            ] {
                match std::fs::copy(from, dir.join(name)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(dir.join("console.log"))
        });
        prune_oldest(Path::new(FAILED_BOOT_LOGS), FAILED_BOOT_KEEP);
        match kept {
            Ok(p) => {
                tracing::warn!(logs = ?dir, "{} failed ({why}); its logs are kept", self.what);
                p
            }
            Err(e) => {
                tracing::warn!(dir = ?dir, "keep the logs of a failed start: {e}");
                self.console_log.clone()
            }
        }
    }

    /// Kills the VMM (if it still runs) and marks the VM stopped.
    pub(crate) fn stop(&mut self) {
        self.kill();
        self.stopped = true;
    }

    /// Waits up to `bound` for the VMM to exit on its own; records the status.
    pub(crate) fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let s = self.child.as_mut()?.wait_exit_for(bound);
        if s.is_some() {
            self.exit = s;
        }
        s
    }

    /// The boot wait: waits until `started + boot_timeout` for the agent on `channel` to
    /// answer, watching the VMM meanwhile, and returns the connection that answered (calls
    /// bounded by `call_timeout`, one `Check` attempt by `attempt`). A VMM that exits fails it at once
    /// ([`HypervisorError::ExitedDuringBoot`] with the VMM's last stderr line, or the guest's
    /// last console line); otherwise the VMM is killed on a failure:
    /// [`HypervisorError::BootTimeout`] past the deadline, `ExitedDuringBoot` when the agent
    /// answers NOT_SERVING or the channel fails for good.
    pub(crate) fn wait_for_agent(
        &mut self,
        channel: &AgentChannel,
        started: Instant,
        boot_timeout: Duration,
        call_timeout: Duration,
        attempt: Duration,
    ) -> Result<AgentClient> {
        let pid = self.pid().unwrap_or_default();
        let waited = AgentClient::wait_ready(
            channel,
            started + boot_timeout,
            call_timeout,
            attempt,
            || self.alive(),
        );
        let e = match waited {
            Ok(agent) => {
                tracing::info!(pid, boot_time = ?started.elapsed(), "guest agent is serving");
                return Ok(agent);
            }
            Err(e) => e,
        };
        // A VMM that exited explains any failure: say why it did.
        let exited =
            matches!(e, AgentClientError::Gone { .. }) || (self.started() && self.alive().is_err());
        if exited {
            return Err(HypervisorError::ExitedDuringBoot {
                status: self.exit.map(|s| s.to_string()).unwrap_or_default(),
                reason: self.boot_failure_reason(),
                console_log: self.keep_logs("exited"),
            });
        }
        self.kill();
        let console_log = self.keep_logs("no-answer");
        Err(match e {
            AgentClientError::NotReady { .. } => {
                tracing::warn!(
                    pid,
                    ?boot_timeout,
                    "guest agent did not answer; {} killed",
                    self.what
                );
                HypervisorError::BootTimeout {
                    timeout: boot_timeout,
                    console_log: console_log.clone(),
                }
            }
            AgentClientError::NotServing => HypervisorError::ExitedDuringBoot {
                status: "killed".into(),
                reason: "guest agent answered Check with NOT_SERVING".into(),
                console_log: console_log.clone(),
            },
            e => HypervisorError::ExitedDuringBoot {
                status: "killed".into(),
                reason: format!("agent channel failed: {e}"),
                console_log: console_log.clone(),
            },
        })
    }

    /// Why a boot failed: the last line the VMM printed, else the guest's last console line.
    fn boot_failure_reason(&self) -> String {
        let last_line = |p: &PathBuf| {
            std::fs::read_to_string(p).ok().and_then(|t| {
                t.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            })
        };
        last_line(&self.own_log)
            .or_else(|| last_line(&self.console_log).map(|l| format!("guest: {l}")))
            .unwrap_or_else(|| "no output".into())
    }
}
