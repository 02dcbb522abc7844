//! `hull run`: create, start and (unless detached) wait for a container, then delete it. A
//! vm container's VM is owned by its sandbox server, as after `create`, in the foreground too:
//! the container is then listed, reachable by every verb, and cleaned up by `delete` if this
//! process is killed.

use hull_runtime::config::Isolation;
use hull_runtime::pod::{Containers, HostPod};

use super::create::{create_options, create_vm_detached, isolation_of};
use super::Globals;
use crate::args::CreateArgs;
use crate::error::{Error, Result};
use crate::foreground::{
    become_subreaper, block_forwarded, forward_signals, forward_signals_with, Foreground,
};
use crate::server::ServedContainer;

/// `hull run`.
pub fn run(g: &Globals, a: &CreateArgs, detach: bool, keep: bool) -> Result<i32> {
    let (isolation, _, spec) = isolation_of(g.config.as_deref(), &a.bundle)?;
    if isolation == Isolation::Vm {
        if detach {
            create_vm_detached(g, a, None)?;
            let remote = ServedContainer::new(&g.root, &a.id);
            if let Err(e) = remote.start(&a.id) {
                let _ = remote.delete(&a.id, true);
                return Err(e.into());
            }
            return Ok(0);
        }
        return run_vm_container(g, a, keep, wants_terminal(&spec), None);
    }
    run_container(&g.host_pod(), a, detach, keep, wants_terminal(&spec))
}

/// Whether a foreground container wants a terminal (read once with the spec).
pub(super) fn wants_terminal(spec: &oci_spec::runtime::Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// `hull run` of a vm container in the foreground: its sandbox server (as `create` starts one)
/// owns the VM and takes this process's stdio (or, with a terminal, hands this process the pty);
/// this process starts the container, passes signals on, waits for the init's mirror (its
/// child: the mirror exits with the guest init's status) and deletes the container unless
/// `keep`. With `restore`, the pod starts from that checkpoint, its container running
/// already (`hull restore` in the foreground).
pub(super) fn run_vm_container(
    g: &Globals,
    a: &CreateArgs,
    keep: bool,
    terminal: bool,
    restore: Option<&std::path::Path>,
) -> Result<i32> {
    become_subreaper()?;
    let fg = Foreground::new(&g.root, &a.id, terminal, a.console_socket.clone())?;
    let mut served_args = a.clone();
    served_args.console_socket = fg.console_socket.clone();
    let mirror = create_vm_detached(g, &served_args, restore)?;
    let remote = ServedContainer::new(&g.root, &a.id);
    // The pty proxy's threads start in attach: block first.
    block_forwarded();
    let attached = match fg.attach() {
        Ok(t) => t,
        Err(e) => {
            let _ = remote.delete(&a.id, true);
            return Err(e);
        }
    };
    {
        let (r, id) = (remote.clone(), a.id.clone());
        forward_signals_with(move |sig| {
            let _ = r.kill(&id, sig.into(), false);
        });
    }
    if restore.is_none() {
        if let Err(e) = remote.start(&a.id) {
            let _ = remote.delete(&a.id, true);
            return Err(e.into());
        }
    }
    let code = loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(mirror), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => break code,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("wait for the container's mirror", e)),
        }
    };
    attached.finish();
    if !keep {
        remote.delete(&a.id, true)?;
    }
    Ok(code)
}

fn run_container(
    sandbox: &HostPod,
    a: &CreateArgs,
    detach: bool,
    keep: bool,
    terminal: bool,
) -> Result<i32> {
    if detach {
        sandbox.create(create_options(a, true, a.console_socket.clone()))?;
        if let Err(e) = sandbox.start(&a.id) {
            let _ = sandbox.delete(&a.id, true);
            return Err(e.into());
        }
        return Ok(0);
    }
    become_subreaper()?;
    let fg = Foreground::new(sandbox.root(), &a.id, terminal, a.console_socket.clone())?;
    let mut opts = create_options(a, fg.detached(), fg.console_socket.clone());
    opts.stdio = fg.stdio()?;
    let pid = sandbox.driver().create_checked(opts)?;
    // The pty proxy's threads start in attach: block first (the container is made already).
    block_forwarded();
    let attached = match fg.attach() {
        Ok(t) => t,
        Err(e) => {
            let _ = sandbox.delete(&a.id, true);
            return Err(e);
        }
    };
    forward_signals(pid);
    if let Err(e) = sandbox.start(&a.id) {
        let _ = sandbox.delete(&a.id, true);
        return Err(e.into());
    }
    let status = sandbox.wait(&a.id, pid);
    attached.finish();
    if !keep {
        sandbox.delete(&a.id, true)?;
    }
    Ok(status?.code())
}
