//! Creating a container and exec'ing into one (the calls that clone container processes)
//! in a fresh, single-threaded helper: a many-threaded program (the shim) re-executes itself
//! with the hidden verb `sandbox-spawn` and calls [`helper_main`] there.
//!
//! Why: libcontainer clones with a raw `clone3` and its children end with
//! `std::process::exit`, which takes a std-internal lock that threads also take when they
//! start or end. In a many-threaded program (the shim's ttrpc starts and ends threads on its own) a
//! child cloned while another thread held that lock hangs forever. A freshly exec'd
//! helper has one thread, so its clones cannot inherit a held lock.
//!
//! The helper's standard streams are the new process' streams (the `Sandbox` API's
//! "inherit"); its answer is one JSON line on fd 3. It exits right after, so the container
//! processes it made are re-parented to the caller, their child subreaper, which waits for
//! them by pid.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio as ProcStdio};

use oci_spec::runtime::Process as OciProcess;
use serde::{Deserialize, Serialize};

use crate::error::{chain, Error, ErrorKind, Result};
use crate::options::{CreateOptions, ExecOptions, Stdio};
use crate::root::ContainerRoot;

/// The hidden verb containerd never passes.
pub const HELPER_VERB: &str = "sandbox-spawn";
/// Environment variable carrying the helper's request.
const REQUEST_ENV: &str = "HULL_SHIM_SPAWN";
/// The fd the helper answers on.
const REPLY_FD: i32 = 3;

/// The caller's own working directory (the shim's: its first bundle), where helpers start:
/// the process-wide cwd may be elsewhere for a moment while libcontainer starts a container.
static HELPER_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Record the caller's working directory; call once, before any container exists.
pub fn remember_cwd() {
    if let Ok(d) = std::env::current_dir() {
        let _ = HELPER_DIR.set(d);
    }
}

/// Which state root the helper works in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostTarget {
    /// State root.
    pub root: PathBuf,
    /// Cgroups through systemd.
    pub systemd_cgroup: bool,
}

/// What the helper is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// `Sandbox::create`.
    Create {
        /// Container id.
        id: String,
        /// Bundle directory.
        bundle: PathBuf,
        /// Console socket for a terminal.
        console_socket: Option<PathBuf>,
    },
    /// `Sandbox::exec`.
    Exec {
        /// Container id.
        id: String,
        /// The process to run.
        process: Box<OciProcess>,
        /// Console socket for a terminal.
        console_socket: Option<PathBuf>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    target: HostTarget,
    request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Pid(i32),
    Failed { kind: ErrorKind, message: String },
}

/// Run `request` in a helper whose standard streams are `stdio` (`None` = /dev/null).
/// Returns the new process' pid, which is the shim's child once this returns.
pub fn run(target: &HostTarget, request: Request, stdio: Stdio) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::io("/proc/self/exe", e))?;
    let envelope = serde_json::to_string(&Envelope {
        target: target.clone(),
        request,
    })
    .map_err(|e| Error::InvalidInput(format!("spawn request: {e}")))?;
    let (reply_r, reply_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("spawn reply pipe", e))?;
    let to = |fd: Option<OwnedFd>| fd.map(ProcStdio::from).unwrap_or_else(ProcStdio::null);
    let mut cmd = Command::new(exe);
    if let Some(dir) = HELPER_DIR.get() {
        cmd.current_dir(dir);
    }
    cmd.arg(HELPER_VERB)
        .env(REQUEST_ENV, envelope)
        .stdin(to(stdio.stdin))
        .stdout(to(stdio.stdout))
        .stderr(to(stdio.stderr));
    let w = reply_w.as_raw_fd();
    // SAFETY: runs in the forked child before exec; dup2(2) is async-signal-safe and
    // the closure allocates nothing. The duplicate on fd 3 has no close-on-exec flag.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(w, REPLY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("spawn the sandbox helper", e))?;
    drop(cmd);
    drop(reply_w);
    // One line: the container's processes keep copies of fd 3 until they exec.
    let mut line = String::new();
    let read = BufReader::new(std::fs::File::from(reply_r)).read_line(&mut line);
    let status = child.wait();
    if let Err(e) = read {
        return Err(Error::io("sandbox helper reply", e));
    }
    let reply: Reply = serde_json::from_str(line.trim()).map_err(|_| Error::Spawn {
        kind: ErrorKind::Other,
        message: format!("the sandbox helper died without an answer ({status:?})"),
    })?;
    match reply {
        Reply::Pid(pid) => Ok(pid),
        Reply::Failed { kind, message } => Err(Error::Spawn { kind, message }),
    }
}

/// The helper process: perform the request, answer on fd 3, exit. The caller sets up its
/// logging first.
pub fn helper_main() -> ! {
    // SAFETY: fd 3 was set up by `run` for this process alone; nothing else owns it.
    let mut reply_to = unsafe { std::fs::File::from_raw_fd(REPLY_FD) };
    let reply = match std::env::var(REQUEST_ENV)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<Envelope>(&t).map_err(|e| e.to_string()))
    {
        Err(e) => Reply::Failed {
            kind: ErrorKind::Invalid,
            message: format!("sandbox helper: bad request: {e}"),
        },
        Ok(Envelope { target, request }) => {
            let sandbox = ContainerRoot::new(&target.root, target.systemd_cgroup);
            let result = match request {
                Request::Create {
                    id,
                    bundle,
                    console_socket,
                } => sandbox.create(CreateOptions {
                    id,
                    bundle,
                    console_socket,
                    detach: true,
                    ..Default::default()
                }),
                Request::Exec {
                    id,
                    process,
                    console_socket,
                } => sandbox.exec(
                    &id,
                    ExecOptions {
                        process: *process,
                        console_socket,
                        detach: true,
                        ..Default::default()
                    },
                ),
            };
            match result {
                Ok(pid) => Reply::Pid(pid),
                Err(e) => Reply::Failed {
                    kind: e.kind(),
                    message: chain(&e),
                },
            }
        }
    };
    let mut line = serde_json::to_string(&reply).unwrap_or_default();
    line.push('\n');
    let _ = reply_to.write_all(line.as_bytes());
    // SAFETY: _exit(2) ends the process at once, without running std's cleanup.
    unsafe { libc::_exit(0) }
}
