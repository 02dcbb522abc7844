//! `hull-agent`: the guest agent binary.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hull_agent::container::StateDirs;
use hull_agent::paths::AllowedRoots;
use hull_agent::reaper::Reaper;
use hull_agent::transport::{self, Listen};
use hull_agent::{init, Agent, AgentConfig};

/// Whether to do the guest's PID 1 set-up (early mounts).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GuestInit {
    /// When PID 1 and /proc is not mounted yet (a fresh guest).
    Auto,
    /// Always.
    On,
    /// Never (tests on the host).
    Off,
}

/// hull's guest agent.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// vsock://PORT, serial:/dev/vportNpM or unix:///PATH. As PID 1, set it from the kernel
    /// command line as `HULL_AGENT_LISTEN=...` (the kernel passes it to /init's environment).
    #[arg(long, env = "HULL_AGENT_LISTEN", default_value = "vsock://1024")]
    listen: String,
    /// A directory under which host-supplied paths must resolve (repeatable).
    #[arg(long = "allowed-root", default_value = "/run/hull/shared")]
    allowed_roots: Vec<PathBuf>,
    /// Where the agent keeps container state.
    #[arg(long, default_value = "/run/hull-agent")]
    state_dir: PathBuf,
    /// Where SetupSandbox writes DNS settings.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// PID 1 set-up of the guest.
    #[arg(long, value_enum, default_value = "auto")]
    guest_init: GuestInit,
    /// Create containers with move-mount + chroot instead of pivot_root (automatic when the
    /// guest's root is the initramfs, where pivot_root fails).
    #[arg(long)]
    no_pivot: bool,
}

fn main() -> anyhow::Result<()> {
    // The container driver's spawn helper, when re-executed (see hull_container::spawn).
    if std::env::args().nth(1).as_deref() == Some(hull_container::spawn::HELPER_VERB) {
        hull_container::spawn::helper_main();
    }
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    // SAFETY: getpid(2) takes no arguments.
    let is_init = unsafe { libc::getpid() } == 1;
    let do_init = match args.guest_init {
        GuestInit::On => true,
        GuestInit::Off => false,
        GuestInit::Auto => is_init && !std::path::Path::new("/proc/self").exists(),
    };
    if do_init {
        init::early_mounts().context("early mounts of the guest")?;
        let n = init::load_modules().context("kernel modules")?;
        tracing::info!(modules = n, "guest set up");
        // Named for what it is (`/proc/1/comm` would say "init"), and one line in the boot
        // log (the serial console, `hull console --log`) saying the agent came up and when.
        // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"hull-agent".as_ptr()) };
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
        eprintln!(
            "hull-agent {} up (guest uptime {} s)",
            env!("CARGO_PKG_VERSION"),
            uptime.split_whitespace().next().unwrap_or("?")
        );
    }
    // Before any thread: the zygote must be a one-thread copy of this process. It forks the
    // driver's spawn helpers, so that no create or exec pays for an exec of the agent.
    if let Err(e) = hull_container::spawn::start_zygote() {
        tracing::warn!("no zygote ({e}): spawn helpers re-execute the agent");
    }
    if !is_init {
        init::become_subreaper().context("become child subreaper")?;
    }
    let listen: Listen = args.listen.parse().context("--listen")?;
    let reaper = Reaper::new();
    reaper.spawn().context("start the reaper")?;

    let no_pivot = args.no_pivot || init::root_is_initramfs();
    let cfg = AgentConfig {
        allowed_roots: AllowedRoots::new(args.allowed_roots).context("--allowed-root")?,
        dirs: StateDirs::new(&args.state_dir, no_pivot).context("--state-dir")?,
        resolv_conf: args.resolv_conf,
        is_init,
    };
    // In the guest, made before the agent answers: a VM template is saved with it ready.
    let netns = if is_init {
        hull_agent::netns::PodNetns::make(&args.state_dir.join("pod-netns")).unwrap_or_else(|e| {
            tracing::warn!("no pod network namespace: {e}");
            hull_agent::netns::PodNetns::none()
        })
    } else {
        hull_agent::netns::PodNetns::none()
    };
    tracing::info!(?listen, is_init, do_init, no_pivot, "hull-agent starting");
    let agent = Agent::with_pod_netns(cfg, reaper, netns);
    let services = Arc::new(agent.services());
    transport::serve(&listen, services).context("serve")?;
    Ok(())
}
