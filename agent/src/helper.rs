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
use std::sync::Mutex;

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

/// A single-threaded copy of the agent, forked before the agent starts any thread, that
/// forks one helper per job: a fork of a one-thread process is as safe as a fresh exec, and
/// costs no exec (starting the agent binary anew takes ~0.25 s under TCG).
struct Zygote {
    sock: OwnedFd,
}

static ZYGOTE: Mutex<Option<Zygote>> = Mutex::new(None);

/// Forks the zygote. Call while this process has one thread; without it (an error here),
/// jobs re-execute the agent binary.
pub fn start_zygote() -> std::io::Result<()> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (agent_end, zygote_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: the caller guarantees one thread, so the child may run ordinary code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(agent_end);
            zygote_main(zygote_end)
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(zygote_end);
            *ZYGOTE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Zygote { sock: agent_end });
            Ok(())
        }
    }
}

/// The zygote: one job per message (arguments NUL-separated, stdio as SCM_RIGHTS), one
/// forked helper per job, the helper's answer sent back. Ends when the agent goes.
fn zygote_main(sock: OwnedFd) -> ! {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    // SAFETY: renames this process, nothing else.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"hull-zygote".as_ptr()) };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, fds) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([RawFd; 3]);
            let msg = match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::Error::EINTR) => continue,
                Err(_) => std::process::exit(0),
            };
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(list) = c {
                        // SAFETY: the kernel just installed these fds for us.
                        fds.extend(
                            list.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            std::process::exit(0);
        }
        let args: Vec<String> = String::from_utf8_lossy(&buf[..n])
            .split('\0')
            .map(str::to_string)
            .collect();
        let answer = zygote_job(&args, fds);
        let _ = nix::unistd::write(&sock, answer.as_bytes());
    }
}

/// Forks the helper for one job and collects its answer ("ok PID" or "err MESSAGE").
fn zygote_job(args: &[String], fds: Vec<OwnedFd>) -> String {
    use nix::sys::socket::{recv, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
    // One message, not a stream read to EOF: the container's init, cloned by the helper,
    // holds the helper's end until it execs (after `start`).
    let (r, w) = match socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    ) {
        Ok(p) => p,
        Err(e) => return format!("err socketpair: {e}"),
    };
    // SAFETY: the zygote has one thread.
    match unsafe { nix::unistd::fork() } {
        Err(e) => format!("err fork the helper: {e}"),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            let mut args = args.to_vec();
            if fds.len() == 3 {
                // The helper takes its stdio at 3, 4, 5, as after an exec.
                let high: Vec<RawFd> = fds
                    .iter()
                    // SAFETY: F_DUPFD_CLOEXEC on fds we own.
                    .map(|f| unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) })
                    .collect();
                for (i, h) in high.iter().enumerate() {
                    // SAFETY: dup2 from fds we own onto 3..5, whose previous holders (if
                    // any) we no longer need.
                    unsafe { libc::dup2(*h, 3 + i as RawFd) };
                }
            } else if let Some(last) = args.last_mut() {
                *last = "nostdio".into();
            }
            let answer = match helper(&args) {
                Ok(pid) => format!("ok {pid}"),
                Err(e) => format!("err {e}"),
            };
            let _ = nix::unistd::write(&w, answer.as_bytes());
            // SAFETY: leave without running the zygote's destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            drop(fds);
            // The helper writes its answer, then exits.
            let _ = nix::sys::wait::waitpid(child, None);
            let mut buf = vec![0u8; 64 * 1024];
            match recv(r.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n]).into_owned(),
                _ => "err the libcontainer helper died".into(),
            }
        }
    }
}

/// Runs `job` through the zygote; `None` if there is none (or it is gone).
fn run_in_zygote(job: &Job, stdio: &Option<ChildStdio>) -> Option<Result<i32, String>> {
    use nix::sys::socket::{send, sendmsg, ControlMessage, MsgFlags};
    let mut guard = ZYGOTE.lock().unwrap_or_else(|e| e.into_inner());
    let z = guard.as_ref()?;
    let mut args = job.to_args();
    args.push(if stdio.is_some() { "stdio" } else { "nostdio" }.into());
    let msg = args.join("\0");
    let fds: Vec<RawFd> = stdio
        .as_ref()
        .map(|s| {
            vec![
                s.stdin.as_raw_fd(),
                s.stdout.as_raw_fd(),
                s.stderr.as_raw_fd(),
            ]
        })
        .unwrap_or_default();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let sent = sendmsg::<()>(
        z.sock.as_raw_fd(),
        &[std::io::IoSlice::new(msg.as_bytes())],
        cmsgs,
        MsgFlags::empty(),
        None,
    );
    let mut buf = vec![0u8; 64 * 1024];
    let got = sent.and_then(|_| nix::unistd::read(z.sock.as_raw_fd(), &mut buf));
    match got {
        Ok(n) if n > 0 => {
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            Some(match answer.split_once(' ') {
                Some(("ok", pid)) => pid
                    .trim()
                    .parse()
                    .map_err(|_| "libcontainer helper printed no pid".to_string()),
                Some(("err", e)) => Err(e.to_string()),
                _ => Err(format!("libcontainer helper: {answer}")),
            })
        }
        _ => {
            // The zygote is gone: from now on, re-execute the agent.
            tracing::warn!("the zygote is gone; helpers re-execute the agent");
            let _ = send(z.sock.as_raw_fd(), b"", MsgFlags::empty());
            *guard = None;
            None
        }
    }
}

/// In the agent: runs `job` in a helper process and returns the new process's pid, or the
/// helper's error message. Call under the reaper's fork guard.
pub fn run(job: &Job, stdio: Option<ChildStdio>) -> Result<i32, String> {
    if let Some(r) = run_in_zygote(job, &stdio) {
        return r;
    }
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
