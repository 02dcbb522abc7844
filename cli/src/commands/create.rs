//! `hull create`: a container whose init waits for `start`. A host container is created by
//! this process; a vm container by a sandbox server this verb starts, detached, which owns
//! the container's VM until `delete`; this verb then leaves the init's mirror, whose pid
//! goes to `--pid-file` (see `crate::server`).

use std::io::Read;
use std::path::Path;

use hull_runtime::config::{Config, Isolation, ISOLATION_ANNOTATION};
use hull_runtime::pod::{Containers, CreateOptions, Stdio};

use super::Globals;
use crate::args::CreateArgs;
use crate::error::{Error, Result};
use crate::server::{Mirrored, ServedContainer};

/// `hull create`.
pub fn run(g: &Globals, a: &CreateArgs) -> Result<i32> {
    let (isolation, _, _) = isolation_of(g.config.as_deref(), &a.bundle)?;
    if isolation == Isolation::Vm {
        create_vm_detached(g, a, None).map(|_mirror| ())?;
        return Ok(0);
    }
    g.host_pod()
        .create(create_options(a, true, a.console_socket.clone()))?;
    Ok(0)
}

/// `hull create` (or `run -d`) of a vm container: start its sandbox server, detached, wait
/// until it has created the container (or failed, with its reason), then fork the init's
/// mirror, a descendant of this process as the caller's subreaper wants, and write its pid.
/// With `restore`, the server starts the pod from that checkpoint (`hull restore`): the
/// container runs already.
pub(super) fn create_vm_detached(
    g: &Globals,
    a: &CreateArgs,
    restore: Option<&Path>,
) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    // The bundle's spec was read and checked by `isolation_of`.
    hull_container::validate_id(&a.id)?;
    let dir = g.root.join(&a.id);
    std::fs::create_dir_all(&g.root).map_err(|e| Error::io(&g.root, e))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(hull_container::Error::AlreadyExists(a.id.clone()).into())
        }
        Err(e) => return Err(Error::io(&dir, e)),
    }
    let fail = |e: Error| {
        let _ = std::fs::remove_dir_all(&dir);
        e
    };
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| fail(Error::sys("pipe", e)))?;
    let exe = std::env::current_exe().map_err(|e| fail(Error::io("/proc/self/exe", e)))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root").arg(&g.root);
    if let Some(c) = &g.config {
        cmd.arg("--config").arg(c);
    }
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    cmd.args([
        "sandbox-server",
        "--id",
        &a.id,
        "--ready-fd",
        "3",
        "--bundle",
    ])
    .arg(abs(&a.bundle));
    if let Some(p) = &a.console_socket {
        cmd.arg("--console-socket").arg(abs(p));
    }
    if let Some(p) = restore {
        cmd.arg("--restore").arg(abs(p));
    }
    let w = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    // SAFETY: between fork and exec only setsid(2) and dup2(2), async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::dup2(w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| fail(Error::io("start the sandbox server", e)))?;
    drop(cmd);
    drop(ready_w);
    let mut answer = String::new();
    let _ = std::fs::File::from(ready_r).read_to_string(&mut answer);
    drop(child);
    match answer.trim() {
        "ok" => {}
        "" => {
            return Err(fail(Error::Server(format!(
                "container {}: the sandbox server died while creating it",
                a.id
            ))))
        }
        why => return Err(fail(Error::Server(why.to_string()))),
    }
    let served = ServedContainer::new(&g.root, &a.id);
    match served.mirror(Mirrored::Init, a.pid_file.as_deref()) {
        Ok(mirror) => Ok(mirror),
        Err(e) => {
            // A container nobody can wait for is no use: it goes, and with it everything.
            let _ = served.delete(&a.id, true);
            Err(e.into())
        }
    }
}

/// The isolation a bundle asks for (its annotation, else the config, else host), with the
/// config and the bundle's spec it was read from.
pub(super) fn isolation_of(
    config: Option<&Path>,
    bundle: &Path,
) -> Result<(Isolation, Config, oci_spec::runtime::Spec)> {
    let spec = hull_container::load_bundle_spec(bundle)?;
    let annotation = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ISOLATION_ANNOTATION).cloned());
    let (cfg, _) = Config::load_or_default(config)?;
    let isolation = cfg.isolation_for(annotation.as_deref())?;
    Ok((isolation, cfg, spec))
}

pub(super) fn create_options(
    a: &CreateArgs,
    detach: bool,
    console_socket: Option<std::path::PathBuf>,
) -> CreateOptions {
    CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket,
        preserve_fds: a.preserve_fds,
        no_pivot: a.no_pivot,
        detach,
        stdio: Stdio::default(),
    }
}
