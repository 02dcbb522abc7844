//! [`ContainerRoot`]: the containers under one state root, driven through libcontainer
//! (youki's library). The host pod runs its containers with it, and so does the agent in a
//! pod's VM.

use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::common::{
    AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt, FreezerState,
};
use libcontainer::config::YoukiConfig;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::state::StateError;
use libcontainer::container::{Container, ContainerStatus, State};
use libcontainer::notify_socket::{NotifySocket, NOTIFY_FILE};
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use tracing::{debug, info, warn};

use crate::bundle::load_bundle_spec;
use crate::error::{chain, Error, Result};
use crate::hooks::{self, Phase};
use crate::id::validate_id;
use crate::launch::{self, InitLaunch, Launcher};
use crate::oom_killer;
use crate::options::{CreateOptions, ExecOptions, Stdio};
use crate::signal::Sig;
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

fn cgroup_err(id: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    Error::Cgroup {
        id: id.to_string(),
        message: chain(e),
    }
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
    /// lock guards the state until dropped. A state file that does not parse is
    /// [`Error::CorruptState`].
    pub fn open(&self, id: &str, exclusive: bool) -> Result<(Flock<fs::File>, Container)> {
        let lock = self.lock(id, exclusive)?;
        let dir = self.dir(id);
        let path = dir.join("state.json");
        if !path.exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        let state = match State::load(&dir) {
            Ok(s) => s,
            Err(StateError::ParseStateFile { source, .. }) => {
                return Err(Error::CorruptState {
                    id: id.to_string(),
                    path,
                    reason: source.to_string(),
                })
            }
            Err(e) => return Err(lc_err("load", id, e)),
        };
        let mut c = Container { state, root: dir };
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

    /// The processes in the cgroup of container `id` (state dir `dir`), found as
    /// [`Self::delete_remains`] finds the cgroup: empty when there is none.
    fn cgroup_pids(&self, id: &str, dir: &Path) -> Vec<i32> {
        self.remains_cgroup(id, dir)
            .ok()
            .and_then(|cg| cg.get_all_pids().ok())
            .map(|p| p.into_iter().map(|p| p.as_raw()).collect())
            .unwrap_or_default()
    }

    /// The cgroup `create` made for container `id` (state dir `dir`): the path in the
    /// container's config record if that is readable, else the name libcontainer gives a
    /// container whose spec names none (`:youki:<id>` under the configured driver).
    fn remains_cgroup(&self, id: &str, dir: &Path) -> Result<AnyCgroupManager> {
        let cgroup_path = match YoukiConfig::load(dir) {
            Ok(config) => config.cgroup_path,
            Err(_) => libcontainer::utils::get_cgroup_path(&None, id),
        };
        debug!(container = %id, cgroup = %cgroup_path.display(), "the cgroup of a container's remains");
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path,
            systemd_cgroup: self.systemd_cgroup,
            container_name: id.to_string(),
        })
        .map_err(|e| cgroup_err(id, &e))
    }

    fn to_state(&self, c: &Container) -> ContainerState {
        let st = &c.state;
        let mut status = status_of(c.status());
        // A create killed before it recorded the init's pid leaves a "stopped" record, pid
        // 0, while the init waits in the container's cgroup: say what is true (creating,
        // with that pid); `delete` removes it.
        let mut orphan_pid = None;
        if status == Status::Stopped && st.pid.is_none() {
            if let Some(p) = self.cgroup_pids(&st.id, &c.root).into_iter().min() {
                status = Status::Creating;
                orphan_pid = Some(p);
            }
        }
        let rootfs = load_bundle_spec(&st.bundle)
            .map(|s| crate::bundle::rootfs_of(&st.bundle, &s))
            .unwrap_or_default();
        ContainerState {
            oci_version: OCI_VERSION.to_string(),
            id: st.id.clone(),
            pid: match (status, orphan_pid) {
                (_, Some(p)) => p,
                (Status::Stopped, None) => 0,
                _ => st.pid.unwrap_or(0),
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
    /// Let a created container's init run the user process; returns once it runs it (has
    /// exec'd, or exited), so that what comes next (the spec's poststart hooks, here or on
    /// the host of a pod's VM) sees the program. A failing poststart hook is a warning (see
    /// [`crate::hooks`]).
    pub fn start(&self, id: &str) -> Result<()> {
        let (_lock, mut c) = self.open(id, true)?;
        if c.status() != ContainerStatus::Created {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status_of(c.status()).to_string(),
                op: "start",
            });
        }
        // libcontainer's own `start` fails on a failing poststart hook, and runs the hooks
        // as soon as it has told the init to go: these are its steps, with the hooks after
        // the exec and lenient.
        let config = YoukiConfig::load(&c.root).map_err(|e| lc_err("start", id, e))?;
        let pid = c.pid().map(|p| p.as_raw()).unwrap_or(0);
        let before = hooks::program_of(pid);
        NotifySocket::new(c.root.join(NOTIFY_FILE))
            .notify_container_start()
            .map_err(|e| lc_err("start", id, e))?;
        c.set_status(ContainerStatus::Running)
            .save()
            .map_err(|e| lc_err("start", id, e))?;
        if !hooks::wait_for_exec(pid, before, hooks::EXEC_WAIT) {
            warn!(container = %id, pid, "the init has not exec'd its program after {:?}", hooks::EXEC_WAIT);
        }
        info!(container = %id, "started");
        let poststart = config.hooks.as_ref().and_then(|h| h.poststart().as_ref());
        if let Some(poststart) = poststart.filter(|h| !h.is_empty()) {
            let cwd = c.root.clone();
            hooks::run_with(Phase::Poststart, poststart, &c.state, Some(&cwd));
        }
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
            match self.load(&name) {
                Ok(c) => out.push(self.to_state(&c)),
                // Deleted since the directory was read.
                Err(Error::NotFound(_)) => {}
                // Listed as what it is, not skipped, and said why: `delete --force`
                // removes it.
                Err(e) => {
                    warn!(target: crate::USER_WARNING, container = %name, "{e}");
                    out.push(self.unknown_state(&name));
                }
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
    pub fn kill(&self, id: &str, signal: Sig, all: bool) -> Result<()> {
        let (_lock, mut c) = self.open(id, true)?;
        if !all && !c.can_kill() {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status_of(c.status()).to_string(),
                op: "kill",
            });
        }
        let Some(nix_signal) = signal.as_nix() else {
            // Signal 0 and the real-time signals, which libcontainer cannot name.
            return self.kill_by_number(&c, signal, all);
        };
        let before = c.status();
        c.kill(nix_signal, all).map_err(|e| lc_err("kill", id, e))?;
        // libcontainer records "stopped" after any signal. Put back what was recorded
        // unless the signal was SIGKILL: every load re-derives "stopped" from the process
        // itself, so only created/running/paused need the record. (Re-reading the process
        // here raced with its reaper: /proc/<pid>/stat vanished under us.)
        if before != ContainerStatus::Stopped && nix_signal != Signal::SIGKILL {
            c.set_status(before)
                .save()
                .map_err(|e| lc_err("kill", id, e))?;
        }
        Ok(())
    }

    /// libcontainer's kill for a signal it has no name for: to the init, or to every process
    /// of the cgroup (frozen meanwhile, so none forks past it). A gone process is no error;
    /// the recorded status stays as it is (no such signal ends the container by itself).
    fn kill_by_number(&self, c: &Container, signal: Sig, all: bool) -> Result<()> {
        let id = c.id();
        let send = |pid: i32| match signal.send(pid) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(Error::sys(format!("send {signal} to pid {pid} of {id}"), e)),
        };
        if !all {
            let pid = c.pid().ok_or_else(|| Error::WrongStatus {
                id: id.to_string(),
                status: status_of(c.status()).to_string(),
                op: "kill",
            })?;
            return send(pid.as_raw());
        }
        let cg = self.cgroup(c)?;
        if let Err(e) = cg.freeze(FreezerState::Frozen) {
            warn!(container = %id, "freeze before the signal: {}", chain(&e));
        }
        let sent = cg
            .get_all_pids()
            .map_err(|e| cgroup_err(id, &e))
            .and_then(|pids| pids.iter().try_for_each(|p| send(p.as_raw())));
        if let Err(e) = cg.freeze(FreezerState::Thawed) {
            warn!(container = %id, "thaw after the signal: {}", chain(&e));
        }
        sent
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

    /// Remove a stopped or created container (or any, with `force`, killing it first).
    /// The spec's poststop hooks run after it is gone; a failing one is a warning. With
    /// `force`, a container whose state file is corrupt or missing is cleaned up from what
    /// is left: its cgroup's processes killed, the cgroup and the state dir removed.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let (_lock, mut c) = match self.open(id, true) {
            Ok(opened) => opened,
            Err(Error::CorruptState { .. }) if force => return self.delete_remains(id),
            Err(Error::NotFound(_)) if force && self.dir(id).is_dir() => {
                return self.delete_remains(id)
            }
            Err(e) => return Err(e),
        };
        let status = status_of(c.status());
        if !force && !status.deletable() {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: status.to_string(),
                op: "delete (stop it first or use --force)",
            });
        }
        // libcontainer fails the delete on a failing poststop hook, and leaves the container
        // behind: take the hooks out of its record, and run them here once it is gone.
        let poststop = self.take_poststop(&c)?;
        if let Err(e) = c.delete(force) {
            // Still there: its next delete runs them.
            self.put_back_poststop(&c, poststop);
            return Err(lc_err("delete", id, e));
        }
        info!(container = %id, "deleted");
        if !poststop.is_empty() {
            hooks::run_with(Phase::Poststop, &poststop, &c.state, None);
        }
        Ok(())
    }

    /// The poststop hooks of the container's record, removed from it.
    fn take_poststop(&self, c: &Container) -> Result<Vec<oci_spec::runtime::Hook>> {
        // No record yet (a create that died early): no hooks either.
        let Ok(mut config) = YoukiConfig::load(&c.root) else {
            return Ok(Vec::new());
        };
        let Some(hooks) = config.hooks.as_mut() else {
            return Ok(Vec::new());
        };
        let Some(poststop) = hooks.poststop().clone() else {
            return Ok(Vec::new());
        };
        hooks.set_poststop(None);
        config
            .save(&c.root)
            .map_err(|e| lc_err("delete", c.id(), e))?;
        Ok(poststop)
    }

    /// Undo [`ContainerRoot::take_poststop`] after a failed delete.
    fn put_back_poststop(&self, c: &Container, poststop: Vec<oci_spec::runtime::Hook>) {
        if poststop.is_empty() {
            return;
        }
        let Ok(mut config) = YoukiConfig::load(&c.root) else {
            return;
        };
        if let Some(hooks) = config.hooks.as_mut() {
            hooks.set_poststop(Some(poststop));
            if let Err(e) = config.save(&c.root) {
                warn!(container = %c.id(), "keep the poststop hooks: {}", chain(&e));
            }
        }
    }

    /// Clean up a container whose state file is corrupt or was never written: kill every
    /// process of its cgroup ([`Self::remains_cgroup`]), remove the cgroup and the state dir.
    /// No poststop hook runs: there is no state to give it.
    fn delete_remains(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        info!(container = %id, "cleaning up from a corrupt or missing state file");
        let cg = self.remains_cgroup(id, &dir)?;
        // A cgroup that is not there has no processes.
        let pids = || cg.get_all_pids().unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let left = pids();
            if left.is_empty() {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Cgroup {
                    id: id.to_string(),
                    message: format!("processes {left:?} outlive SIGKILL"),
                });
            }
            let _ = cg.freeze(FreezerState::Thawed);
            for p in left {
                let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        cg.remove().map_err(|e| cgroup_err(id, &e))?;
        fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        info!(container = %id, "deleted what was left");
        Ok(())
    }

    /// What `list` shows of a container whose state cannot be read.
    fn unknown_state(&self, id: &str) -> ContainerState {
        ContainerState {
            oci_version: OCI_VERSION.to_string(),
            id: id.to_string(),
            pid: 0,
            status: Status::Unknown,
            bundle: PathBuf::new(),
            rootfs: PathBuf::new(),
            created: String::new(),
            owner: String::new(),
            annotations: Default::default(),
        }
    }
}
