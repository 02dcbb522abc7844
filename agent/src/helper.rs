//! libcontainer's create and exec run in a short-lived, single-threaded helper process (the
//! agent binary re-executed), never in the agent itself.
//!
//! libcontainer clones its children with raw `clone3`, bypassing libc's fork handling; in the
//! many-threaded agent a child could inherit a lock (malloc, stdio, the thread list) held by
//! another thread at that instant and hang forever. A fresh process has one thread.
//! The container's processes end up children of the agent (PID 1 or subreaper) when the helper
//! exits, so the reaper still collects their exit statuses.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

use crate::process::ChildStdio;

/// The hidden first argument that turns `hull-agent` into the helper.
pub const HELPER_ARG: &str = "__libcontainer-helper";

/// What the helper is to do.
#[derive(Debug, Clone)]
pub enum Job {
    /// Create a container from a bundle.
    Create {
        /// Container id.
        id: String,
        /// Bundle directory (config.json).
        bundle: PathBuf,
        /// libcontainer's state root.
        lc_root: PathBuf,
        /// Use chroot instead of pivot_root.
        no_pivot: bool,
        /// Console socket when the process has a terminal.
        console: Option<PathBuf>,
    },
    /// Start a process in a running container.
    Exec {
        /// Container id.
        id: String,
        /// libcontainer's state root.
        lc_root: PathBuf,
        /// The OCI process JSON file.
        process: PathBuf,
        /// Console socket when the process has a terminal.
        console: Option<PathBuf>,
    },
}

impl Job {
    fn to_args(&self) -> Vec<String> {
        let console = |c: &Option<PathBuf>| {
            c.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        match self {
            Job::Create {
                id,
                bundle,
                lc_root,
                no_pivot,
                console: c,
            } => vec![
                "create".into(),
                id.clone(),
                bundle.display().to_string(),
                lc_root.display().to_string(),
                no_pivot.to_string(),
                console(c),
            ],
            Job::Exec {
                id,
                lc_root,
                process,
                console: c,
            } => vec![
                "exec".into(),
                id.clone(),
                process.display().to_string(),
                lc_root.display().to_string(),
                "false".into(),
                console(c),
            ],
        }
    }
}

/// In the agent: runs `job` in a helper process and returns the new process's pid, or the
/// helper's error message. Call under the reaper's fork guard.
pub fn run(job: &Job, stdio: Option<ChildStdio>) -> Result<i32, String> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(HELPER_ARG)
        .args(job.to_args())
        .arg(if stdio.is_some() { "stdio" } else { "nostdio" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = &stdio {
        let fds: [RawFd; 3] = [
            s.stdin.as_raw_fd(),
            s.stdout.as_raw_fd(),
            s.stderr.as_raw_fd(),
        ];
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe fcntl/dup2 on descriptors that are open in the child.
        unsafe {
            cmd.pre_exec(move || {
                // Move the sources out of the way first so that dup2 onto 3..5 cannot clobber
                // a source that happens to be numbered 3..5.
                let mut high = [0; 3];
                for (h, fd) in high.iter_mut().zip(fds) {
                    *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                    if *h < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, h) in high.iter().enumerate() {
                    if libc::dup2(*h, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("run libcontainer helper: {e}"))?;
    drop(stdio);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "libcontainer helper printed no pid".to_string())
}

/// In the helper: does the job and exits (pid on stdout, or the error on stderr).
pub fn helper_main(args: &[String]) -> ! {
    match helper(args) {
        Ok(pid) => {
            println!("{pid}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

fn helper(args: &[String]) -> Result<i32, String> {
    let [kind, id, path, lc_root, no_pivot, console, stdio] = args else {
        return Err(format!("helper: bad arguments {args:?}"));
    };
    let mut builder = ContainerBuilder::new(id.clone(), SyscallType::default())
        .with_root_path(Path::new(lc_root))
        .map_err(|e| e.to_string())?;
    if stdio == "stdio" {
        // SAFETY: the agent placed the three stdio descriptors at 3, 4 and 5 before exec;
        // nothing else in this process owns them.
        let (i, o, e) = unsafe {
            (
                OwnedFd::from_raw_fd(3),
                OwnedFd::from_raw_fd(4),
                OwnedFd::from_raw_fd(5),
            )
        };
        builder = builder.with_stdin(i).with_stdout(o).with_stderr(e);
    }
    if !console.is_empty() {
        builder = builder.with_console_socket(Some(Path::new(console)));
    }
    match kind.as_str() {
        "create" => {
            let c = builder
                .validate_id()
                .map_err(|e| e.to_string())?
                .as_init(Path::new(path))
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(no_pivot == "true")
                .build()
                .map_err(|e| e.to_string())?;
            c.pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| "container has no pid after create".to_string())
        }
        "exec" => builder
            .as_tenant()
            .with_process(Some(Path::new(path)))
            .with_detach(true)
            .build()
            .map(|p| p.as_raw())
            .map_err(|e| e.to_string()),
        other => Err(format!("helper: unknown job {other:?}")),
    }
}
