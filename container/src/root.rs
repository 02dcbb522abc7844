//! [`ContainerRoot`]: the containers under one state root, driven through libcontainer
//! (youki's library). The host pod runs its containers with it, and so does the agent in a
//! pod's VM.

use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::common::{AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use tracing::{debug, info};

use crate::bundle::load_bundle_spec;
use crate::error::{chain, Error, Result};
use crate::id::validate_id;
use crate::launch::{self, InitLaunch, Launcher};
use crate::oom_killer;
use crate::options::{CreateOptions, ExecOptions, Stdio};
use crate::state::{ContainerState, ExitStatus, Status, OCI_VERSION};
use crate::stats::{self, OomCounter, Stats};

/// The containers whose state lives under `root/<id>/`.
#[derive(Debug, Clone)]
pub struct ContainerRoot {
    root: PathBuf,
    systemd_cgroup: bool,
}

fn lc_err(op: &'static str, id: &str, e: impl std::error::Error + 'static) -> Error {
    Error::Container {
        op,
        id: id.to_string(),
        message: tidy(&chain(&e)),
    }
}

/// libcontainer's message without the layers of wrapping that say nothing ("failed to
/// create container: exec process failed with error error in executing process : ...").
fn tidy(message: &str) -> String {
    const NOISE: [&str; 4] = [
        "failed to create container: ",
        "exec process failed with error ",
        "error in executing process : ",
        "error in executing process: ",
    ];
    let mut m = message.trim();
    while let Some(rest) = NOISE.iter().find_map(|n| m.strip_prefix(n)) {
        m = rest.trim_start();
    }
    m.to_string()
}

fn status_of(s: ContainerStatus) -> Status {
    match s {
        ContainerStatus::Creating => Status::Creating,
        ContainerStatus::Created => Status::Created,
        ContainerStatus::Running => Status::Running,
        ContainerStatus::Stopped => Status::Stopped,
        ContainerStatus::Paused => Status::Paused,
    }
}

impl ContainerRoot {
    /// A sandbox whose containers keep their state under `root`.
    pub fn new(root: impl Into<PathBuf>, systemd_cgroup: bool) -> Self {
        Self {
            root: root.into(),
            systemd_cgroup,
        }
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether cgroups are managed through systemd.
    pub fn systemd_cgroup(&self) -> bool {
        self.systemd_cgroup
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Lock a container's state dir: shared to read, exclusive to change it.
    /// libcontainer rewrites state.json in place, so concurrent verbs (a `kill`
    /// while `run` waits, containerd's `state` polls) must not interleave.
    fn lock(&self, id: &str, exclusive: bool) -> Result<Flock<fs::File>> {
        validate_id(id)?;
        let dir = self.dir(id);
        let f = match fs::File::open(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()))
            }
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        let mut f = f;
        loop {
            match Flock::lock(f, arg) {
                Ok(lock) => return Ok(lock),
                // A signal (the shim reaps on SIGCHLD) interrupted the wait: wait again.
                Err((back, nix::Error::EINTR)) => f = back,
                Err((_, e)) => return Err(Error::sys(format!("lock state of {id}"), e)),
            }
        }
    }

    /// Load a container's libcontainer record with its status refreshed; the returned
    /// lock guards the state until dropped.
    pub fn open(&self, id: &str, exclusive: bool) -> Result<(Flock<fs::File>, Container)> {
        let lock = self.lock(id, exclusive)?;
        let dir = self.dir(id);
        if !dir.join("state.json").exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        let mut c = Container::load(dir).map_err(|e| lc_err("load", id, e))?;
        if let Err(e) = c.refresh_status() {
            // The process can vanish between libcontainer finding /proc/<pid> and
            // reading its stat (its reaper was quicker): that is a stopped container.
            let gone = c
                .pid()
                .is_none_or(|p| matches!(nix::sys::signal::kill(p, None), Err(nix::Error::ESRCH)));
            if !gone {
                return Err(lc_err("load", id, e));
            }
            c.set_status(ContainerStatus::Stopped);
        }
        Ok((lock, c))
    }

    /// Load a container's libcontainer record (shared lock, released on return).
    pub fn load(&self, id: &str) -> Result<Container> {
        self.open(id, false).map(|(_, c)| c)
    }

    fn cgroup(&self, c: &Container) -> Result<AnyCgroupManager> {
        let config = c.spec().map_err(|e| lc_err("read config of", c.id(), e))?;
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: config.cgroup_path,
            systemd_cgroup: c.systemd(),
            container_name: c.id().to_string(),
        })
        .map_err(|e| Error::Cgroup {
            id: c.id().to_string(),
            message: chain(&e),
        })
    }

    fn to_state(&self, c: &Container) -> ContainerState {
        let st = &c.state;
        let status = status_of(c.status());
        let rootfs = load_bundle_spec(&st.bundle)
            .ok()
            .and_then(|s| s.root().as_ref().map(|r| r.path().clone()))
            .map(|p| {
                if p.is_absolute() {
                    p
                } else {
                    st.bundle.join(p)
                }
            })
            .unwrap_or_default();
        ContainerState {
            oci_version: OCI_VERSION.to_string(),
            id: st.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                st.pid.unwrap_or(0)
            },
            status,
            bundle: st.bundle.clone(),
            rootfs,
            created: st
                .created
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                .unwrap_or_default(),
            owner: match st.creator {
                Some(0) | None => String::new(),
                Some(uid) => nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| uid.to_string()),
            },
            annotations: st.annotations.clone().unwrap_or_default(),
        }
    }

    fn builder(
        &self,
        id: &str,
        pid_file: Option<PathBuf>,
        console_socket: Option<PathBuf>,
        preserve_fds: i32,
        stdio: Stdio,
        launcher: Launcher,
    ) -> Result<ContainerBuilder> {
        let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_executor(launcher)
            .with_root_path(&self.root)
            .map_err(|e| lc_err("prepare", id, e))?
            .with_pid_file(pid_file)
            .map_err(|e| lc_err("prepare", id, e))?
            .with_console_socket(console_socket)
            .with_preserved_fds(preserve_fds);
        if let Some(fd) = stdio.stdin {
            b = b.with_stdin(fd);
        }
        if let Some(fd) = stdio.stdout {
            b = b.with_stdout(fd);
        }
        if let Some(fd) = stdio.stderr {
            b = b.with_stderr(fd);
        }
        Ok(b)
    }
}

impl ContainerRoot {
    /// [`ContainerRoot::create`] for a bundle whose config.json the caller has just checked
    /// with [`load_bundle_spec`] (as `run` does to read `process.terminal`). The spec is read
    /// (and so checked) again all the same: what libcontainer gets depends on it (see
    /// `launch.rs`).
    pub fn create_checked(&self, opts: CreateOptions) -> Result<i32> {
        self.create(opts)
    }
}

impl ContainerRoot {
    /// Create a container from its bundle; its init waits for `start`. Returns the init pid.
    /// On failure nothing is left behind (state, cgroup, mounts, processes).
    pub fn create(&self, opts: CreateOptions) -> Result<i32> {
        let id = opts.id.clone();
        validate_id(&id)?;
        let dir = self.dir(&id);
        if dir.exists() {
            return Err(Error::AlreadyExists(id));
        }
        let spec = load_bundle_spec(&opts.bundle)?;
        crate::bundle::prepare_paths(&opts.bundle, &spec)?;
        if self.systemd_cgroup && !Path::new("/run/systemd/system").is_dir() {
            return Err(Error::Unsupported(
                "--systemd-cgroup: systemd is not running on this host (no /run/systemd/system); \
                 use the cgroupfs driver"
                    .into(),
            ));
        }
        fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let bundle = fs::canonicalize(&opts.bundle).map_err(|e| Error::io(&opts.bundle, e))?;
        debug!(container = %id, bundle = %bundle.display(), "create");
        let launch = InitLaunch::prepare(&self.root, &id, &bundle, &spec)?;
        let result = self
            .builder(
                &id,
                opts.pid_file.clone(),
                opts.console_socket,
                opts.preserve_fds,
                opts.stdio,
                launch.launcher.clone(),
            )?
            .as_init(launch.bundle())
            .with_systemd(self.systemd_cgroup)
            .with_detach(opts.detach)
            .with_no_pivot(opts.no_pivot)
            .build()
            .map_err(|e| lc_err("create", &id, e))
            .and_then(|c| self.finish_create(c, &launch, &bundle, &spec));
        drop(launch);
        match result {
            Ok(pid) => {
                info!(container = %id, pid, "created");
                Ok(pid)
            }
            Err(e) => {
                // libcontainer removes what it made once the init process was
                // started; before that (console socket, config save) the state
                // dir may remain.
                if dir.exists() {
                    let _ = fs::remove_dir_all(&dir);
                }
                if let Some(p) = &opts.pid_file {
                    let _ = fs::remove_file(p);
                }
                Err(e)
            }
        }
    }

    /// What hull does to a just-created container before anyone may start it: record the
    /// real bundle (libcontainer recorded its copy's), turn the OOM killer off. On failure
    /// the container goes again.
    fn finish_create(
        &self,
        mut c: Container,
        launch: &InitLaunch,
        bundle: &Path,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<i32> {
        let id = c.id().to_string();
        let pid = c.pid().map(|p| p.as_raw()).unwrap_or(0);
        let mut done = Ok(());
        if launch.is_staged() {
            c.state.bundle = bundle.to_path_buf();
            done = c.save().map_err(|e| lc_err("create", &id, e));
        }
        if done.is_ok() && oom_killer::disabled_in(spec) {
            done = oom_killer::disable(&id, pid);
        }
        if let Err(e) = done {
            if let Err(d) = c.delete(true) {
                tracing::warn!(container = %id, error = %chain(&d), "delete after a failed create");
            }
            return Err(e);
        }
        Ok(pid)
    }
}

impl ContainerRoot {
    /// Let a created container's init run the user process.
    pub fn start(&self, id: &str) -> Result<()> {
        let (_lock, mut c) = self.open(id, true)?;
        if c.status() != ContainerStatus::Created {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status_of(c.status()).to_string(),
                op: "start",
            });
        }
        c.start().map_err(|e| lc_err("start", id, e))?;
        info!(container = %id, "started");
        Ok(())
    }

    /// The container's state now.
    pub fn state(&self, id: &str) -> Result<ContainerState> {
        Ok(self.to_state(&self.load(id)?))
    }

    /// All containers under this root.
    pub fn list(&self) -> Result<Vec<ContainerState>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&self.root, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_id(&name).is_err() || !entry.path().join("state.json").exists() {
                continue;
            }
            if let Ok(c) = self.load(&name) {
                out.push(self.to_state(&c));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Start another process in a running container. Returns its pid. The process gets the
    /// container's seccomp profile, and its `noNewPrivileges`, capabilities, AppArmor profile,
    /// rlimits, I/O priority and scheduler where it names none itself (runc's rule).
    pub fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32> {
        let mut opts = opts;
        let process = std::mem::take(&mut opts.process);
        self.exec_process(id, process, opts)
    }

    /// [`ContainerRoot::exec`] of a process given as its OCI JSON; `opts.process` is not
    /// used. The spawn helper's way: the caller (the shim, the agent) need not parse it.
    pub(crate) fn exec_json(
        &self,
        id: &str,
        process_json: &[u8],
        opts: ExecOptions,
    ) -> Result<i32> {
        let process = serde_json::from_slice(process_json)
            .map_err(|e| Error::InvalidInput(format!("exec process: {e}")))?;
        self.exec_process(id, process, opts)
    }

    fn exec_process(
        &self,
        id: &str,
        mut process: oci_spec::runtime::Process,
        opts: ExecOptions,
    ) -> Result<i32> {
        let c = self.load(id)?;
        if !matches!(
            c.status(),
            ContainerStatus::Running | ContainerStatus::Created
        ) {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status_of(c.status()).to_string(),
                op: "exec",
            });
        }
        let spec = load_bundle_spec(c.bundle())?;
        crate::bundle::check_exec_cwd(id, c.pid().map(|p| p.as_raw()), &process)?;
        let launcher = launch::prepare_exec(id, &mut process, &spec)?;
        let process_json = serde_json::to_vec(&process)
            .map_err(|e| Error::InvalidInput(format!("exec process: {e}")))?;
        // libcontainer takes a process.json path: write ours beside the state.
        let tmp = self.dir(id).join(format!(
            "exec-{}-{}.json",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        fs::write(&tmp, process_json).map_err(|e| Error::io(&tmp, e))?;
        let result = self
            .builder(
                id,
                opts.pid_file,
                opts.console_socket,
                opts.preserve_fds,
                opts.stdio,
                launcher,
            )
            .and_then(|b| {
                b.as_tenant()
                    .with_detach(opts.detach)
                    .with_process(Some(&tmp))
                    .build()
                    .map_err(|e| lc_err("exec in", id, e))
            });
        let _ = fs::remove_file(&tmp);
        let pid = result?;
        debug!(container = %id, pid = pid.as_raw(), "exec");
        Ok(pid.as_raw())
    }

    /// Send a signal to the init process, or to every process with `all`.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let (_lock, mut c) = self.open(id, true)?;
        if !all && !c.can_kill() {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status_of(c.status()).to_string(),
                op: "kill",
            });
        }
        let before = c.status();
        c.kill(signal, all).map_err(|e| lc_err("kill", id, e))?;
        // libcontainer records "stopped" after any signal. Put back what was recorded
        // unless the signal was SIGKILL: every load re-derives "stopped" from the process
        // itself, so only created/running/paused need the record. (Re-reading the process
        // here raced with its reaper: /proc/<pid>/stat vanished under us.)
        if before != ContainerStatus::Stopped && signal != Signal::SIGKILL {
            c.set_status(before)
                .save()
                .map_err(|e| lc_err("kill", id, e))?;
        }
        Ok(())
    }

    /// Wait for a child process of this one (a container's init or exec) to end.
    pub fn wait(&self, id: &str, pid: i32) -> Result<ExitStatus> {
        loop {
            match waitpid(Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitStatus::Signaled(sig)),
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(Error::sys(format!("wait for pid {pid} of {id}"), e)),
            }
        }
    }

    /// Pids of all processes in the container.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let c = self.load(id)?;
        let cg = self.cgroup(&c)?;
        let mut pids: Vec<i32> = cg
            .get_all_pids()
            .map_err(|e| Error::Cgroup {
                id: id.to_string(),
                message: chain(&e),
            })?
            .into_iter()
            .map(|p| p.as_raw())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Resource usage of the container's cgroup. On cgroup v2 without pressure files (see
    /// [`crate::stats`]'s v2 reader) the plain files give it.
    pub fn stats(&self, id: &str) -> Result<Stats> {
        let c = self.load(id)?;
        if c.status() == ContainerStatus::Stopped {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: "stopped".into(),
                op: "read stats",
            });
        }
        let err = match self.cgroup(&c)?.stats() {
            Ok(stats) => return Ok(stats.into()),
            Err(e) => e,
        };
        let v2 = match c.systemd() {
            true => None,
            false => c.spec().ok().and_then(|s| stats::v2_dir(&s.cgroup_path)),
        };
        match v2 {
            Some(dir) => {
                debug!(container = %id, error = %chain(&err), "cgroup v2 stats from the plain files");
                Ok(stats::v2_stats(&dir))
            }
            None => Err(Error::Cgroup {
                id: id.to_string(),
                message: chain(&err),
            }),
        }
    }

    /// Freeze every process of the container.
    pub fn pause(&self, id: &str) -> Result<()> {
        let (_lock, mut c) = self.open(id, true)?;
        if !c.can_pause() {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status_of(c.status()).to_string(),
                op: "pause",
            });
        }
        c.pause().map_err(|e| lc_err("pause", id, e))
    }

    /// Thaw a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let (_lock, mut c) = self.open(id, true)?;
        if !c.can_resume() {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status_of(c.status()).to_string(),
                op: "resume",
            });
        }
        c.resume().map_err(|e| lc_err("resume", id, e))
    }

    /// Change the container's resource limits. The OOM killer stays as the update or else
    /// the container's spec says (libcgroups writes `memory.oom_control` on every memory
    /// update; see `oom_killer.rs`).
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let (_lock, c) = self.open(id, true)?;
        if c.status() == ContainerStatus::Stopped {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: "stopped".into(),
                op: "update",
            });
        }
        let disable_oom_killer = resources
            .memory()
            .as_ref()
            .and_then(|m| m.disable_oom_killer())
            .unwrap_or_else(|| {
                load_bundle_spec(c.bundle()).is_ok_and(|s| oom_killer::disabled_in(&s))
            });
        self.cgroup(&c)?
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| Error::Cgroup {
                id: id.to_string(),
                message: chain(&e),
            })
    }

    /// How many processes of the container the OOM killer has killed so far.
    pub fn oom_kills(&self, id: &str) -> Result<u64> {
        self.oom_counter(id)?.read()
    }

    /// The container's OOM kill counter, to read again and again without finding it anew.
    pub fn oom_counter(&self, id: &str) -> Result<OomCounter> {
        let c = self.load(id)?;
        let config = c.spec().map_err(|e| lc_err("read config of", id, e))?;
        OomCounter::find(id, &config.cgroup_path, c.systemd())
    }

    /// Remove a stopped container (or any, with `force`, killing it first).
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let (_lock, mut c) = self.open(id, true)?;
        if !force && !c.can_delete() {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status_of(c.status()).to_string(),
                op: "delete (stop it first or use --force)",
            });
        }
        c.delete(force).map_err(|e| lc_err("delete", id, e))?;
        info!(container = %id, "deleted");
        Ok(())
    }
}
