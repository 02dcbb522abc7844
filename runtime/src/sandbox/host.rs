//! `HostSandbox`: containers on the host kernel, through libcontainer (youki's library).

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
use oci_spec::runtime::{LinuxResources, Spec};
use tracing::{debug, info};

use super::{ContainerState, CreateOptions, ExecOptions, ExitStatus, Sandbox, Stats, Status};
use crate::error::{chain, Error, Result};

/// Containers sharing the host kernel; state lives under `root/<id>/`.
#[derive(Debug, Clone)]
pub struct HostSandbox {
    root: PathBuf,
    systemd_cgroup: bool,
}

/// Whether `id` is acceptable as a container id (runc's rule; never a path).
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// Read and check a bundle's config.json without side effects.
pub fn load_bundle_spec(bundle: &Path) -> Result<Spec> {
    if !bundle.is_dir() {
        return Err(Error::BundleMissing(bundle.to_path_buf()));
    }
    let path = bundle.join("config.json");
    let text = fs::read(&path).map_err(|e| Error::InvalidConfig {
        bundle: bundle.to_path_buf(),
        reason: e.to_string(),
    })?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|e| Error::InvalidConfig {
        bundle: bundle.to_path_buf(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| Error::InvalidConfig {
        bundle: bundle.to_path_buf(),
        reason,
    };
    if !spec.version().starts_with("1.") {
        return Err(invalid(format!(
            "ociVersion {:?} is not supported (1.x only)",
            spec.version()
        )));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("no root".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(invalid(format!(
            "root.path {} is not a directory",
            rootfs.display()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("no process".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args must not be empty".into()));
    }
    if spec.linux().is_none() {
        return Err(invalid("no linux section".into()));
    }
    Ok(spec)
}

fn lc_err(op: &'static str, id: &str, e: impl std::error::Error + 'static) -> Error {
    Error::Container {
        op,
        id: id.to_string(),
        message: chain(&e),
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

impl HostSandbox {
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
            oci_version: "1.0.2".to_string(),
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
        stdio: super::Stdio,
    ) -> Result<ContainerBuilder> {
        let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
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

impl HostSandbox {
    /// `create` for a bundle whose config.json the caller has just checked with
    /// [`load_bundle_spec`] (as `run` does to read `process.terminal`): the same
    /// steps without parsing the spec a second time. libcontainer reads it again itself.
    pub fn create_checked(&self, opts: CreateOptions) -> Result<i32> {
        self.create_with(opts, false)
    }

    fn create_with(&self, opts: CreateOptions, check_bundle: bool) -> Result<i32> {
        let id = opts.id.clone();
        validate_id(&id)?;
        let dir = self.dir(&id);
        if dir.exists() {
            return Err(Error::AlreadyExists(id));
        }
        if check_bundle {
            load_bundle_spec(&opts.bundle)?;
        }
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
        let result = self
            .builder(
                &id,
                opts.pid_file.clone(),
                opts.console_socket,
                opts.preserve_fds,
                opts.stdio,
            )?
            .as_init(&bundle)
            .with_systemd(self.systemd_cgroup)
            .with_detach(opts.detach)
            .with_no_pivot(opts.no_pivot)
            .build();
        match result {
            Ok(c) => {
                let pid = c.pid().map(|p| p.as_raw()).unwrap_or(0);
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
                Err(lc_err("create", &id, e))
            }
        }
    }
}

/// The `oom_kill` counter of a memory cgroup: v1 `memory.oom_control`, v2 `memory.events`.
fn read_oom_kill(dir: &Path) -> Result<u64> {
    for file in ["memory.oom_control", "memory.events"] {
        let p = dir.join(file);
        match fs::read_to_string(&p) {
            Ok(text) => {
                return Ok(text
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(p, e)),
        }
    }
    Err(Error::Unsupported(format!(
        "{}: no memory.oom_control or memory.events",
        dir.display()
    )))
}

/// The directory of a container's memory cgroup for the cgroupfs driver.
fn memory_cgroup_dir(id: &str, cgroup_path: &Path, systemd: bool) -> Result<PathBuf> {
    if systemd {
        return Err(Error::Unsupported(format!(
            "container {id}: OOM counts are read through cgroupfs; this container's cgroup is managed by systemd"
        )));
    }
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    let cg_err = |message: String| Error::Cgroup {
        id: id.to_string(),
        message,
    };
    match libcgroups::common::get_cgroup_setup().map_err(|e| cg_err(chain(&e)))? {
        libcgroups::common::CgroupSetup::Unified => {
            Ok(Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT).join(rel))
        }
        _ => {
            let root = libcgroups::v1::util::get_subsystem_mount_point(
                &libcgroups::v1::ControllerType::Memory,
            )
            .map_err(|e| cg_err(chain(&e)))?;
            Ok(root.join(rel))
        }
    }
}

impl Sandbox for HostSandbox {
    fn create(&self, opts: CreateOptions) -> Result<i32> {
        self.create_with(opts, true)
    }

    fn start(&self, id: &str) -> Result<()> {
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

    fn state(&self, id: &str) -> Result<ContainerState> {
        Ok(self.to_state(&self.load(id)?))
    }

    fn list(&self) -> Result<Vec<ContainerState>> {
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

    fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32> {
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
        // libcontainer takes a process.json path: write ours beside the state.
        let tmp = self.dir(id).join(format!(
            "exec-{}-{}.json",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        let text = serde_json::to_vec(&opts.process)
            .map_err(|e| Error::InvalidInput(format!("exec process: {e}")))?;
        fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        let result = self
            .builder(
                id,
                opts.pid_file,
                opts.console_socket,
                opts.preserve_fds,
                opts.stdio,
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

    fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
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

    fn wait(&self, id: &str, pid: i32) -> Result<ExitStatus> {
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

    fn pids(&self, id: &str) -> Result<Vec<i32>> {
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

    fn stats(&self, id: &str) -> Result<Stats> {
        let c = self.load(id)?;
        if c.status() == ContainerStatus::Stopped {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: "stopped".into(),
                op: "read stats",
            });
        }
        self.cgroup(&c)?.stats().map_err(|e| Error::Cgroup {
            id: id.to_string(),
            message: chain(&e),
        })
    }

    fn pause(&self, id: &str) -> Result<()> {
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

    fn resume(&self, id: &str) -> Result<()> {
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

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let (_lock, c) = self.open(id, true)?;
        if c.status() == ContainerStatus::Stopped {
            return Err(Error::WrongStatus {
                id: id.to_string(),
                status: "stopped".into(),
                op: "update",
            });
        }
        self.cgroup(&c)?
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| Error::Cgroup {
                id: id.to_string(),
                message: chain(&e),
            })
    }

    fn oom_kills(&self, id: &str) -> Result<u64> {
        let c = self.load(id)?;
        let config = c.spec().map_err(|e| lc_err("read config of", id, e))?;
        read_oom_kill(&memory_cgroup_dir(id, &config.cgroup_path, c.systemd())?)
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "abc-123", "x_y+z.1"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "a\nb"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_bundle_and_bad_config() {
        let d = std::env::temp_dir().join(format!("hull-ut-{}", std::process::id()));
        assert!(matches!(load_bundle_spec(&d), Err(Error::BundleMissing(_))));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("config.json"), b"{not json").unwrap();
        let e = load_bundle_spec(&d).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
