//! Checkpoint and restore of host containers through CRIU. Checkpoint is libcontainer's
//! (it drives CRIU over its RPC, `rust-criu`), after a real probe that CRIU can dump on this
//! host at all: a CRIU too old for the kernel fails every dump (Debian 12's 3.17 on Linux 6.18
//! says "vdso: Unexpected rt vDSO area bounds"), and such a host is told so in one line before
//! the container is touched. Restore (libcontainer has none) runs `criu restore` the way runc
//! does: the bundle's rootfs as CRIU's root, the bind mounts and the spec's namespaces given
//! back as external, the cgroup the spec names, the checkpointed stdio pipes replaced by the
//! caller's; then the container's state is recorded under the state root, so that every verb
//! finds it. (A vm pod is checkpointed whole, with no CRIU: hull-runtime's VmPod.)

use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::bundle::{load_bundle_spec, rootfs_of};
use crate::error::{chain, Error, Result};
use crate::id::validate_id;
use crate::root::ContainerRoot;

/// The file CRIU writes into every checkpoint (the image set's description).
const INVENTORY: &str = "inventory.img";
/// The first word of CRIU's inventory image (its magic, "Veliky Novgorod" in CRIU's magic.h).
const INVENTORY_MAGIC: u32 = 0x5831_3116;
/// Where libcontainer's checkpoint records the container's stdin, stdout and stderr.
const DESCRIPTORS: &str = "descriptors.json";
/// CRIU's log of a dump (libcontainer's name), in the work dir.
const DUMP_LOG: &str = "dump.log";
/// CRIU's log of a restore, in the work dir.
const RESTORE_LOG: &str = "restore.log";

/// What `checkpoint` is asked (runc's flags).
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Where CRIU's images go.
    pub image_path: PathBuf,
    /// Where CRIU's logs and work files go (default: the image path).
    pub work_path: Option<PathBuf>,
    /// The container runs on afterwards.
    pub leave_running: bool,
    /// Open TCP connections are saved.
    pub tcp_established: bool,
    /// File locks are saved.
    pub file_locks: bool,
    /// External unix sockets are allowed.
    pub ext_unix_sk: bool,
    /// A shell job (a process whose session is outside) is allowed.
    pub shell_job: bool,
}

/// What `restore` is asked (runc's flags).
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Where CRIU's images are.
    pub image_path: PathBuf,
    /// Where CRIU's log and work files go (default: `criu-work` in the container's state
    /// dir, removed with it).
    pub work_path: Option<PathBuf>,
    /// The container's bundle: its rootfs, mounts, namespaces and cgroup.
    pub bundle: PathBuf,
    /// The caller does not wait for the container (the library never does: it only decides
    /// whether the caller's stdio is handed to the restored processes, as runc's `-d`).
    pub detach: bool,
    /// File to write the restored init's pid to.
    pub pid_file: Option<PathBuf>,
    /// Unix socket for a terminal's master (a container with a terminal is refused for now).
    pub console_socket: Option<PathBuf>,
    /// Open TCP connections are restored.
    pub tcp_established: bool,
    /// File locks are restored.
    pub file_locks: bool,
    /// External unix sockets are allowed.
    pub ext_unix_sk: bool,
    /// A shell job (a process whose session is outside) is allowed.
    pub shell_job: bool,
}

/// The version CRIU reports (`criu --version`), or why there is none.
fn criu_version() -> std::result::Result<String, String> {
    let out = Command::new("criu")
        .arg("--version")
        .output()
        .map_err(|e| format!("criu is not installed (apt-get install criu): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("criu --version said {:?}", text.trim()))
}

/// The first error line of a CRIU log, without its timestamp (`-v4` logs have one) and
/// source location.
fn first_error(log: &str) -> Option<String> {
    let line = log.lines().find_map(|l| {
        let at = l.find("Error (")?;
        // Only a timestamp may come before it: "(00.009478) Error (criu/vdso.c:381): ...".
        let before = l[..at].trim();
        let stamp = before.is_empty()
            || (before.starts_with('(')
                && before.ends_with(')')
                && before[1..before.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.'));
        stamp.then(|| &l[at..])
    })?;
    Some(match line.split_once("): ") {
        Some((_, msg)) => msg.trim().to_string(),
        None => line.trim().to_string(),
    })
}

/// The first error of the CRIU log at `path`, or `fallback`.
fn log_error(path: &Path, fallback: &str) -> String {
    fs::read_to_string(path)
        .ok()
        .as_deref()
        .and_then(first_error)
        .unwrap_or_else(|| fallback.to_string())
}

/// Whether CRIU can checkpoint host containers here: its version, or one line saying why not.
/// The probe is real (`criu check` passes where every dump fails): CRIU dumps a process of
/// its own (`sleep`, left running, then killed). It costs a few milliseconds where CRIU
/// fails (at its start) and one small dump where it works, so it is not cached.
pub fn criu_usable() -> std::result::Result<String, String> {
    let version = criu_version()?;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let dir = std::env::temp_dir().join(format!("hull-criu-probe-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let probed = (|| {
        let mut cmd = Command::new("sleep");
        cmd.arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // A session of its own: CRIU dumps a session leader without --shell-job.
        // SAFETY: setsid(2) between fork and exec touches no memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start a probe process: {e}"))?;
        let dumped = Command::new("criu")
            .args(["dump", "--leave-running", "-o", DUMP_LOG, "-t"])
            .arg(child.id().to_string())
            .arg("-D")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
        match dumped {
            Ok(s) if s.success() => Ok(version.clone()),
            Ok(_) => Err(format!(
                "criu {version} cannot dump on this host (kernel {kernel}): {}",
                log_error(&dir.join(DUMP_LOG), "its dump failed")
            )),
            Err(e) => Err(format!("run criu dump: {e}")),
        }
    })();
    let _ = fs::remove_dir_all(&dir);
    probed
}

/// The entries of directory `dir` now (none when it does not exist).
fn entries(dir: &Path) -> Vec<OsString> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// A directory a failed checkpoint must leave as it found it: removed if the checkpoint
/// made it, else emptied of the entries it added.
struct Untouched {
    dir: PathBuf,
    existed: bool,
    before: Vec<OsString>,
}

impl Untouched {
    fn note(dir: &Path) -> Self {
        Untouched {
            dir: dir.to_path_buf(),
            existed: dir.exists(),
            before: entries(dir),
        }
    }

    fn restore(&self) {
        if !self.existed {
            let _ = fs::remove_dir_all(&self.dir);
            return;
        }
        for name in entries(&self.dir) {
            if !self.before.contains(&name) {
                let p = self.dir.join(&name);
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
    }
}

/// Checkpoints host container `id` under `root` into `opts.image_path` with CRIU; unless
/// `leave_running`, the container is then stopped and deleted (runc's rule). Where CRIU
/// cannot dump, one line says so and names why, and the container is left running and
/// untouched; a dump that fails leaves no file of its own behind either.
pub fn checkpoint(root: &ContainerRoot, id: &str, opts: &CheckpointOptions) -> Result<()> {
    let (lock, mut c) = root.open(id, true)?;
    if !c.can_pause() {
        return Err(Error::WrongStatus {
            id: id.to_string(),
            status: c.status().to_string().to_lowercase(),
            op: "checkpoint (it is not running)",
        });
    }
    if let Err(why) = criu_usable() {
        return Err(Error::Unsupported(format!(
            "checkpoint of host container {id} needs CRIU: {why}"
        )));
    }
    let work = opts.work_path.as_deref().unwrap_or(&opts.image_path);
    let dirs = [Untouched::note(&opts.image_path), Untouched::note(work)];
    let had_inventory = opts.image_path.join(INVENTORY).exists();
    let lc = libcontainer::container::CheckpointOptions {
        ext_unix_sk: opts.ext_unix_sk,
        file_locks: opts.file_locks,
        image_path: opts.image_path.clone(),
        leave_running: opts.leave_running,
        shell_job: opts.shell_job,
        tcp_established: opts.tcp_established,
        work_path: opts.work_path.clone(),
        manage_cgroups_mode: rust_criu::CgMode::SOFT,
        link_remap: false,
    };
    let Err(e) = c.checkpoint(&lc) else {
        tracing::info!(container = %id, images = %opts.image_path.display(), "checkpointed");
        return Ok(());
    };
    // CRIU writes the inventory once the dump is complete: then only libcontainer's delete
    // of the container (its poststop hooks are strict) failed; hull's delete finishes it.
    if !had_inventory && opts.image_path.join(INVENTORY).exists() {
        tracing::warn!(container = %id, error = %chain(&e), "checkpointed; libcontainer's delete failed");
        drop(lock);
        if !opts.leave_running {
            root.delete(id, true)?;
        }
        return Ok(());
    }
    let why = log_error(&work.join(DUMP_LOG), &chain(&e));
    for d in dirs.iter().rev() {
        d.restore();
    }
    Err(Error::Container {
        op: "checkpoint",
        id: id.to_string(),
        message: format!("CRIU failed: {why}"),
    })
}

/// Whether `dir` holds a CRIU checkpoint: one line why not.
fn check_images(dir: &Path) -> std::result::Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "the image path {} is not a directory",
            dir.display()
        ));
    }
    let inventory = dir.join(INVENTORY);
    let head = match fs::read(&inventory) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} holds no CRIU checkpoint (no {INVENTORY})",
                dir.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", inventory.display())),
    };
    let magic = head
        .get(..4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    if magic != Some(INVENTORY_MAGIC) {
        return Err(format!(
            "{} is not a CRIU image (a corrupt checkpoint)",
            inventory.display()
        ));
    }
    Ok(())
}

/// The spec's path of namespace `typ`, if it joins an existing one.
fn namespace_path(spec: &Spec, typ: LinuxNamespaceType) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == typ)?
        .path()
        .clone()
}

/// `fd` duplicated without close-on-exec, so that `criu` inherits it under the new number.
fn inheritable(fd: i32) -> Result<OwnedFd> {
    // SAFETY: dup(2) of a descriptor number; the result, when valid, is a new descriptor
    // this process owns alone.
    let new = unsafe { libc::dup(fd) };
    if new < 0 {
        return Err(Error::sys(format!("dup fd {fd}"), nix::Error::last()));
    }
    // SAFETY: `new` was just returned by dup(2) and is owned by nobody else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(new) })
}

/// The arguments of `criu restore` besides the fixed ones: external mounts, inherited
/// namespaces and stdio pipes (the descriptors keep them open until `criu` has run).
fn external_args(
    spec: &Spec,
    bundle: &Path,
    images: &Path,
) -> Result<(Vec<OsString>, Vec<OwnedFd>)> {
    let mut args: Vec<OsString> = Vec::new();
    let mut fds = Vec::new();
    // libcontainer's checkpoint names every bind mount external, keyed by its destination:
    // the bundle's source goes there again (it may have moved).
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if libcontainer::rootfs::utils::is_bind(m) {
            let Some(source) = m.source() else { continue };
            let source = if source.is_absolute() {
                source.clone()
            } else {
                bundle.join(source)
            };
            let mut map = m.destination().as_os_str().to_owned();
            map.push(":");
            map.push(source.as_os_str());
            args.extend(["--ext-mount-map".into(), map]);
        } else if m.typ().as_deref() == Some("cgroup") {
            // And, on a v1 or hybrid host, each cgroup v1 hierarchy, keyed by itself.
            use libcgroups::common::CgroupSetup::{Hybrid, Legacy};
            if matches!(
                libcgroups::common::get_cgroup_setup(),
                Ok(Legacy) | Ok(Hybrid)
            ) {
                let points = libcgroups::v1::util::list_subsystem_mount_points()
                    .map_err(|e| Error::InvalidInput(format!("cgroup v1 mounts: {e}")))?;
                for mp in points {
                    if mp.starts_with(libcgroups::common::DEFAULT_CGROUP_ROOT) {
                        let mut map = mp.as_os_str().to_owned();
                        map.push(":");
                        map.push(mp.as_os_str());
                        args.extend(["--ext-mount-map".into(), map]);
                    }
                }
            }
        }
    }
    // Namespaces the spec joins were external at the dump (libcontainer's keys).
    for (typ, name) in [
        (LinuxNamespaceType::Network, "net"),
        (LinuxNamespaceType::Pid, "pid"),
    ] {
        if let Some(path) = namespace_path(spec, typ) {
            let f = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let fd = inheritable(f.as_raw_fd())?;
            args.extend([
                "--inherit-fd".into(),
                format!("fd[{}]:{}", fd.as_raw_fd(), rust_criu::criu_ns_to_key(name)).into(),
            ]);
            fds.push(fd);
        }
    }
    // The container's stdio pipes (outside it, gone with the checkpointed caller) become
    // this process's stdio, as runc does (a detached restore's too).
    if let Ok(text) = fs::read_to_string(images.join(DESCRIPTORS)) {
        let descriptors: Vec<String> = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidInput(format!("{}: {e}", images.join(DESCRIPTORS).display()))
        })?;
        for (n, d) in descriptors.iter().enumerate().take(3) {
            if d.starts_with("pipe:") {
                let fd = inheritable(n as i32)?;
                args.extend([
                    "--inherit-fd".into(),
                    format!("fd[{}]:{d}", fd.as_raw_fd()).into(),
                ]);
                fds.push(fd);
            }
        }
    }
    Ok((args, fds))
}

/// What a failed restore must take away again: the state dir (with CRIU's work dir, if
/// it is the default), the rootfs bind mount, the cgroup, the pid file.
struct Restoring<'a> {
    root: &'a ContainerRoot,
    id: &'a str,
    dir: PathBuf,
    criu_root: Option<PathBuf>,
    cgroup: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    done: bool,
}

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.criu_root.take() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        if self.done {
            if let Some(m) = self.dir.join("criu-root").to_str() {
                let _ = fs::remove_dir(m);
            }
            return;
        }
        if let Some(path) = self.cgroup.take() {
            if let Ok(cg) =
                libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
                    cgroup_path: path,
                    systemd_cgroup: self.root.systemd_cgroup(),
                    container_name: self.id.to_string(),
                })
            {
                use libcgroups::common::CgroupManager;
                let _ = cg.remove();
            }
        }
        if let Some(p) = &self.pid_file {
            let _ = fs::remove_file(p);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Restores host container `id` under `root` from the CRIU checkpoint in `opts.image_path`,
/// with `opts.bundle`'s rootfs, mounts, namespaces and cgroup; returns the restored init's
/// pid, a child of this process (CRIU restores it as its sibling). The container is running
/// and recorded under `root` as `create` + `start` would leave it. On failure one line says
/// why and nothing is left behind (state, cgroup, mount, pid file).
pub fn restore(root: &ContainerRoot, id: &str, opts: &RestoreOptions) -> Result<i32> {
    validate_id(id)?;
    let what = format!("restore of host container {id}");
    let images =
        std::path::absolute(&opts.image_path).map_err(|e| Error::io(&opts.image_path, e))?;
    let dir = root.root().join(id);
    if dir.exists() {
        return Err(Error::AlreadyExists(id.to_string()));
    }
    check_images(&images).map_err(|why| Error::InvalidInput(format!("{what}: {why}")))?;
    let spec = load_bundle_spec(&opts.bundle)?;
    if spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
        return Err(Error::Unsupported(format!(
            "{what}: the container has a terminal (process.terminal), which a CRIU restore \
             of a host container does not give back yet"
        )));
    }
    let version =
        criu_version().map_err(|why| Error::Unsupported(format!("{what} needs CRIU: {why}")))?;
    let bundle = fs::canonicalize(&opts.bundle).map_err(|e| Error::io(&opts.bundle, e))?;
    fs::create_dir_all(root.root()).map_err(|e| Error::io(root.root(), e))?;
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::AlreadyExists(id.to_string()))
        }
        Err(e) => return Err(Error::io(&dir, e)),
    }
    // The lock every verb takes on a container's state dir (see `ContainerRoot::open`):
    // none of them sees the container before it is restored and recorded.
    let _lock = fs::File::open(&dir)
        .map_err(|e| Error::io(&dir, e))
        .and_then(|f| {
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| Error::sys(format!("lock state of {id}"), e))
        });
    let mut undo = Restoring {
        root,
        id,
        dir: dir.clone(),
        criu_root: None,
        cgroup: None,
        pid_file: opts.pid_file.clone(),
        done: false,
    };
    let _lock = _lock?;
    let lc_err = |e: &(dyn std::error::Error + 'static)| Error::Container {
        op: "restore",
        id: id.to_string(),
        message: chain(e),
    };
    let config = YoukiConfig::from_spec(&spec, id).map_err(|e| lc_err(&e))?;
    config.save(&dir).map_err(|e| lc_err(&e))?;
    let mut c = Container::new(id, ContainerStatus::Creating, None, &bundle, &dir)
        .map_err(|e| lc_err(&e))?;
    c.state.use_systemd = root.systemd_cgroup();
    c.save().map_err(|e| lc_err(&e))?;

    // CRIU wants its root to be a mount point (runc's criu-root).
    let criu_root = dir.join("criu-root");
    fs::create_dir(&criu_root).map_err(|e| Error::io(&criu_root, e))?;
    let rootfs = rootfs_of(&bundle, &spec);
    nix::mount::mount(
        Some(&rootfs),
        &criu_root,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::sys(format!("bind {} for CRIU", rootfs.display()), e))?;
    undo.criu_root = Some(criu_root.clone());

    let work = match &opts.work_path {
        Some(w) => std::path::absolute(w).map_err(|e| Error::io(w, e))?,
        None => dir.join("criu-work"),
    };
    let work_before = Untouched::note(&work);
    fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let pid_path = work.join("restore.pid");
    let _ = fs::remove_file(&pid_path);
    let (external, inherited) = external_args(&spec, &bundle, &images)?;
    let mut cmd = Command::new("criu");
    cmd.arg("restore")
        .arg("--images-dir")
        .arg(&images)
        .arg("--work-dir")
        .arg(&work)
        .args(["--log-file", RESTORE_LOG, "-v4"])
        .arg("--root")
        .arg(&criu_root)
        .args(["--restore-detached", "--restore-sibling"])
        .arg("--pidfile")
        .arg(&pid_path)
        .arg("--manage-cgroups=soft");
    if !root.systemd_cgroup() {
        // The cgroupfs drivers take the path under each hierarchy's root (libcontainer's
        // default, `:youki:<id>`, too); CRIU wants it absolute.
        cmd.arg("--cgroup-root")
            .arg(Path::new("/").join(&config.cgroup_path));
        undo.cgroup = Some(config.cgroup_path.clone());
    }
    for (on, flag) in [
        (opts.tcp_established, "--tcp-established"),
        (opts.file_locks, "--file-locks"),
        (opts.ext_unix_sk, "--ext-unix-sk"),
        (opts.shell_job, "--shell-job"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd.args(&external)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    tracing::debug!(container = %id, criu = %version, ?cmd, "restore");
    let out = cmd
        .output()
        .map_err(|e| Error::Unsupported(format!("{what} needs CRIU: run criu: {e}")))?;
    drop(inherited);
    if !out.status.success() {
        // CRIU's log has the cause; what fails before the log opens goes to its stderr.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let fallback = first_error(&stderr)
            .or_else(|| {
                stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.trim().to_string())
            })
            .unwrap_or_else(|| format!("criu restore {}", out.status));
        let why = log_error(&work.join(RESTORE_LOG), &fallback);
        work_before.restore();
        return Err(Error::Container {
            op: "restore",
            id: id.to_string(),
            message: format!("CRIU {version} failed: {why}"),
        });
    }
    let pid: i32 = fs::read_to_string(&pid_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::Container {
            op: "restore",
            id: id.to_string(),
            message: format!("CRIU wrote no pid to {}", pid_path.display()),
        })?;
    let _ = fs::remove_file(&pid_path);
    c.state.pid = Some(pid);
    c.state.status = ContainerStatus::Running;
    c.state.annotations = spec.annotations().clone();
    c.state.created = Some(chrono::Utc::now());
    c.state.creator = Some(nix::unistd::geteuid().as_raw());
    let recorded = c
        .save()
        .map_err(|e| lc_err(&e))
        .and_then(|()| match &opts.pid_file {
            Some(p) => fs::write(p, pid.to_string()).map_err(|e| Error::io(p, e)),
            None => Ok(()),
        });
    if let Err(e) = recorded {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(e);
    }
    undo.done = true;
    tracing::info!(container = %id, pid, images = %images.display(), "restored");
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_criu_error_is_named_without_its_source_location() {
        let log = "(00.001) Version: 3.17.1\n\
                   Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n\
                   Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\n";
        assert_eq!(
            first_error(log).as_deref(),
            Some("vdso: Unexpected rt vDSO area bounds")
        );
        assert_eq!(first_error("all fine\n"), None);
    }

    #[test]
    fn a_timestamped_error_is_found_and_a_mention_of_one_is_not() {
        let log = "(00.009470) mentions Error (nothing): here\n\
                   (00.009478) Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n";
        assert_eq!(
            first_error(log).as_deref(),
            Some("vdso: Unexpected rt vDSO area bounds")
        );
    }

    #[test]
    fn an_image_dir_must_hold_a_criu_inventory() {
        let t = tempfile::tempdir().unwrap();
        let missing = check_images(&t.path().join("nope")).unwrap_err();
        assert!(missing.contains("not a directory"), "{missing}");
        let empty = check_images(t.path()).unwrap_err();
        assert!(empty.contains("no inventory.img"), "{empty}");
        fs::write(t.path().join(INVENTORY), "hull vm checkpoint").unwrap();
        let corrupt = check_images(t.path()).unwrap_err();
        assert!(corrupt.contains("not a CRIU image"), "{corrupt}");
        fs::write(t.path().join(INVENTORY), INVENTORY_MAGIC.to_le_bytes()).unwrap();
        check_images(t.path()).unwrap();
    }

    #[test]
    fn a_failed_checkpoint_takes_away_only_what_it_added() {
        let t = tempfile::tempdir().unwrap();
        let made = t.path().join("made");
        let given = t.path().join("given");
        fs::create_dir(&given).unwrap();
        fs::write(given.join("mine"), "x").unwrap();
        let notes = [Untouched::note(&made), Untouched::note(&given)];
        fs::create_dir(&made).unwrap();
        fs::write(made.join("dump.log"), "x").unwrap();
        fs::write(given.join("descriptors.json"), "[]").unwrap();
        fs::create_dir(given.join("sub")).unwrap();
        for n in &notes {
            n.restore();
        }
        assert!(!made.exists());
        assert_eq!(entries(&given), vec![OsString::from("mine")]);
    }

    /// A bundle whose spec is `hull spec`'s defaults edited by `edit`.
    fn bundle(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("rootfs")).unwrap();
        let mut v = serde_json::to_value(Spec::default()).unwrap();
        v["process"]["terminal"] = false.into();
        edit(&mut v);
        fs::write(t.path().join("config.json"), v.to_string()).unwrap();
        t
    }

    #[test]
    fn restore_gives_back_bind_mounts_joined_namespaces_and_stdio_pipes() {
        let b = bundle(|v| {
            v["mounts"] = serde_json::json!([
                {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]},
                {"destination": "/etc/hosts", "source": "/etc/hosts", "options": ["bind", "ro"]},
                {"destination": "/proc", "type": "proc", "source": "proc"}
            ]);
            v["linux"]["namespaces"] = serde_json::json!([
                {"type": "network", "path": "/proc/self/ns/net"},
                {"type": "mount"}
            ]);
        });
        let spec = load_bundle_spec(b.path()).unwrap();
        let images = tempfile::tempdir().unwrap();
        fs::write(
            images.path().join(DESCRIPTORS),
            r#"["/dev/null","pipe:[4242]","/tmp/log (deleted)"]"#,
        )
        .unwrap();
        let (args, fds) = external_args(&spec, b.path(), images.path()).unwrap();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let pairs: Vec<(&str, &str)> = args
            .chunks(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
            .collect();
        let data = format!("/data:{}", b.path().join("data").display());
        assert!(
            pairs.contains(&("--ext-mount-map", data.as_str())),
            "{pairs:?}"
        );
        assert!(pairs.contains(&("--ext-mount-map", "/etc/hosts:/etc/hosts")));
        assert!(!args.iter().any(|a| a.starts_with("/proc:")));
        assert_eq!(fds.len(), 2, "the netns and stdout: {pairs:?}");
        let net = format!("fd[{}]:extRootNetNS", fds[0].as_raw_fd());
        let out = format!("fd[{}]:pipe:[4242]", fds[1].as_raw_fd());
        assert!(pairs.contains(&("--inherit-fd", net.as_str())), "{pairs:?}");
        assert!(pairs.contains(&("--inherit-fd", out.as_str())), "{pairs:?}");
        // What criu inherits stays open across exec.
        for fd in &fds {
            let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_eq!(flags & libc::FD_CLOEXEC, 0);
        }
    }

    #[test]
    fn restore_refuses_in_one_line_and_leaves_nothing() {
        let state = tempfile::tempdir().unwrap();
        let root = ContainerRoot::new(state.path(), false);
        let b = bundle(|_| {});
        let images = tempfile::tempdir().unwrap();
        let opts = RestoreOptions {
            image_path: images.path().to_path_buf(),
            bundle: b.path().to_path_buf(),
            ..Default::default()
        };
        let e = restore(&root, "r1", &opts).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "restore of host container r1: {} holds no CRIU checkpoint (no inventory.img)",
                images.path().display()
            )
        );
        // A terminal cannot be given back yet: said before anything is made.
        fs::write(images.path().join(INVENTORY), INVENTORY_MAGIC.to_le_bytes()).unwrap();
        let tty = bundle(|v| v["process"]["terminal"] = true.into());
        let e = restore(
            &root,
            "r1",
            &RestoreOptions {
                bundle: tty.path().to_path_buf(),
                ..opts.clone()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("terminal"), "{e}");
        assert!(entries(state.path()).is_empty());
        // An id that exists is refused as such.
        fs::create_dir(state.path().join("r2")).unwrap();
        let e = restore(&root, "r2", &opts).unwrap_err();
        assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
        assert_eq!(e.to_string(), "container r2 already exists");
        assert!(matches!(
            restore(&root, "../x", &opts).unwrap_err(),
            Error::InvalidId(_)
        ));
    }

    #[test]
    fn the_probe_answers_with_a_version_or_one_line() {
        match criu_usable() {
            Ok(v) => assert!(!v.is_empty()),
            Err(why) => {
                assert_eq!(why.lines().count(), 1, "{why}");
                assert!(why.contains("criu"), "{why}");
            }
        }
    }
}
