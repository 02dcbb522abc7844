//! Creating a container and exec'ing into one (the calls that clone container processes) in a
//! single-threaded helper process. Both of hull's many-threaded callers go through here: the
//! shim (containerd-shim-hull-v2, the host pod's `Spawner::Helper`) and hull-agent in a pod's
//! VM; the `hull` CLI, single-threaded, creates in process.
//!
//! Why: libcontainer clones with a raw `clone3`, bypassing libc's fork handling, and its
//! children end with `std::process::exit`, which takes a std-internal lock that threads also
//! take when they start or end (malloc's and stdio's locks are no better). In a many-threaded
//! program (ttrpc starts and ends threads on its own) a child cloned while another thread held
//! such a lock hangs forever. A helper with one thread has no other thread to hold one.
//!
//! Two ways to that helper, with the same request and answer (`job.rs`):
//! - re-exec (the default): the caller's binary runs again with the hidden verb
//!   [`HELPER_VERB`], and its `main` calls [`helper_main`] before anything else. The request
//!   travels in the environment, the answer on fd 3.
//! - the zygote ([`start_zygote`], `zygote.rs`): a copy of the caller forked while it still
//!   had one thread, which forks a helper per request and so saves the exec. hull-agent starts
//!   one (an exec of it costs ~0.25 s under TCG); the shim does not (a host exec is cheap, and a
//!   zygote would be one more resident process per pod).
//!
//! Either way the new process' standard streams are the caller's [`Stdio`] (an unset one is
//! /dev/null): the re-exec'd helper's own, handed on by the zygote. The helper exits right after
//! answering, so the container processes it made are re-parented to the caller (PID 1 or a
//! child subreaper), which waits for them by pid.
//! A caller that reaps with `waitpid(-1)` keeps its reaper away while a helper runs: the
//! re-exec'd helper is its child, waited for by pid.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio as ProcStdio};

use nix::sys::socket::MsgFlags;

use crate::error::{Error, ErrorKind, Result};
use crate::options::{CreateOptions, ExecOptions, Stdio};
use crate::root::ContainerRoot;

mod job;
mod zygote;

use job::{Job, Request};

pub use zygote::start as start_zygote;

/// The hidden verb that makes a binary the spawn helper (containerd never passes it).
pub const HELPER_VERB: &str = "sandbox-spawn";
/// Environment variable carrying the re-exec'd helper's request.
const REQUEST_ENV: &str = "HULL_SPAWN_REQUEST";
/// The fd the re-exec'd helper answers on.
const REPLY_FD: i32 = 3;

/// The caller's own working directory (the shim's: its first bundle), where re-exec'd helpers
/// start: the process-wide cwd may be elsewhere for a moment while libcontainer starts a
/// container.
static HELPER_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Record the caller's working directory; call once, before any container exists.
pub fn remember_cwd() {
    if let Ok(d) = std::env::current_dir() {
        let _ = HELPER_DIR.set(d);
    }
}

impl ContainerRoot {
    /// [`ContainerRoot::create`] in a spawn helper (see [`crate::spawn`]). The helper reads and
    /// checks the bundle's spec whatever `_bundle_checked` says (what libcontainer is given
    /// depends on it: see `launch.rs`), so a long-lived caller (the shim) still keeps no
    /// spec parsing of its own. Always detached; `preserve_fds` cannot cross to the helper.
    /// Returns the init pid, a child of the caller once this returns.
    pub fn create_in_helper(&self, opts: CreateOptions, _bundle_checked: bool) -> Result<i32> {
        no_extra_fds(opts.preserve_fds)?;
        let job = Job::Create {
            id: opts.id,
            bundle: opts.bundle,
            pid_file: opts.pid_file,
            console_socket: opts.console_socket,
            no_pivot: opts.no_pivot,
        };
        self.in_helper(job, opts.stdio)
    }

    /// [`ContainerRoot::exec`] in a spawn helper (see [`crate::spawn`]). Always detached;
    /// `preserve_fds` cannot cross to the helper. Returns the new process' pid, a child of the
    /// caller once this returns.
    pub fn exec_in_helper(&self, id: &str, opts: ExecOptions) -> Result<i32> {
        no_extra_fds(opts.preserve_fds)?;
        let process_json = serde_json::to_string(&opts.process)
            .map_err(|e| Error::InvalidInput(format!("exec process: {e}")))?;
        let job = Job::Exec {
            id: id.to_string(),
            process_json,
            pid_file: opts.pid_file,
            console_socket: opts.console_socket,
        };
        self.in_helper(job, opts.stdio)
    }

    fn in_helper(&self, job: Job, stdio: Stdio) -> Result<i32> {
        let request = serde_json::to_string(&Request {
            root: self.root().to_path_buf(),
            systemd_cgroup: self.systemd_cgroup(),
            job,
        })
        .map_err(|e| Error::InvalidInput(format!("spawn request: {e}")))?;
        match zygote::run(&request, stdio) {
            Ok(result) => result,
            Err(stdio) => reexec(&request, stdio),
        }
    }
}

fn no_extra_fds(preserve_fds: i32) -> Result<()> {
    if preserve_fds == 0 {
        Ok(())
    } else {
        Err(Error::Unsupported(
            "extra file descriptors (--preserve-fds) cannot be passed to the spawn helper".into(),
        ))
    }
}

/// The helper's `main` (the hidden verb [`HELPER_VERB`]): do the request, answer on fd 3,
/// exit. The caller sets up its logging first, if any.
pub fn helper_main() -> ! {
    // SAFETY: `reexec` set up fd 3 for this process alone; nothing else here owns it.
    let reply_to = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(REPLY_FD) };
    let reply = match std::env::var(REQUEST_ENV) {
        Ok(request) => job::serve(request.as_bytes(), Stdio::default()),
        Err(e) => job::Reply::Failed {
            kind: ErrorKind::Invalid,
            message: format!("spawn helper: no request in {REQUEST_ENV}: {e}"),
        },
    };
    job::send_reply(reply_to.as_fd(), &reply);
    // SAFETY: _exit(2) ends the process at once, without running std's cleanup.
    unsafe { libc::_exit(0) }
}

/// Run `request` in this binary re-executed with [`HELPER_VERB`].
fn reexec(request: &str, stdio: Stdio) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::io("/proc/self/exe", e))?;
    let (mine, theirs) = job::seqpacket_pair()?;
    let to = |fd: Option<OwnedFd>| fd.map(ProcStdio::from).unwrap_or_else(ProcStdio::null);
    let mut cmd = Command::new(exe);
    if let Some(dir) = HELPER_DIR.get() {
        cmd.current_dir(dir);
    }
    cmd.arg(HELPER_VERB)
        .env(REQUEST_ENV, request)
        .stdin(to(stdio.stdin))
        .stdout(to(stdio.stdout))
        .stderr(to(stdio.stderr));
    let w = theirs.as_raw_fd();
    // SAFETY: runs in the forked child before exec; fcntl(2) and dup2(2) are
    // async-signal-safe and the closure allocates nothing. The answering socket ends up on
    // fd 3 without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if w == REPLY_FD {
                libc::fcntl(w, libc::F_SETFD, 0) >= 0
            } else {
                libc::dup2(w, REPLY_FD) >= 0
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("spawn the spawn helper", e))?;
    // The helper's stdio and answering end: ours to close now.
    drop(cmd);
    drop(theirs);
    // Wait first, then take the one answer if it is there: the container's processes hold
    // copies of fd 3 until they exec, so no end of file would tell that the helper died.
    let status = child.wait();
    match job::recv_reply(mine.as_fd(), MsgFlags::MSG_DONTWAIT) {
        Some(reply) => reply.into_result(),
        None => Err(Error::Spawn {
            kind: ErrorKind::Other,
            message: format!("the spawn helper ended without an answer ({status:?})"),
        }),
    }
}
