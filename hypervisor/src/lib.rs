//! The `Hypervisor` seam: what a vm sandbox needs from the program that runs its VM, and its
//! backends (`qemu` now; the built-in `vmm` later). `detect` holds the host probes that pick a
//! backend (`auto`) and that `hull check` reports.

mod builtin;
pub mod detect;
mod error;
mod qemu;
mod vmm_process;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use builtin::BuiltinHypervisor;
pub use error::{HypervisorError, Result};
pub use qemu::{template, QemuHypervisor, VmRunState};

use hull_agent_client::{AgentChannel, AgentClient};

/// How guest code runs (config `[vm] accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if this host's KVM is hardware-backed (probed once), else TCG.
    Auto,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's binary translator: slow, but runs anywhere.
    Tcg,
}

/// A host directory shared into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The host directory.
    pub host_dir: PathBuf,
    /// The tag the guest mounts it by (`mount -t 9p -o trans=virtio TAG /mnt`).
    pub tag: String,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Uncompressed, PVH-capable guest kernel (`guest-kernel/build.sh`).
    pub kernel: PathBuf,
    /// Initrd whose /init is hull-agent (`guest-kernel/initrd.sh`).
    pub initrd: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Where the backend keeps its sockets and logs; created if missing.
    pub state_dir: PathBuf,
    /// Host directories shared into the guest.
    pub shares: Vec<Share>,
    /// How long boot may take until the agent answers `Check`.
    pub boot_timeout: Duration,
    /// Default timeout of each call through the returned agent client.
    pub agent_call_timeout: Duration,
    /// How guest code runs.
    pub accel: Accel,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
    /// Describe the devices to the guest through ACPI instead of the kernel command line:
    /// a distribution kernel whose virtio-mmio driver is a module without command-line
    /// devices (Debian's) finds them only this way.
    pub acpi: bool,
    /// Start from a template of this guest kept under this directory instead of booting the
    /// kernel: the first VM of a configuration boots, is saved as the template and restored;
    /// later ones are only restored (`template`). QEMU backend only.
    pub template_dir: Option<PathBuf>,
}

impl VmConfig {
    /// A config with hull's defaults: 256 MiB, 1 vCPU, 30 s boot timeout, accel auto.
    pub fn new(
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: initrd.into(),
            memory_mib: 256,
            vcpus: 1,
            state_dir: state_dir.into(),
            shares: Vec::new(),
            boot_timeout: Duration::from_secs(30),
            agent_call_timeout: hull_agent_client::DEFAULT_CALL_TIMEOUT,
            accel: Accel::Auto,
            extra_cmdline: String::new(),
            acpi: false,
            template_dir: None,
        }
    }
}

impl VmConfig {
    /// Errors unless the kernel and the initrd are files.
    pub(crate) fn check_guest_files(&self) -> Result<()> {
        for (what, p) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if !p.is_file() {
                return Err(HypervisorError::Config(format!(
                    "{what} {p:?} is not a file (build it with guest-kernel/build.sh / initrd.sh)"
                )));
            }
        }
        Ok(())
    }
}

/// A device to hot-add to a running VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceConfig {
    /// A host directory shared into the guest.
    Share(Share),
    /// A raw block device or image file.
    Block(PathBuf),
}

/// A guest that came up: the agent answered `Check`.
#[derive(Debug)]
pub struct BootedVm {
    /// A connected agent client (on a virtio-serial channel, the only connection there is).
    pub agent: AgentClient,
    /// From starting the hypervisor to the agent's first answer.
    pub boot_time: Duration,
}

/// One sandbox's virtual machine, whatever runs it. Dropping it kills the VM.
pub trait Hypervisor: Send {
    /// The backend's name (`qemu`, `builtin`).
    fn backend(&self) -> &'static str;
    /// Starts the VM and waits, within the config's boot timeout, for its agent to answer.
    fn boot(&mut self) -> Result<BootedVm>;
    /// Stops the VM (cleanly if it can, killed after a bound); idempotent.
    fn stop(&mut self) -> Result<()>;
    /// Freezes the guest's vCPUs.
    fn pause(&mut self) -> Result<()>;
    /// Lets a paused guest run again.
    fn resume(&mut self) -> Result<()>;
    /// Saves the VM's state into `dir`.
    fn snapshot(&mut self, dir: &Path) -> Result<()>;
    /// Hot-adds a device to the running VM.
    fn add_device(&mut self, device: &DeviceConfig) -> Result<()>;
    /// Errors if the VM is not running (its process exited, or it was stopped).
    fn check_running(&mut self) -> Result<()>;
    /// How the host reaches the guest agent.
    fn agent_channel(&self) -> AgentChannel;
    /// The file the guest's console is written to.
    fn console_log(&self) -> PathBuf;
    /// The host process running the VM, while it runs (a subreaper must leave it alone).
    fn pid(&self) -> Option<u32>;
}

/// The guest kernel's command line, the same for every backend but for how a reboot ends
/// the VM (`reboot`: `t` where QEMU's -no-reboot turns the triple fault into an exit, `k`
/// where hull-vmm ends on the i8042 reset), where the agent listens, and the host's TSC
/// frequency when known (saves the guest its calibration).
pub(crate) fn guest_cmdline(
    reboot: &str,
    agent_listen: &str,
    tsc_khz: Option<u64>,
    extra: &str,
) -> String {
    let mut c = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        // A panic resets at once, which ends the VM.
        "panic=-1".into(),
        format!("reboot={reboot}"),
        "cryptomgr.notests".into(),
        "pci=off".into(),
        "8250.nr_uarts=1".into(),
        // Boot time under TCG (scripts/bench-kernel): keep the LOCK prefixes a 1-vCPU guest
        // would patch out (~55 ms), skip the IO-APIC timer check (~16 ms; KVM guests skip it
        // anyway), and give the APIC timer's 1 GHz (QEMU's and KVM's) so that hull's kernel
        // (guest-kernel/build.sh) skips its calibration (~0.2 s); other kernels ignore it.
        "noreplace-smp".into(),
        "no_timer_check".into(),
        "hull.apic_khz=1000000".into(),
        "rdinit=/init".into(),
        // Reaches /init's environment: the agent reads its --listen from it.
        format!("HULL_AGENT_LISTEN={agent_listen}"),
    ];
    if let Some(khz) = tsc_khz {
        c.push(format!("tsc_early_khz={khz}"));
    }
    if !extra.is_empty() {
        c.push(extra.to_string());
    }
    c.join(" ")
}

/// Which backend runs a pod's VM (config `[vm] hypervisor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The best this host can run: `builtin` with hardware KVM, else `qemu`.
    Auto,
    /// QEMU `microvm`.
    Qemu,
    /// hull's own VMM (`hull-vmm`), hardware KVM only.
    Builtin,
}

impl BackendChoice {
    /// What `auto` means on this host.
    pub fn resolve(self) -> BackendChoice {
        match self {
            BackendChoice::Auto if detect::kvm_hardware_backed_cached() => BackendChoice::Builtin,
            BackendChoice::Auto => BackendChoice::Qemu,
            b => b,
        }
    }
}

/// A hypervisor of the chosen backend for `config` (nothing runs until `boot`).
pub fn select(backend: BackendChoice, config: VmConfig) -> Result<Box<dyn Hypervisor>> {
    // hull-vmm has no shared-directory device yet: `auto` keeps a VM that shares host
    // directories on qemu (an explicit `builtin` says why it cannot).
    if backend == BackendChoice::Auto && !config.shares.is_empty() {
        return Ok(Box::new(QemuHypervisor::new(config)));
    }
    match backend.resolve() {
        BackendChoice::Builtin => builtin_backend(config),
        _ => Ok(Box::new(QemuHypervisor::new(config))),
    }
}

/// The `builtin` backend (see `builtin.rs`).
fn builtin_backend(config: VmConfig) -> Result<Box<dyn Hypervisor>> {
    Ok(Box::new(BuiltinHypervisor::new(config)))
}

#[cfg(test)]
mod tests {
    use super::guest_cmdline;

    #[test]
    fn cmdline_has_the_boot_time_switches_and_ends_with_extra() {
        let c = guest_cmdline("t", "serial:/dev/vport0p1", Some(2_100_000), "loglevel=7");
        let words: Vec<&str> = c.split(' ').collect();
        for w in [
            "console=ttyS0",
            "quiet",
            "reboot=t",
            "noreplace-smp",
            "no_timer_check",
            "hull.apic_khz=1000000",
            "rdinit=/init",
            "HULL_AGENT_LISTEN=serial:/dev/vport0p1",
            "tsc_early_khz=2100000",
        ] {
            assert!(words.contains(&w), "{w} missing: {c}");
        }
        assert_eq!(words.last(), Some(&"loglevel=7"), "{c}");
        let bare = guest_cmdline("k", "vsock://1024", None, "");
        assert!(
            !bare.contains("tsc_early_khz") && !bare.ends_with(' '),
            "{bare}"
        );
    }
}
