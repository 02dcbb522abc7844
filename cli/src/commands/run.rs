//! `hull run`: create, start and (unless detached) wait for a container, then delete it. A
//! foreground vm container's VM is owned by this process; a detached one's by its sandbox
//! server, as after `create`.

use hull_runtime::config::{Config, Isolation};
use hull_runtime::pod::{Containers, HostPod, Pod, Stdio, VmPod};

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
    let (isolation, cfg, spec) = isolation_of(g.config.as_deref(), &a.bundle)?;
    if isolation == Isolation::Vm {
        if detach {
            create_vm_detached(g, a)?;
            let remote = ServedContainer::new(&g.root, &a.id);
            if let Err(e) = remote.start(&a.id) {
                let _ = remote.delete(&a.id, true);
                return Err(e.into());
            }
            return Ok(0);
        }
        return run_vm_container(g, a, cfg, &spec);
    }
    // Whether a foreground container wants a terminal (read once with the spec).
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    run_container(&g.host_pod(), a, detach, keep, terminal)
}

/// `hull run` in vm mode: this process owns the pod's VM for the container's lifetime.
/// `--keep` has no meaning here: the VM, and so the container, cannot outlive this process.
fn run_vm_container(
    g: &Globals,
    a: &CreateArgs,
    cfg: Config,
    spec: &oci_spec::runtime::Spec,
) -> Result<i32> {
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    // The VM's relays are threads: block before the first of them starts.
    block_forwarded();
    // This process owns the pod: its VM lives as long as the container runs.
    let pod = VmPod::new(&g.root, &a.id, cfg.vm);
    std::fs::create_dir_all(&g.root).map_err(|e| Error::io(&g.root, e))?;
    let fg = Foreground::new(&g.root, &a.id, terminal, a.console_socket.clone())?;
    let mut opts = create_options(a, false, fg.console_socket.clone());
    opts.stdio = Stdio::default();
    pod.start_pod(&a.bundle)?;
    let pid = match pod.create(opts) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = pod.stop_pod();
            return Err(e.into());
        }
    };
    let attached = match fg.attach() {
        Ok(t) => t,
        Err(e) => {
            let _ = pod.stop_pod();
            return Err(e);
        }
    };
    if let Err(e) = pod.start(&a.id) {
        let _ = pod.stop_pod();
        return Err(e.into());
    }
    let sandbox = pod;
    let sandbox = std::sync::Arc::new(sandbox);
    {
        let (sb, id) = (std::sync::Arc::clone(&sandbox), a.id.clone());
        forward_signals_with(move |sig| {
            let _ = sb.kill(&id, sig.into(), false);
        });
    }
    let status = sandbox.wait(&a.id, pid);
    attached.finish();
    sandbox.stop_pod()?;
    Ok(status?.code())
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
