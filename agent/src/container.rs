//! The pod's containers as the agent keeps them: the processes it started in each (the init
//! and the execs) with their standard streams, and the preparation of a spec from the host
//! (its root under the shared directory). libcontainer itself is driven by hull-container's
//! [`ContainerRoot`], the same driver as the host pod's; its creates and execs run in the
//! driver's spawn helper (forked by the zygote `main` starts).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hull_container::{ContainerRoot, CreateOptions, ExecOptions, OomCounter, Stats, Stdio};
use oci_spec::runtime::{LinuxCapabilities, LinuxResources, Process as OciProcess, Spec};
use parking_lot::Mutex;

use crate::error::{AgentError, Result};
use crate::process::{self, ParentStdio, Process};
use crate::reaper::Reaper;

/// How long libcontainer may take to hand over a pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks an exec id. Not a second rule for container ids (those follow runc's,
/// [`hull_container::validate_id`]): an exec id names a file of the agent, the console socket
/// `exec-<id>.sock` in the container's bundle directory, so it is a plain, visible file name of
/// at most 128 characters.
pub fn validate_exec_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!("bad exec id {id:?}")))
    }
}

/// A container and the processes the agent started in it.
pub struct Container {
    /// The container id.
    pub id: String,
    /// The init process.
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    driver: ContainerRoot,
    bundle: PathBuf,
    /// The capabilities of the container's process, the default for execs.
    default_caps: Option<LinuxCapabilities>,
    /// Found on the first OOM poll, not on the create path.
    oom: OnceLock<Option<OomCounter>>,
}

/// Where the agent keeps container state and bundles.
#[derive(Debug, Clone)]
pub struct StateDirs {
    /// The container driver, its state root one directory per container.
    pub driver: ContainerRoot,
    /// Generated bundles (config.json, console sockets).
    pub bundles: PathBuf,
    /// Use chroot instead of pivot_root (the guest's root is the initramfs).
    pub no_pivot: bool,
}

impl StateDirs {
    /// Creates the state directories under `base`.
    pub fn new(base: &Path, no_pivot: bool) -> Result<Self> {
        let dirs = StateDirs {
            driver: ContainerRoot::new(base.join("containers"), false),
            bundles: base.join("bundles"),
            no_pivot,
        };
        for d in [dirs.driver.root(), &dirs.bundles] {
            fs::create_dir_all(d).map_err(|e| AgentError::io(format!("create {d:?}"), e))?;
        }
        Ok(dirs)
    }
}

fn spec_err(id: &str, reason: impl Into<String>) -> AgentError {
    AgentError::InvalidSpec {
        container_id: id.to_string(),
        reason: reason.into(),
    }
}

/// Parses and checks an OCI spec from the host; sets the rootfs and a default cgroup path.
pub fn prepare_spec(id: &str, json: &[u8], rootfs: &Path) -> Result<Spec> {
    let mut spec: Spec = serde_json::from_slice(json).map_err(|e| spec_err(id, e.to_string()))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| spec_err(id, "no process"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(spec_err(id, "process.args is empty"));
    }
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    spec.set_root(Some(root));
    let mut linux = spec
        .linux()
        .clone()
        .ok_or_else(|| spec_err(id, "no linux section"))?;
    let cg_ok = linux
        .cgroups_path()
        .as_ref()
        .is_some_and(|p| p.is_absolute() && !p.components().any(|c| c.as_os_str() == ".."));
    if !cg_ok {
        linux.set_cgroups_path(Some(PathBuf::from(format!("/hull/{id}"))));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// A new process' streams: three pipes (the agent keeps the far ends), or, with a terminal, a
/// console socket on which libcontainer hands over the pty master.
enum Streams {
    Pipes(ParentStdio),
    Console(std::os::unix::net::UnixListener),
}

impl Streams {
    /// Sets up the streams; returns what the new process gets, and the console socket's path
    /// for a terminal.
    fn new(terminal: bool, sock: &Path) -> Result<(Self, Stdio, Option<PathBuf>)> {
        if terminal {
            let l = process::console_listener(sock)?;
            Ok((
                Streams::Console(l),
                Stdio::default(),
                Some(sock.to_path_buf()),
            ))
        } else {
            let (child, parent) = process::stdio_pipes()?;
            Ok((Streams::Pipes(parent), child, None))
        }
    }

    /// The agent's side of the process `pid`.
    fn into_process(self, exec_id: &str, pid: i32) -> Result<Process> {
        match self {
            Streams::Pipes(p) => Ok(Process::with_pipes(exec_id.to_string(), pid, p)),
            Streams::Console(l) => {
                let master = process::receive_pty_master(&l, CONSOLE_TIMEOUT)?;
                Process::with_tty(exec_id.to_string(), pid, master)
            }
        }
    }
}

impl Container {
    /// Creates (but does not start) a container whose spec and rootfs are already checked.
    pub fn create(id: &str, spec: Spec, dirs: &StateDirs, reaper: &Reaper) -> Result<Container> {
        let bundle = dirs.bundles.join(id);
        fs::create_dir_all(&bundle).map_err(|e| AgentError::io(format!("create {bundle:?}"), e))?;
        let result = Self::create_in(id, spec, dirs, &bundle, reaper);
        if result.is_err() {
            let _ = fs::remove_dir_all(&bundle);
        }
        result
    }

    fn create_in(
        id: &str,
        spec: Spec,
        dirs: &StateDirs,
        bundle: &Path,
        reaper: &Reaper,
    ) -> Result<Container> {
        let process = spec.process().as_ref();
        let terminal = process.and_then(|p| p.terminal()).unwrap_or(false);
        let default_caps = process.and_then(|p| p.capabilities().clone());
        spec.save(bundle.join("config.json"))
            .map_err(|e| spec_err(id, format!("save config.json: {e}")))?;

        let guard = reaper.fork_guard();
        let (streams, stdio, console_socket) =
            Streams::new(terminal, &bundle.join("console.sock"))?;
        let pid = dirs.driver.create_in_helper(
            CreateOptions {
                id: id.to_string(),
                bundle: bundle.to_path_buf(),
                console_socket,
                no_pivot: dirs.no_pivot,
                detach: true,
                stdio,
                ..Default::default()
            },
            true,
        )?;
        reaper.watch(pid);
        drop(guard);
        let init = match streams.into_process("", pid) {
            Ok(p) => p,
            Err(e) => {
                // The container exists but the agent cannot talk to it: take it down again.
                if let Err(e) = take_down(&dirs.driver, id, pid, reaper) {
                    tracing::warn!(container_id = id, error = %e, "delete after a failed create");
                }
                reaper.forget(pid);
                return Err(e);
            }
        };
        tracing::info!(container_id = id, pid, "container created");
        Ok(Container {
            id: id.to_string(),
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
            driver: dirs.driver.clone(),
            bundle: bundle.to_path_buf(),
            default_caps,
            oom: OnceLock::new(),
        })
    }

    /// Starts the container's init process.
    pub fn start(&self, reaper: &Reaper) -> Result<()> {
        // Start hooks run as children that libcontainer waits for itself.
        let _guard = reaper.fork_guard();
        self.driver.start(&self.id)?;
        tracing::info!(container_id = %self.id, "container started");
        Ok(())
    }

    /// The process description of a new exec `exec_id`: a valid id not in use, args given.
    fn new_process(&self, exec_id: &str, process_json: &[u8]) -> Result<OciProcess> {
        validate_exec_id(exec_id)?;
        if self.execs.lock().contains_key(exec_id) {
            return Err(AgentError::ProcessExists {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            });
        }
        let proc: OciProcess =
            serde_json::from_slice(process_json).map_err(|e| spec_err(&self.id, e.to_string()))?;
        if proc.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(spec_err(&self.id, "exec process.args is empty"));
        }
        Ok(proc)
    }

    /// Starts a new process inside the running container.
    pub fn exec(
        &self,
        exec_id: &str,
        process_json: &[u8],
        reaper: &Reaper,
    ) -> Result<Arc<Process>> {
        let mut proc = self.new_process(exec_id, process_json)?;
        if proc.capabilities().is_none() {
            proc.set_capabilities(self.default_caps.clone());
        }
        let terminal = proc.terminal().unwrap_or(false);

        let guard = reaper.fork_guard();
        let sock = self.bundle.join(format!("exec-{exec_id}.sock"));
        let (streams, stdio, console_socket) = Streams::new(terminal, &sock)?;
        let result = self.driver.exec_in_helper(
            &self.id,
            ExecOptions {
                process: proc,
                console_socket,
                detach: true,
                stdio,
                ..Default::default()
            },
        );
        let pid = match result {
            Ok(pid) => pid,
            Err(e) => {
                let _ = fs::remove_file(&sock);
                return Err(e.into());
            }
        };
        reaper.watch(pid);
        drop(guard);
        let p = streams.into_process(exec_id, pid);
        let _ = fs::remove_file(&sock);
        let p = Arc::new(p?);
        self.execs.lock().insert(exec_id.to_string(), p.clone());
        tracing::info!(container_id = %self.id, exec_id, pid, "process started");
        Ok(p)
    }

    /// Starts a process in the guest itself (the guest console): as root in the agent's own
    /// namespaces, not the container's, as the process description says (args, env, cwd,
    /// terminal); it is addressed as this container's `exec_id` like any exec.
    pub fn exec_in_guest(
        &self,
        exec_id: &str,
        process_json: &[u8],
        reaper: &Reaper,
    ) -> Result<Arc<Process>> {
        let proc = self.new_process(exec_id, process_json)?;
        let args = proc.args().clone().unwrap_or_default();
        let Some(program) = args.first() else {
            return Err(spec_err(&self.id, "exec process.args is empty"));
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(&args[1..]).env_clear().current_dir(proc.cwd());
        for kv in proc.env().iter().flatten() {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let terminal = proc.terminal().unwrap_or(false);
        // The agent's end: the pty master, or the far ends of three pipes.
        enum AgentEnd {
            Tty(fs::File),
            Pipes(ParentStdio),
        }
        let agent_end = if terminal {
            let pty = nix::pty::openpty(None, None)
                .map_err(|e| AgentError::io("openpty", std::io::Error::from(e)))?;
            if let Some(size) = proc.console_size() {
                let (rows, cols) = (size.height() as u16, size.width() as u16);
                let master = std::os::fd::AsFd::as_fd(&pty.master);
                if let Err(e) = hull_container::console::set_window_size(master, rows, cols) {
                    tracing::debug!("console size of a guest process: {e}");
                }
            }
            // Neither end may leak into the process beyond its stdio (dup2 clears the flag on
            // the copies it makes).
            for fd in [&pty.master, &pty.slave] {
                use std::os::fd::AsRawFd;
                // SAFETY: F_SETFD on a descriptor this function owns.
                unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            let slave = fs::File::from(pty.slave);
            let dup = || {
                slave
                    .try_clone()
                    .map_err(|e| AgentError::io("dup pty slave", e))
            };
            cmd.stdin(dup()?).stdout(dup()?).stderr(slave);
            AgentEnd::Tty(fs::File::from(pty.master))
        } else {
            let (child_stdio, parent) = process::stdio_pipes()?;
            let Stdio {
                stdin,
                stdout,
                stderr,
            } = child_stdio;
            let take = |f: Option<std::os::fd::OwnedFd>| {
                f.map(std::process::Stdio::from)
                    .unwrap_or_else(std::process::Stdio::null)
            };
            cmd.stdin(take(stdin))
                .stdout(take(stdout))
                .stderr(take(stderr));
            AgentEnd::Pipes(parent)
        };
        // SAFETY: between fork and exec only async-signal-safe calls: setsid(2), so that the
        // process leads its own session away from the agent's, and with a terminal the
        // TIOCSCTTY ioctl(2) on stdin, the pty slave, which becomes its controlling tty.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::setsid() < 0 || (terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0) {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let guard = reaper.fork_guard();
        let child = cmd
            .spawn()
            .map_err(|e| AgentError::io(format!("start {program} in the guest"), e))?;
        let pid = child.id() as i32;
        drop(cmd);
        let p = match agent_end {
            AgentEnd::Tty(master) => Process::with_tty(exec_id.to_string(), pid, master)?,
            AgentEnd::Pipes(pipes) => Process::with_pipes(exec_id.to_string(), pid, pipes),
        };
        // The reaper (the agent is PID 1) collects its exit, not `Child`.
        reaper.watch(pid);
        drop(guard);
        let p = Arc::new(p);
        self.execs.lock().insert(exec_id.to_string(), p.clone());
        tracing::info!(container_id = %self.id, exec_id, pid, program = %program, "guest console process started");
        Ok(p)
    }

    /// The process named by `exec_id` ("" is init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::ProcessNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    /// Forgets an exec whose exit status and output the host has fully collected, so a
    /// long-lived container does not accumulate finished processes and their descriptors.
    pub fn retire_if_finished(&self, exec_id: &str, reaper: &Reaper) {
        if exec_id.is_empty() {
            return;
        }
        let mut execs = self.execs.lock();
        if let Some(p) = execs.get(exec_id) {
            if p.finished() {
                reaper.forget(p.pid);
                execs.remove(exec_id);
                tracing::debug!(container_id = %self.id, exec_id, "exec retired");
            }
        }
    }

    /// Signals one process, or every process of the container.
    pub fn signal(&self, exec_id: &str, signal: i32, all: bool, reaper: &Reaper) -> Result<()> {
        // Real-time signals too (systemd stops on SIGRTMIN+3).
        let sig = hull_container::Sig::try_from(signal)
            .map_err(|e| AgentError::InvalidArgument(format!("signal {signal}: {e}")))?;
        if exec_id.is_empty() || all {
            return Ok(self.driver.kill(&self.id, sig, all)?);
        }
        let p = self.process(exec_id)?;
        if reaper.try_status(p.pid).is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {}: process {exec_id} has exited",
                self.id
            )));
        }
        // kill(2) on a pid the agent started and has not reaped (checked just above, and
        // reaping of watched pids is recorded, so the pid cannot have been reused).
        sig.send(p.pid)
            .map_err(|e| AgentError::io(format!("kill pid {}", p.pid), e.into()))
    }

    /// Freezes every process of the container.
    pub fn pause(&self) -> Result<()> {
        Ok(self.driver.pause(&self.id)?)
    }

    /// Thaws the container.
    pub fn resume(&self) -> Result<()> {
        Ok(self.driver.resume(&self.id)?)
    }

    /// Cgroup statistics.
    pub fn stats(&self) -> Result<Stats> {
        Ok(self.driver.stats(&self.id)?)
    }

    /// The pids in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        Ok(self.driver.pids(&self.id)?)
    }

    /// Applies new resource limits.
    pub fn update(&self, resources_json: &[u8]) -> Result<()> {
        let resources: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| spec_err(&self.id, format!("resources: {e}")))?;
        Ok(self.driver.update(&self.id, &resources)?)
    }

    /// How many processes of the container the OOM killer has killed (0 when unknown).
    pub fn oom_kills(&self) -> u64 {
        let counter = self.oom.get_or_init(|| {
            self.driver
                .oom_counter(&self.id)
                .inspect_err(
                    |e| tracing::debug!(container_id = %self.id, error = %e, "no OOM counter"),
                )
                .ok()
        });
        counter.as_ref().and_then(|c| c.read().ok()).unwrap_or(0)
    }

    /// Kills what is left and deletes the container and its state.
    pub fn remove(&self, reaper: &Reaper) -> Result<()> {
        take_down(&self.driver, &self.id, self.init.pid, reaper)?;
        reaper.forget(self.init.pid);
        for p in self.execs.lock().values() {
            reaper.forget(p.pid);
        }
        let _ = fs::remove_dir_all(&self.bundle);
        tracing::info!(container_id = %self.id, "container removed");
        Ok(())
    }
}

/// Kills every process of a container and deletes it from the driver (gone already is fine).
fn take_down(driver: &ContainerRoot, id: &str, init_pid: i32, reaper: &Reaper) -> Result<()> {
    let _ = driver.kill(id, hull_container::Sig::KILL, true);
    // Give the init a moment to die so libcontainer sees it stopped.
    let _ = reaper.wait(init_pid, Some(Duration::from_secs(5)));
    // Poststop hooks run as children that libcontainer waits for itself.
    let _guard = reaper.fork_guard();
    match driver.delete(id, true) {
        Ok(()) | Err(hull_container::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_are_plain_file_names() {
        for ok in ["e1", "exec-1.a_b", &"x".repeat(128)] {
            assert!(validate_exec_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            "a+b",
            &"x".repeat(129),
        ] {
            assert!(validate_exec_id(bad).is_err(), "{bad:?}");
        }
    }
}
