//! `hull-vmm`: boot a kernel in a KVM micro-VM with the serial console on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hull_vmm::{BlockConfig, NetFdConfig, SlotConfig, VmExit, VmResources, Vmm};

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
    /// Raw disk image or host block device as virtio-blk: FILE[,ro][,serial=S] (the serial
    /// the guest reads, at most 20 bytes; the file's name without). Repeatable: one device
    /// each, in order.
    #[arg(long, value_name = "FILE[,ro][,serial=S]")]
    block: Vec<BlockConfig>,
    /// A disk slot: a virtio-blk device with serial SERIAL (at most 20 bytes), empty (size 0)
    /// unless file= fills it, whose disk the API's attach-disk / detach-disk swap while the
    /// guest runs (the guest sees the capacity change). Repeatable: slot 0, 1, ... in order,
    /// after the --block devices.
    #[arg(long = "disk-slot", value_name = "SERIAL[,file=PATH][,ro]")]
    disk_slots: Vec<SlotConfig>,
    /// Host tap interface for virtio-net (opened, or created, by name).
    #[arg(long)]
    tap: Option<String>,
    /// virtio-net on a tap this process inherited open: FD or FD,mac=aa:bb:cc:dd:ee:ff (the
    /// guest's MAC; random without). The tap must be made with IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR. Repeatable: one device each, in order, after --tap's.
    #[arg(long = "net-fd", value_name = "FD[,mac=MAC]")]
    net_fds: Vec<NetFdConfig>,
    /// Unix socket for the JSON-lines control API (pause, resume, snapshot, status,
    /// attach-disk, detach-disk).
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

/// What `cli` asks to build (all but `--restore`).
fn resources(cli: Cli) -> VmResources {
    VmResources {
        kernel: cli.kernel,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        mem_mib: cli.memory,
        vcpus: cli.vcpus,
        vsock_uds: cli.vsock_uds,
        vsock_cid: cli.vsock_cid,
        block: cli.block,
        disk_slots: cli.disk_slots,
        tap: cli.tap,
        net_fds: cli.net_fds,
        rng: !cli.no_rng,
        virtio_console: cli.virtio_console,
        api_sock: cli.api_sock,
        seccomp: !cli.no_seccomp,
        stdin: true,
        id: cli.id,
    }
}

fn run(mut cli: Cli) -> Result<VmExit, String> {
    let restore = cli.restore.take();
    let config = resources(cli);
    let seccomp = config.seccomp;
    let out = Box::new(std::io::stdout());
    let mut vmm = match restore {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_fd_is_repeatable_and_makes_one_net_device_each_in_order() {
        let cli = Cli::try_parse_from([
            "hull-vmm",
            "--kernel",
            "/k",
            "--net-fd",
            "5,mac=02:68:75:6c:00:00",
            "--tap",
            "tap9",
            "--net-fd",
            "6,mac=02:68:75:6c:00:01",
            "--net-fd",
            "9",
        ])
        .unwrap();
        let r = resources(cli);
        assert_eq!(r.tap.as_deref(), Some("tap9"));
        let mac = |i| Some([0x02, 0x68, 0x75, 0x6c, 0x00, i]);
        assert_eq!(
            r.net_fds,
            vec![
                NetFdConfig { fd: 5, mac: mac(0) },
                NetFdConfig { fd: 6, mac: mac(1) },
                NetFdConfig { fd: 9, mac: None },
            ]
        );
        let none = Cli::try_parse_from(["hull-vmm", "--kernel", "/k"]).unwrap();
        assert!(resources(none).net_fds.is_empty());
        let e = Cli::try_parse_from(["hull-vmm", "--kernel", "/k", "--net-fd", "5,mac=x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mac=aa:bb:cc:dd:ee:ff"), "{e}");
    }

    #[test]
    fn help_documents_net_fd() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--net-fd <FD[,mac=MAC]>"), "{help}");
        assert!(help.contains("IFF_VNET_HDR"), "{help}");
    }
}
