//! `hull-vmm`: boot a kernel in a KVM micro-VM with the serial console on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hull_vmm::{BlockConfig, VmExit, VmResources, Vmm};

/// hull's built-in VMM.
#[derive(Parser, Debug)]
#[command(
    name = "hull-vmm",
    version,
    about = "Boot a kernel in a KVM micro-VM; serial console on stdout"
)]
struct Cli {
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = hull_vmm::builder::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Host unix socket for the hybrid vsock device (guest ports reach `<PATH>_<port>`).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Guest CID of the vsock device.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u64,
    /// Raw disk image as virtio-blk: FILE or FILE,ro.
    #[arg(long)]
    block: Option<BlockConfig>,
    /// Host tap interface for virtio-net.
    #[arg(long)]
    tap: Option<String>,
    /// Unix socket for the JSON-lines control API (pause, resume, snapshot, status).
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Restore from a snapshot directory instead of booting the kernel.
    #[arg(long)]
    restore: Option<PathBuf>,
    /// Add a virtio console (hvc0) writing to stdout besides the serial port.
    #[arg(long)]
    virtio_console: bool,
    /// Leave out the virtio entropy device.
    #[arg(long)]
    no_rng: bool,
    /// Name of the VM on every log line (hull passes the sandbox id).
    #[arg(long, default_value = "hull-vm")]
    id: String,
    /// Do not install the seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
}

fn run(cli: Cli) -> Result<VmExit, String> {
    let config = VmResources {
        kernel: cli.kernel,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        mem_mib: cli.memory,
        vcpus: cli.vcpus,
        vsock_uds: cli.vsock_uds,
        vsock_cid: cli.vsock_cid,
        block: cli.block,
        tap: cli.tap,
        rng: !cli.no_rng,
        virtio_console: cli.virtio_console,
        api_sock: cli.api_sock,
        seccomp: !cli.no_seccomp,
        stdin: true,
        id: cli.id,
    };
    let seccomp = config.seccomp;
    let out = Box::new(std::io::stdout());
    let mut vmm = match cli.restore {
        Some(dir) => Vmm::restore(&dir, config, out),
        None => Vmm::build(config, out),
    }
    .map_err(|e| e.to_string())?;
    vmm.start().map_err(|e| e.to_string())?;
    if seccomp {
        let filter = hull_vmm::seccomp::vmm_filter().map_err(|e| e.to_string())?;
        hull_vmm::seccomp::apply(&filter).map_err(|e| e.to_string())?;
    }
    vmm.run(None).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(VmExit::Reset) | Ok(VmExit::Shutdown) => ExitCode::SUCCESS,
        Ok(VmExit::Error(msg)) => {
            eprintln!("hull-vmm: {msg}");
            ExitCode::FAILURE
        }
        Err(msg) => {
            eprintln!("hull-vmm: {msg}");
            ExitCode::FAILURE
        }
    }
}
