//! The `hull` command line: runc-compatible verbs over the `Sandbox` seam.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use oci_spec::runtime::{Capability, LinuxPidsBuilder, LinuxResources, Process, UserBuilder};
use serde_json::json;

use crate::config::{HullConfig, Isolation, ISOLATION_ANNOTATION};
use crate::error::{chain, Error, Result};
use crate::sandbox::host::load_bundle_spec;
use crate::sandbox::{
    CreateOptions, ExecOptions, HostSandbox, Sandbox, Stats, Status, Stdio, VmSandbox,
};
use crate::server::{self, RemoteSandbox};

pub mod args;
pub mod console;
pub mod guard;
pub mod logging;

use args::{Cli, Command, CreateArgs, ExecArgs, Format, UpdateArgs};

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

/// Run one verb; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32> {
    let sandbox = HostSandbox::new(&cli.root, cli.systemd_cgroup);
    // Whether a foreground `run` on the host wants a terminal (read once with the spec).
    let mut terminal = false;
    match &cli.command {
        Command::Create(a) | Command::Run { create: a, .. } => {
            let detach = match &cli.command {
                Command::Run { detach, .. } => *detach,
                _ => true,
            };
            let (isolation, cfg, spec) = isolation_of(cli.config.as_deref(), &a.bundle)?;
            terminal = spec
                .process()
                .as_ref()
                .and_then(|p| p.terminal())
                .unwrap_or(false);
            if isolation == Isolation::Vm {
                if detach {
                    create_vm_detached(&cli, a)?;
                    if matches!(&cli.command, Command::Run { .. }) {
                        let remote = RemoteSandbox::new(&cli.root, &a.id);
                        if let Err(e) = remote.start(&a.id) {
                            let _ = remote.delete(&a.id, true);
                            return Err(e);
                        }
                    }
                    return Ok(0);
                }
                let keep = matches!(&cli.command, Command::Run { keep: true, .. });
                return run_vm_container(&cli, a, keep, cfg, terminal);
            }
        }
        Command::SandboxServer {
            id,
            bundle,
            pid_file,
            console_socket,
            ready_fd,
        } => {
            let (cfg, _) = HullConfig::load_or_default(cli.config.as_deref())?;
            server::serve_main(server::ServerArgs {
                root: cli.root.clone(),
                id: id.clone(),
                bundle: bundle.clone(),
                pid_file: pid_file.clone(),
                console_socket: console_socket.clone(),
                vm: cfg.vm,
                ready_fd: *ready_fd,
            });
        }
        _ => {}
    }
    // A vm container's verbs go to its sandbox server.
    let remote = cli
        .command
        .container_id()
        .filter(|id| server::is_vm_container(&cli.root, id))
        .map(|id| RemoteSandbox::new(&cli.root, id));
    if let Some(remote) = &remote {
        return run_on(remote, Some(remote), cli.command, &|| {
            Ok(remote.state("")?.bundle)
        });
    }
    match cli.command {
        Command::Create(a) => {
            let opts = create_options(&a, true, a.console_socket.clone());
            sandbox.create(opts)?;
            Ok(0)
        }
        c @ (Command::Start { .. }
        | Command::State { .. }
        | Command::Kill { .. }
        | Command::Delete { .. }
        | Command::Exec(_)
        | Command::Ps { .. }
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Update(_)
        | Command::Events { .. }) => {
            let id = c.container_id().unwrap_or_default().to_string();
            let bundle = || Ok(sandbox.load(&id)?.bundle().to_path_buf());
            run_on(&sandbox, None, c, &bundle)
        }
        Command::Run {
            detach,
            keep,
            create,
        } => run_container(&sandbox, &create, detach, keep, terminal),
        Command::List { format, quiet } => list(&sandbox, format, quiet),
        Command::Spec { rootless, bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                return Err(Error::InvalidInput(format!(
                    "{} exists already: remove it first",
                    path.display()
                )));
            }
            let text = serde_json::to_string_pretty(&crate::spec::default_spec(rootless))
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            Ok(0)
        }
        Command::Check => {
            print!("{}", check_report(cli.config.as_deref()));
            Ok(0)
        }
        Command::SandboxServer { .. } => Ok(0),
        Command::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::spec::features()).unwrap_or_default()
            );
            Ok(0)
        }
    }
}

/// The verbs that act on one existing container, on whichever sandbox holds it; `bundle`
/// names the container's bundle (for an argv-form exec).
fn run_on(
    sandbox: &dyn Sandbox,
    remote: Option<&RemoteSandbox>,
    command: Command,
    bundle: &dyn Fn() -> Result<std::path::PathBuf>,
) -> Result<i32> {
    match command {
        Command::Start { id } => sandbox.start(&id).map(|_| 0),
        Command::State { id } => {
            let st = sandbox.state(&id)?;
            println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = crate::signal::parse(&signal)?;
            sandbox.kill(&id, sig, all).map(|_| 0)
        }
        Command::Delete { force, id } => sandbox.delete(&id, force).map(|_| 0),
        Command::Exec(a) => exec(sandbox, remote, bundle, a),
        Command::Ps {
            format,
            id,
            ps_args,
        } => ps(sandbox, &id, format, &ps_args, remote.is_some()),
        Command::Pause { id } => sandbox.pause(&id).map(|_| 0),
        Command::Resume { id } => sandbox.resume(&id).map(|_| 0),
        Command::Update(a) => update(sandbox, a),
        Command::Events {
            stats,
            interval,
            id,
        } => events(sandbox, &id, stats, &interval),
        other => Err(Error::InvalidInput(format!("{other:?} names no container"))),
    }
}

/// `hull create` (or `run -d`) of a vm container: start its sandbox server, detached, and
/// wait until it has created the container (or failed, with its reason).
fn create_vm_detached(cli: &Cli, a: &CreateArgs) -> Result<()> {
    use std::os::unix::process::CommandExt;
    // The bundle's spec was read and checked by `isolation_of`.
    crate::sandbox::host::validate_id(&a.id)?;
    let dir = cli.root.join(&a.id);
    std::fs::create_dir_all(&cli.root).map_err(|e| Error::io(&cli.root, e))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::AlreadyExists(a.id.clone()))
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
    cmd.arg("--root").arg(&cli.root);
    if let Some(c) = &cli.config {
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
    if let Some(p) = &a.pid_file {
        cmd.arg("--pid-file").arg(abs(p));
    }
    if let Some(p) = &a.console_socket {
        cmd.arg("--console-socket").arg(abs(p));
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
        "ok" => Ok(()),
        "" => Err(fail(Error::Vm(format!(
            "container {}: the sandbox server died while creating it",
            a.id
        )))),
        why => Err(fail(Error::Vm(why.to_string()))),
    }
}

/// The isolation a bundle asks for (its annotation, else the config, else host), with the
/// config and the bundle's spec it was read from.
fn isolation_of(
    config: Option<&Path>,
    bundle: &Path,
) -> Result<(Isolation, HullConfig, oci_spec::runtime::Spec)> {
    let spec = load_bundle_spec(bundle)?;
    let annotation = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ISOLATION_ANNOTATION).cloned());
    let (cfg, _) = HullConfig::load_or_default(config)?;
    let isolation = cfg.isolation_for(annotation.as_deref())?;
    Ok((isolation, cfg, spec))
}

/// `hull run` in vm mode: this process owns the pod's VM for the container's lifetime.
fn run_vm_container(
    cli: &Cli,
    a: &CreateArgs,
    keep: bool,
    cfg: HullConfig,
    terminal: bool,
) -> Result<i32> {
    // The VM's relays are threads: block before the first of them starts.
    block_forwarded();
    let sandbox = VmSandbox::new(&cli.root, &a.id, cfg.vm);
    std::fs::create_dir_all(&cli.root).map_err(|e| Error::io(&cli.root, e))?;
    let fg = Foreground::new(&cli.root, &a.id, terminal, a.console_socket.clone())?;
    let mut opts = create_options(a, false, fg.console_socket.clone());
    opts.stdio = Stdio::default();
    let pid = sandbox.create(opts)?;
    let attached = match fg.attach() {
        Ok(t) => t,
        Err(e) => {
            let _ = sandbox.delete(&a.id, true);
            return Err(e);
        }
    };
    if let Err(e) = sandbox.start(&a.id) {
        let _ = sandbox.delete(&a.id, true);
        return Err(e);
    }
    let sandbox = std::sync::Arc::new(sandbox);
    {
        let (sb, id) = (std::sync::Arc::clone(&sandbox), a.id.clone());
        forward_signals_with(move |sig| {
            let _ = sb.kill(&id, sig, false);
        });
    }
    let status = sandbox.wait(&a.id, pid);
    attached.finish();
    if !keep {
        sandbox.delete(&a.id, true)?;
    }
    Ok(status?.code())
}

fn create_options(
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

/// libcontainer re-opens a stdio fd that is the host's /dev/null as the container's
/// /dev/null, read-only, so the container's writes to it would fail. For a foreground
/// container, hand it a pipe instead and discard what arrives.
fn null_safe_stdio() -> Result<Stdio> {
    use std::os::fd::AsRawFd;
    let is_null = |fd: i32| {
        nix::sys::stat::fstat(fd)
            .map(|st| {
                (st.st_mode & libc::S_IFMT) == libc::S_IFCHR
                    && libc::major(st.st_rdev) == 1
                    && libc::minor(st.st_rdev) == 3
            })
            .unwrap_or(false)
    };
    let drain = || -> Result<std::os::fd::OwnedFd> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("pipe for a /dev/null stdio", e))?;
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(r);
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        });
        Ok(w)
    };
    let mut stdio = Stdio::default();
    if is_null(std::io::stdout().as_raw_fd()) {
        stdio.stdout = Some(drain()?);
    }
    if is_null(std::io::stderr().as_raw_fd()) {
        stdio.stderr = Some(drain()?);
    }
    Ok(stdio)
}

/// Make this process the reaper of the container's processes so that it can wait for them.
fn become_subreaper() -> Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only changes a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(Error::sys("become child subreaper", nix::Error::last()));
    }
    Ok(())
}

/// Signals a foreground `run`/`exec` passes on to the container process.
fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

/// Forward the signals a foreground process receives to `pid` (runc's signal proxy).
fn forward_signals(pid: i32) {
    forward_signals_with(move |sig| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    });
}

/// Block the forwarded signals in this thread, before it starts any other: threads inherit
/// the mask, so the signal-forwarding thread is the only one that ever takes them (a thread
/// with them unblocked would take e.g. SIGTERM's default action and end hull).
fn block_forwarded() {
    let _ = forwarded().thread_block();
}

/// Pass each signal a foreground `run`/`exec` receives to `deliver`.
fn forward_signals_with(deliver: impl Fn(Signal) + Send + 'static) {
    let set = forwarded();
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || loop {
        if let Ok(sig) = set.wait() {
            deliver(sig);
        }
    });
}

fn run_container(
    sandbox: &HostSandbox,
    a: &CreateArgs,
    detach: bool,
    keep: bool,
    terminal: bool,
) -> Result<i32> {
    if detach {
        sandbox.create(create_options(a, true, a.console_socket.clone()))?;
        if let Err(e) = sandbox.start(&a.id) {
            let _ = sandbox.delete(&a.id, true);
            return Err(e);
        }
        return Ok(0);
    }
    become_subreaper()?;
    let fg = Foreground::new(sandbox.root(), &a.id, terminal, a.console_socket.clone())?;
    let mut opts = create_options(a, fg.detached(), fg.console_socket.clone());
    opts.stdio = fg.stdio()?;
    let pid = sandbox.create_checked(opts)?;
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
        return Err(e);
    }
    let status = sandbox.wait(&a.id, pid);
    attached.finish();
    if !keep {
        sandbox.delete(&a.id, true)?;
    }
    Ok(status?.code())
}

/// The terminal side of a foreground `run`/`exec`: when the process wants a terminal and
/// the caller gave no console socket, hull receives the pty master itself and copies it
/// to and from its own stdio, as runc does.
struct Foreground {
    receiver: Option<console::ConsoleReceiver>,
    console_socket: Option<std::path::PathBuf>,
}

/// A foreground process' pty proxy while it runs.
struct Attached {
    output: Option<std::thread::JoinHandle<()>>,
    _raw: Option<console::RawMode>,
}

impl Foreground {
    fn new(
        root: &Path,
        id: &str,
        terminal: bool,
        given: Option<std::path::PathBuf>,
    ) -> Result<Self> {
        let receiver = if terminal && given.is_none() {
            Some(console::ConsoleReceiver::bind(root, id)?)
        } else {
            None
        };
        let console_socket = receiver.as_ref().map(|r| r.path().to_path_buf()).or(given);
        Ok(Self {
            receiver,
            console_socket,
        })
    }

    /// libcontainer takes a console socket only for a detached process.
    fn detached(&self) -> bool {
        self.console_socket.is_some()
    }

    /// The process' stdio: ours (made /dev/null-safe) unless a pty carries it.
    fn stdio(&self) -> Result<Stdio> {
        if self.receiver.is_some() {
            Ok(Stdio::default())
        } else {
            null_safe_stdio()
        }
    }

    /// Once the process exists: take its pty master and start copying.
    fn attach(&self) -> Result<Attached> {
        let Some(r) = &self.receiver else {
            return Ok(Attached {
                output: None,
                _raw: None,
            });
        };
        let master = r.receive()?;
        Ok(Attached {
            _raw: Some(console::RawMode::enter()),
            output: Some(console::proxy(master)),
        })
    }
}

impl Attached {
    /// Drain the pty output after the process exited, then restore the terminal.
    fn finish(self) {
        if let Some(out) = self.output {
            let _ = out.join();
        }
    }
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
    let spec = load_bundle_spec(&bundle()?)?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
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

fn exec(
    sandbox: &dyn Sandbox,
    remote: Option<&RemoteSandbox>,
    bundle: &dyn Fn() -> Result<std::path::PathBuf>,
    a: ExecArgs,
) -> Result<i32> {
    let process = exec_process(bundle, &a)?;
    let terminal = process.terminal().unwrap_or(false);
    if a.detach {
        sandbox.exec(
            &a.id,
            ExecOptions {
                process,
                pid_file: a.pid_file.clone(),
                console_socket: a.console_socket.clone(),
                preserve_fds: a.preserve_fds,
                detach: true,
                stdio: Stdio::default(),
            },
        )?;
        return Ok(0);
    }
    become_subreaper()?;
    let root = std::env::temp_dir();
    let fg = Foreground::new(&root, &a.id, terminal, a.console_socket.clone())?;
    let pid = sandbox.exec(
        &a.id,
        ExecOptions {
            process,
            pid_file: a.pid_file.clone(),
            console_socket: fg.console_socket.clone(),
            preserve_fds: a.preserve_fds,
            detach: fg.detached(),
            stdio: fg.stdio()?,
        },
    )?;
    block_forwarded();
    let attached = fg.attach()?;
    {
        // kill(2) for a host process; the sandbox server for a vm one.
        let id = a.id.clone();
        let sb = remote.cloned();
        forward_signals_with(move |sig| match &sb {
            Some(r) => {
                let _ = r.signal(&id, pid, sig);
            }
            None => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        });
    }
    let status = sandbox.wait(&a.id, pid)?;
    attached.finish();
    Ok(status.code())
}

fn ps(
    sandbox: &dyn Sandbox,
    id: &str,
    format: Format,
    ps_args: &[String],
    in_guest: bool,
) -> Result<i32> {
    let pids = sandbox.pids(id)?;
    if format == Format::Json {
        println!("{}", serde_json::to_string(&pids).unwrap_or_default());
        return Ok(0);
    }
    if in_guest {
        // The host's ps(1) cannot see a VM's processes: their guest pids.
        println!("PID (in the guest)");
        for p in pids {
            println!("{p}");
        }
        return Ok(0);
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| Error::io("ps", e))?;
    if !out.status.success() {
        return Err(Error::InvalidInput(format!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| Error::InvalidInput("ps output has no PID column".into()))?;
    println!("{header}");
    for l in lines {
        if let Some(p) = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
        {
            if pids.contains(&p) {
                println!("{l}");
            }
        }
    }
    Ok(0)
}

fn list(sandbox: &HostSandbox, format: Format, quiet: bool) -> Result<i32> {
    let mut all = sandbox.list()?;
    // vm containers, each behind its sandbox server.
    if let Ok(entries) = std::fs::read_dir(sandbox.root()) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if server::is_vm_container(sandbox.root(), &id) {
                if let Ok(st) = RemoteSandbox::new(sandbox.root(), &id).state(&id) {
                    all.push(st);
                }
            }
        }
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    if quiet {
        for s in &all {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string(&all).unwrap_or_default());
        return Ok(0);
    }
    println!(
        "{:<12} {:<10} {:<10} {:<40} {:<30} OWNER",
        "ID", "PID", "STATUS", "BUNDLE", "CREATED"
    );
    for s in &all {
        let owner = if s.owner.is_empty() { "root" } else { &s.owner };
        println!(
            "{:<12} {:<10} {:<10} {:<40} {:<30} {}",
            s.id,
            s.pid,
            s.status,
            s.bundle.display(),
            s.created,
            owner
        );
    }
    Ok(0)
}

fn read_resources(path: &Path) -> Result<LinuxResources> {
    let mut text = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut text)
            .map_err(|e| Error::io("stdin", e))?;
    } else {
        text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    }
    serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidInput(format!("resources {}: {e}", path.display())))
}

fn update(sandbox: &dyn Sandbox, a: UpdateArgs) -> Result<i32> {
    let any_flag = a.memory.is_some()
        || a.memory_swap.is_some()
        || a.memory_reservation.is_some()
        || a.cpu_shares.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_period.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
        || a.pids_limit.is_some();
    // No -r and no flag: the resources JSON comes on stdin.
    let mut r = match &a.resources {
        Some(p) => read_resources(p)?,
        None if !any_flag => read_resources(Path::new("-"))?,
        None => LinuxResources::default(),
    };
    let inv = |e: oci_spec::OciSpecError| Error::InvalidInput(e.to_string());
    if a.memory.is_some() || a.memory_swap.is_some() || a.memory_reservation.is_some() {
        let mut m = (*r.memory()).unwrap_or_default();
        if let Some(v) = a.memory {
            m.set_limit(Some(v));
        }
        if let Some(v) = a.memory_swap {
            m.set_swap(Some(v));
        }
        if let Some(v) = a.memory_reservation {
            m.set_reservation(Some(v));
        }
        r.set_memory(Some(m));
    }
    if a.cpu_shares.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_period.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
    {
        let mut c = r.cpu().clone().unwrap_or_default();
        if let Some(v) = a.cpu_shares {
            c.set_shares(Some(v));
        }
        if let Some(v) = a.cpu_quota {
            c.set_quota(Some(v));
        }
        if let Some(v) = a.cpu_period {
            c.set_period(Some(v));
        }
        if let Some(v) = &a.cpuset_cpus {
            c.set_cpus(Some(v.clone()));
        }
        if let Some(v) = &a.cpuset_mems {
            c.set_mems(Some(v.clone()));
        }
        r.set_cpu(Some(c));
    }
    if let Some(v) = a.pids_limit {
        r.set_pids(Some(
            LinuxPidsBuilder::default().limit(v).build().map_err(inv)?,
        ));
    }
    sandbox.update(&a.id, &r)?;
    Ok(0)
}

/// The cgroup layout of this host, as `hull check` reports it.
fn cgroup_layout() -> (bool, String) {
    use libcgroups::common::CgroupSetup;
    match libcgroups::common::get_cgroup_setup() {
        Ok(CgroupSetup::Unified) => (true, "v2 (unified)".into()),
        Ok(CgroupSetup::Hybrid) => (
            true,
            "hybrid: v1 controllers plus a v2 mount (hull manages v1)".into(),
        ),
        Ok(CgroupSetup::Legacy) => (true, "v1 (legacy)".into()),
        Err(e) => (false, format!("cannot tell: {}", chain(&e))),
    }
}

/// `hull check`: one line per capability, yes/no and why, then what `auto` picks.
fn check_report(config: Option<&Path>) -> String {
    use crate::hypervisor::detect::{Backend, HostReport, Probe};
    use std::fmt::Write as _;
    let r = HostReport::probe();
    let mut out = String::from("hull check: what this host can run\n");
    let mut line = |name: &str, p: &Probe| {
        let _ = writeln!(
            out,
            "  {name:<22} {:<4} {}",
            if p.ok { "yes" } else { "no" },
            p.reason
        );
    };
    let (cg_ok, cg) = cgroup_layout();
    line(
        "host isolation",
        &Probe {
            ok: cg_ok,
            reason: format!("cgroups {cg}"),
        },
    );
    line("/dev/kvm", &r.kvm);
    line("KVM hardware-backed", &r.kvm_hardware);
    line("vhost-vsock", &r.vhost_vsock);
    line("VFIO / IOMMU", &r.iommu);
    line("qemu", &r.qemu);
    line("virtiofsd", &r.virtiofsd);
    // What a vm pod would boot, from the config this command was given (or the default).
    let guest = HullConfig::load_or_default(config)
        .map_err(|e| e.to_string())
        .and_then(|(cfg, path)| {
            let from = path.map_or("built-in defaults".to_string(), |p| p.display().to_string());
            cfg.vm
                .guest()
                .map(|(k, i, debian)| (k, i, debian, from))
                .map_err(|e| e.to_string())
        });
    match guest {
        Ok((k, i, debian, from)) => {
            let what = if debian {
                "Debian's kernel as the fallback, ACPI on; "
            } else {
                ""
            };
            line(
                "guest kernel",
                &Probe::yes(format!("{} ({what}config: {from})", k.display())),
            );
            line("guest initrd", &Probe::yes(i.display().to_string()));
        }
        Err(e) => {
            line("guest kernel", &Probe::no(e));
            line("guest kernel (cache)", &r.guest_kernel);
            line("guest initrd (cache)", &r.guest_initrd);
        }
    }
    let picked = match r.auto.backend {
        Some(Backend::Builtin) => "builtin (hull-vmm)".to_string(),
        Some(Backend::Qemu(accel)) => format!("qemu ({accel:?})").to_lowercase(),
        None => "none: vm isolation cannot run here".to_string(),
    };
    let _ = writeln!(
        out,
        "  {:<22} {picked}: {}",
        "vm hypervisor (auto)", r.auto.reason
    );
    out
}

/// Stats in the shape of runc's `events --stats` `data` object.
pub fn runc_stats(s: &Stats) -> serde_json::Value {
    let mem = |d: &libcgroups::stats::MemoryData| json!({"usage": d.usage, "max": d.max_usage, "failcnt": d.fail_count, "limit": d.limit});
    let raw: HashMap<&String, &u64> = s.memory.stats.iter().collect();
    json!({
        "cpu": {
            "usage": {
                "total": s.cpu.usage.usage_total,
                "percpu": s.cpu.usage.per_core_usage_total,
                "kernel": s.cpu.usage.usage_kernel,
                "user": s.cpu.usage.usage_user,
            },
            "throttling": {
                "periods": s.cpu.throttling.periods,
                "throttledPeriods": s.cpu.throttling.throttled_periods,
                "throttledTime": s.cpu.throttling.throttled_time,
            }
        },
        "memory": {
            "cache": s.memory.cache,
            "usage": mem(&s.memory.memory),
            "swap": mem(&s.memory.memswap),
            "kernel": mem(&s.memory.kernel),
            "kernelTCP": mem(&s.memory.kernel_tcp),
            "raw": raw,
        },
        "pids": {"current": s.pids.current, "limit": s.pids.limit},
        "blkio": {},
        "hugetlb": {},
    })
}

fn parse_interval(s: &str) -> Result<Duration> {
    let bad = || Error::InvalidInput(format!("--interval {s:?}: expected e.g. 5s or 500ms"));
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1000)
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(Duration::from_millis(n * mul))
}

fn events(sandbox: &dyn Sandbox, id: &str, once: bool, interval: &str) -> Result<i32> {
    let every = parse_interval(interval)?;
    let mut ooms = if once { 0 } else { sandbox.oom_kills(id)? };
    loop {
        let st = sandbox.state(id)?;
        if st.status == Status::Stopped {
            return if once {
                Err(Error::WrongStatus {
                    id: id.into(),
                    status: "stopped".into(),
                    op: "read stats",
                })
            } else {
                Ok(0)
            };
        }
        if !once {
            // As runc: one {"type":"oom"} line for each OOM kill since the last look.
            let now = sandbox.oom_kills(id).unwrap_or(ooms);
            for _ in ooms..now {
                println!("{}", json!({"type": "oom", "id": id}));
            }
            ooms = now;
        }
        let stats = sandbox.stats(id)?;
        println!(
            "{}",
            json!({"type": "stats", "id": id, "data": runc_stats(&stats)})
        );
        if once {
            return Ok(0);
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
