//! The verbs of the `hull` command line, runc-compatible, one file each; they act on pods
//! through the pod seam of `hull-runtime`. A verb on an existing container finds it through
//! [`Target`]: under the state root (host isolation) or behind its sandbox server (a vm
//! container created by a detached `create`).

use std::path::PathBuf;
use std::process::ExitCode;

use hull_runtime::pod::{Containers, HostPod};

use crate::args::{Cli, Command};
use crate::error::{chain, Result};
use crate::server::{self, ServedContainer};
use crate::{guard, logging};

mod check;
mod checkpoint;
mod console;
mod create;
mod dashboard;
mod delete;
mod events;
mod exec;
mod features;
mod kill;
mod list;
mod pause;
mod ps;
mod restore;
mod resume;
mod run;
mod sandbox_server;
mod spec;
mod start;
mod state;
mod update;

/// Parse the command line, run the verb, and turn any error into one stderr line
/// (and an `error` entry in the `--log` file) with exit status 1.
pub fn main() -> ExitCode {
    // The verbs that put a process into a container must run from a read-only copy of
    // hull. Re-exec before parsing the arguments and setting up logging, so the first
    // process does nothing else; a failure here is reported by the check below.
    if guard::verb_needs_guard(std::env::args_os().skip(1)) {
        let _ = guard::ensure();
    }
    let cli = <Cli as clap::Parser>::parse();
    let logger = match logging::Logger::init(cli.log.as_deref(), cli.log_format, cli.debug) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hull: cannot open log file: {e}");
            return ExitCode::from(1);
        }
    };
    // Verbs that put a process into a container run from a read-only copy of hull.
    if matches!(
        cli.command,
        Command::Create(_) | Command::Run { .. } | Command::Exec(_)
    ) {
        if let Err(e) = guard::ensure() {
            let msg = format!("binary guard: {}", chain(&e));
            logger.error(&msg);
            eprintln!("hull: {msg}");
            return ExitCode::from(1);
        }
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let msg = chain(&e);
            logger.error(&msg);
            eprintln!("hull: {msg}");
            ExitCode::from(1)
        }
    }
}

/// The global flags every verb may need.
#[derive(Debug, Clone)]
pub struct Globals {
    /// The state root (`--root`).
    pub root: PathBuf,
    /// Cgroups through systemd (`--systemd-cgroup`).
    pub systemd_cgroup: bool,
    /// The hull config file (`--config`).
    pub config: Option<PathBuf>,
}

impl Globals {
    /// The host pod of this state root.
    pub fn host_pod(&self) -> HostPod {
        HostPod::new(&self.root, self.systemd_cgroup)
    }
}

/// Run one verb; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32> {
    let g = Globals {
        root: cli.root,
        systemd_cgroup: cli.systemd_cgroup,
        config: cli.config,
    };
    match cli.command {
        Command::Create(a) => create::run(&g, &a),
        Command::Run {
            detach,
            keep,
            create,
        } => run::run(&g, &create, detach, keep),
        Command::Start { id } => start::run(&g, &id),
        Command::Checkpoint(a) => checkpoint::run(&g, &a),
        Command::Restore(a) => restore::run(&g, &a),
        Command::State { id } => state::run(&g, &id),
        Command::Kill { all, id, signal } => kill::run(&g, &id, &signal, all),
        Command::Delete { force, id } => delete::run(&g, &id, force),
        Command::Exec(a) => exec::run(&g, a),
        Command::Console { log, id, command } => console::run(&g, &id, log, command),
        Command::Ps {
            format,
            id,
            ps_args,
        } => ps::run(&g, &id, format, &ps_args),
        Command::List { format, quiet } => list::run(&g, format, quiet),
        Command::Pause { id } => pause::run(&g, &id),
        Command::Resume { id } => resume::run(&g, &id),
        Command::Update(a) => update::run(&g, a),
        Command::Events {
            stats,
            interval,
            id,
        } => events::run(&g, &id, stats, &interval),
        Command::Spec { rootless, bundle } => spec::run(rootless, &bundle),
        Command::Check => check::run(&g),
        Command::Features => features::run(),
        Command::Dashboard { args } => dashboard::run(&g, &args),
        Command::SandboxServer {
            id,
            bundle,
            console_socket,
            ready_fd,
            restore,
        } => sandbox_server::run(&g, id, bundle, console_socket, ready_fd, restore),
    }
}

/// Where an existing container lives.
pub enum Target {
    /// Under the state root, on the host kernel.
    Host(HostPod),
    /// In a pod's VM, behind the sandbox server that owns the VM.
    Served(ServedContainer),
}

impl Target {
    /// The container `id` of this state root.
    pub fn of(g: &Globals, id: &str) -> Target {
        if server::is_vm_container(&g.root, id) {
            Target::Served(ServedContainer::new(&g.root, id))
        } else {
            Target::Host(g.host_pod())
        }
    }

    /// The container's pod, as the seam sees it.
    pub fn containers(&self) -> &dyn Containers {
        match self {
            Target::Host(p) => p,
            Target::Served(r) => r,
        }
    }

    /// The container's bundle directory.
    pub fn bundle(&self, id: &str) -> Result<PathBuf> {
        Ok(match self {
            Target::Host(p) => p.driver().load(id)?.bundle().to_path_buf(),
            Target::Served(r) => r.state(id)?.bundle,
        })
    }

    /// Whether the container's processes live in a VM (their pids are the guest's).
    pub fn in_vm(&self) -> bool {
        matches!(self, Target::Served(_))
    }
}
