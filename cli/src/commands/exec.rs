//! `hull exec`: another process in a running container, from `--process FILE` or from the
//! container's own process with the command line's flags applied.

use hull_runtime::pod::{Containers, ExecOptions, Stdio};
use oci_spec::runtime::{Capability, Process, UserBuilder};

use super::{Globals, Target};
use crate::args::ExecArgs;
use crate::error::{Error, Result};
use crate::foreground::{become_subreaper, block_forwarded, forward_signals_with, Foreground};

/// `hull exec`.
pub fn run(g: &Globals, a: ExecArgs) -> Result<i32> {
    let target = Target::of(g, &a.id);
    let bundle = || target.bundle(&a.id);
    let process = exec_process(&bundle, &a)?;
    start(&target, &a.id, process, &a, false)
}

/// Runs `process` in container `id` of `target` as `hull exec` does (`in_guest`: in its pod's
/// guest instead, for `hull console`), in the foreground unless `a.detach`; its exit code.
pub(super) fn start(
    target: &Target,
    id: &str,
    process: Process,
    a: &ExecArgs,
    in_guest: bool,
) -> Result<i32> {
    let sandbox = target.containers();
    let remote = match target {
        Target::Served(r) => Some(r),
        Target::Host(_) => None,
    };
    let terminal = process.terminal().unwrap_or(false);
    if a.detach {
        sandbox.exec(
            id,
            ExecOptions {
                process,
                pid_file: a.pid_file.clone(),
                console_socket: a.console_socket.clone(),
                preserve_fds: a.preserve_fds,
                detach: true,
                stdio: Stdio::default(),
                in_guest,
            },
        )?;
        return Ok(0);
    }
    become_subreaper()?;
    let root = std::env::temp_dir();
    let fg = Foreground::new(&root, id, terminal, a.console_socket.clone())?;
    let pid = sandbox.exec(
        id,
        ExecOptions {
            process,
            pid_file: a.pid_file.clone(),
            console_socket: fg.console_socket.clone(),
            preserve_fds: a.preserve_fds,
            detach: fg.detached(),
            stdio: fg.stdio()?,
            in_guest,
        },
    )?;
    block_forwarded();
    let attached = fg.attach()?;
    {
        // kill(2) for a host process; the sandbox server for a vm one.
        let id = id.to_string();
        let sb = remote.cloned();
        forward_signals_with(move |sig| match &sb {
            Some(r) => {
                let _ = r.signal(&id, pid, sig.into());
            }
            None => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        });
    }
    let status = sandbox.wait(id, pid)?;
    attached.finish();
    Ok(status.code())
}

/// The process an argv-form `exec` runs: the container's own process with the flags applied.
fn exec_process(bundle: &dyn Fn() -> Result<std::path::PathBuf>, a: &ExecArgs) -> Result<Process> {
    if let Some(path) = &a.process {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        return serde_json::from_slice(&text)
            .map_err(|e| Error::InvalidInput(format!("process file {}: {e}", path.display())));
    }
    if a.command.is_empty() {
        return Err(Error::InvalidInput(
            "exec: give a command or --process FILE".into(),
        ));
    }
    // The container's record names its bundle; `state` would parse config.json once more
    // just to report the rootfs.
    let spec = hull_container::load_bundle_spec(&bundle()?)?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(if a.tty {
        crate::console::console_size()
    } else {
        None
    });
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.into());
    }
    if !a.env.is_empty() {
        let mut env: Vec<String> = p.env().clone().unwrap_or_default();
        for kv in &a.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        p.set_env(Some(env));
    }
    if a.user.is_some() || !a.additional_gids.is_empty() {
        let mut uid = p.user().uid();
        let mut gid = p.user().gid();
        if let Some(u) = &a.user {
            let mut it = u.splitn(2, ':');
            let bad = || Error::InvalidInput(format!("--user {u:?}: expected uid[:gid]"));
            uid = it.next().unwrap_or_default().parse().map_err(|_| bad())?;
            if let Some(g) = it.next() {
                gid = g.parse().map_err(|_| bad())?;
            }
        }
        let mut ub = UserBuilder::default().uid(uid).gid(gid);
        if !a.additional_gids.is_empty() {
            ub = ub.additional_gids(a.additional_gids.clone());
        }
        p.set_user(ub.build().map_err(|e| Error::InvalidInput(e.to_string()))?);
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for c in &a.cap {
            let cap: Capability = c
                .parse()
                .map_err(|_| Error::InvalidInput(format!("unknown capability {c:?}")))?;
            let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
        }
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}
