//! hull-hypervisor: the program that runs a vm pod's VM, behind one seam. Its one job is
//! starting, watching and stopping that VM: the [`Hypervisor`] trait and what each backend can
//! do ([`Capabilities`]), [`select`] (the config's choice, `auto` resolved against the host and
//! the VM's needs), the owned VMM process with the boot wait, the kernel command line, the
//! VM's NICs on the pod's taps ([`Nic`]), its cold-plugged virtio-blk disks ([`Disk`]), the host probes `hull check` reports (`detect`), and
//! the backends: `qemu` (QEMU `microvm`, with templates) and `builtin` (hull's own `hull-vmm`).
//! A booted VM hands back an agent *channel*; `hull-agent-client` connects over it.

mod builtin;
mod capabilities;
pub mod detect;
mod error;
mod programs;
mod qemu;
mod vmm_process;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use builtin::BuiltinHypervisor;
pub use capabilities::{Backend, Capabilities, DeviceSupport, Missing, Needs, SharedFs};
pub use error::{HypervisorError, Result};
pub use programs::STARTED_AS_ENV;
pub use qemu::{template, QemuDrive, QemuHypervisor, VmRunState};

use hull_agent_client::{AgentChannel, AgentClient};
use programs::find_qemu;

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

impl Accel {
    /// What this means on a host: `Auto` is `Kvm` where `kvm_hardware` says KVM is
    /// hardware-backed, else `Tcg` (asked only for `Auto`).
    pub fn resolve(self, kvm_hardware: impl FnOnce() -> bool) -> Accel {
        match self {
            Accel::Auto if kvm_hardware() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            a => a,
        }
    }

    /// `kvm` / `tcg` (`auto` before it is resolved).
    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A host directory shared into the guest over virtio-9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The host directory.
    pub host_dir: PathBuf,
    /// The tag the guest mounts it by (`mount -t 9p -o trans=virtio TAG /mnt`).
    pub tag: String,
}

/// A virtio-net NIC of the VM, on a host tap.
#[derive(Debug, Clone)]
pub struct Nic {
    /// An open tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), not persistent: this fd holds it, so
    /// it vanishes with hull and the VMM. Shared because the same tap is given to every VMM
    /// of the VM (the QEMU that makes a template, then the one restored from it).
    pub tap: Arc<OwnedFd>,
}

/// The MAC NIC `index` has when the guest starts, the same for every VM (so that templates
/// with NICs restore): the locally administered unicast `02:68:75:6c:` ("hul") followed by
/// `index` in 16 bits (`02:68:75:6c:00:01` for NIC 1).
/// The agent finds NIC `index` by it and gives it the pod interface's MAC.
pub fn nic_device_mac(index: usize) -> [u8; 6] {
    [0x02, 0x68, 0x75, 0x6c, (index >> 8) as u8, index as u8]
}

/// `aa:bb:cc:dd:ee:ff`, as QEMU and hull-vmm take a MAC.
pub(crate) fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A virtio-blk disk of the VM, cold-plugged at boot, backed by a host block device node
/// (a disk, a partition, a loop device, an LVM volume) or a raw image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The host block device node or raw image file.
    pub path: PathBuf,
    /// The guest may only read it.
    pub read_only: bool,
    /// Other VMs may open it too, for writing as well (a cluster filesystem's disk): the
    /// VMM does not lock it for itself.
    pub shared: bool,
}

/// A host PCI device bound to `vfio-pci`, passed through to the VM (cold-plugged on a PCIe
/// bus): the guest's own driver binds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// Its full PCI address on the host (`0000:01:00.0`).
    pub address: String,
}

/// The serial of the VM's disk `index` (`hull-disk-{index}`), the same for every VM: the
/// agent finds disk `index` in the guest by it (`/sys/block/vdX/serial`). At most 20 bytes,
/// virtio-blk's serial limit (`VIRTIO_BLK_ID_BYTES`), for any index below 10^10.
pub fn disk_serial(index: usize) -> String {
    format!("hull-disk-{index}")
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest kernel: an ELF vmlinux (with or without a PVH entry) or a bzImage; both backends
    /// load either. hull's own is `guest-kernel/build.sh`'s; a distribution's needs `acpi`.
    pub kernel: PathBuf,
    /// Initrd whose /init is hull-agent (`guest-kernel/initrd.sh`).
    pub initrd: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Where the backend keeps its sockets and logs; created if missing.
    pub state_dir: PathBuf,
    /// Host directories shared into the guest (a backend with a shared filesystem only).
    pub shares: Vec<Share>,
    /// How long boot may take until the agent answers `Check`.
    pub boot_timeout: Duration,
    /// Default timeout of each call through the agent client of the booted VM.
    pub agent_call_timeout: Duration,
    /// How guest code runs (QEMU; hull-vmm runs on KVM only).
    pub accel: Accel,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
    /// Describe the devices to the guest through ACPI instead of the kernel command line:
    /// a distribution kernel whose virtio-mmio driver is a module without command-line
    /// devices (Debian's) finds them only this way. QEMU only.
    pub acpi: bool,
    /// Start from a template of this guest kept under this directory instead of booting the
    /// kernel: the first VM of a configuration boots, is saved as the template and restored;
    /// later ones are only restored (`template`). Backends without
    /// [`Capabilities::templates`] boot every VM.
    pub template_dir: Option<PathBuf>,
    /// The VM's NICs, in order: NIC `i` has [`nic_device_mac`]`(i)` when the guest starts.
    pub nics: Vec<Nic>,
    /// The VM's disks, in order: disk `i` has serial [`disk_serial`]`(i)`. A VM with disks
    /// boots cold (no template: a template's guest has seen other disks and their sizes).
    pub disks: Vec<Disk>,
    /// Empty disk slots the VM boots with (size 0, serial [`disk_slot_serial`]`(i)`), which
    /// [`Hypervisor::attach_disk`] fills while it runs: microvm has no hotplug, so a disk for
    /// a container created after the VM started takes a slot. Slots are part of a template.
    pub disk_slots: usize,
    /// Host PCI devices passed through with VFIO (each bound to `vfio-pci`). A VM with them
    /// boots cold on a machine with a PCIe bus (a template's guest has not seen them).
    pub pci_devices: Vec<PciDevice>,
    /// QEMU TCG's translation buffer in MiB (TCG only; QEMU's own default is 1 GiB).
    pub tcg_tb_mib: u32,
    /// Start from a checkpoint of a VM of this configuration (the directory
    /// [`Hypervisor::snapshot`] wrote) instead of booting: every process in the guest goes on
    /// where it was. No template is used.
    pub restore_from: Option<PathBuf>,
    /// Disk slots filled when the VM starts: `(slot, disk)`, a restored VM's slots as they
    /// were at its checkpoint.
    pub filled_slots: Vec<(usize, Disk)>,
}

/// The TCG translation buffer a VM gets unless configured: what a pod's guest runs fits.
pub const DEFAULT_TCG_TB_MIB: u32 = 64;

/// The serial of empty disk slot `index` (see [`VmConfig::disk_slots`]): the agent finds the
/// disk attached there by it.
pub fn disk_slot_serial(index: usize) -> String {
    format!("hull-slot-{index}")
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
            nics: Vec::new(),
            disks: Vec::new(),
            disk_slots: 0,
            pci_devices: Vec::new(),
            tcg_tb_mib: DEFAULT_TCG_TB_MIB,
            restore_from: None,
            filled_slots: Vec::new(),
        }
    }

    /// What this VM needs of its backend: a shared filesystem when it shares directories,
    /// NICs, disks, disk slots and PCI devices when it has any.
    pub fn needs(&self) -> Needs {
        Needs {
            shared_fs: (!self.shares.is_empty()).then_some(SharedFs::Virtio9p),
            nics: self.nics.len(),
            disks: self.disks.len(),
            disk_slots: self.disk_slots,
            pci_devices: self.pci_devices.len(),
        }
    }

    /// What a template key records of the VM's devices (both backends): NICs by count and
    /// MAC, not by tap (each VM restores with its own taps), and the disk slots by serial.
    pub(crate) fn device_facts(&self) -> Vec<String> {
        let nics = (0..self.nics.len()).map(|i| format!("nic:{}", mac_string(nic_device_mac(i))));
        let slots = (0..self.disk_slots).map(|i| format!("slot:{}", disk_slot_serial(i)));
        nics.chain(slots).collect()
    }

    /// The NICs' tap fds, by their own numbers: the VMM inherits them as they are.
    pub(crate) fn nic_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.nics.iter().map(|n| n.tap.as_raw_fd()).collect()
    }

    /// Errors unless the kernel and the initrd are files, the VM has at least 64 MiB and
    /// one vCPU (and at most `max_vcpus`, where the backend has a limit), no NIC's tap fd
    /// is a standard stream's number (the VMM's stdio would replace it), and every disk's
    /// path is a block device or a regular file.
    pub(crate) fn check_bootable(&self, max_vcpus: Option<u32>) -> Result<()> {
        if let Some(fd) = self.nic_fds().into_iter().find(|fd| *fd <= 2) {
            return Err(HypervisorError::Config(format!(
                "nic tap fd {fd} is a standard stream's number"
            )));
        }
        for (what, p) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if !p.is_file() {
                return Err(HypervisorError::Config(format!(
                    "{what} {p:?} is not a file (build it with guest-kernel/build.sh / initrd.sh)"
                )));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            check_disk(i, &d.path)?;
        }
        for d in &self.pci_devices {
            check_pci_device(Path::new("/sys/bus/pci/devices"), &d.address)?;
        }
        let too_many = max_vcpus.is_some_and(|m| self.vcpus > m);
        if self.memory_mib < 64 || self.vcpus == 0 || too_many {
            let vcpus = match max_vcpus {
                Some(m) => format!("1 to {m} vCPUs"),
                None => "1 vCPU".into(),
            };
            return Err(HypervisorError::Config(format!(
                "need at least 64 MiB and {vcpus} (got {} MiB, {} vCPUs)",
                self.memory_mib, self.vcpus
            )));
        }
        Ok(())
    }
}

/// Errors unless disk `index`'s `path` is a block device or a regular file (one line naming
/// it: a missing device, a directory, a character device).
fn check_disk(index: usize, path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).map(|m| m.file_type());
    match kind {
        Ok(t) if t.is_block_device() || t.is_file() => Ok(()),
        Ok(_) => Err(HypervisorError::Config(format!(
            "disk {index}: {path:?} is neither a block device nor a file"
        ))),
        Err(e) => Err(HypervisorError::Config(format!(
            "disk {index}: {path:?}: {e}"
        ))),
    }
}

/// Errors unless PCI device `address` (under `pci_devices`, normally
/// `/sys/bus/pci/devices`) is bound to `vfio-pci`: one line naming it and its driver.
fn check_pci_device(pci_devices: &Path, address: &str) -> Result<()> {
    let dev = pci_devices.join(address);
    if !dev.exists() {
        return Err(HypervisorError::Config(format!(
            "pci device {address}: no such device on the host"
        )));
    }
    match detect::pci_driver(&dev).as_deref() {
        Some("vfio-pci") => Ok(()),
        other => Err(HypervisorError::Config(format!(
            "pci device {address} is bound to {}, not vfio-pci",
            other.unwrap_or("no driver")
        ))),
    }
}

/// A VM whose VMM started (its kernel booting, or its template restored): where its agent
/// will answer. [`Hypervisor::wait_for_agent`] waits for that answer.
#[derive(Debug, Clone)]
pub struct BootedVm {
    /// How the host reaches the guest agent.
    pub channel: AgentChannel,
    /// When the VMM was started (the boot timeout counts from here).
    pub started: Instant,
}

/// One pod's virtual machine, whatever runs it. Dropping it kills the VM.
///
/// Booting is two calls: [`boot`](Hypervisor::boot) starts the VMM and returns at once,
/// [`wait_for_agent`](Hypervisor::wait_for_agent) waits for the guest's agent and returns the
/// connection that answered, which the caller keeps (a virtio-serial port carries one
/// connection at a time).
pub trait Hypervisor: Send {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities {
        self.backend().capabilities()
    }
    /// Starts the VM (boots the kernel, or restores a template) without waiting for the guest.
    fn boot(&mut self) -> Result<BootedVm>;
    /// Waits, within the boot timeout from `vm.started`, for the agent of the VM that `boot`
    /// started to answer `Check`; returns that connection. A failure kills the VM:
    /// [`HypervisorError::ExitedDuringBoot`] (the VMM's last stderr line, or the guest's last
    /// console line), [`HypervisorError::BootTimeout`].
    fn wait_for_agent(&mut self, vm: &BootedVm) -> Result<AgentClient>;
    /// Stops the VM; idempotent. `guest_powering_off`: the agent took a power-off request
    /// (see [`Capabilities::stops_by_guest_power_off`]), so the VM is first given a moment to
    /// end by itself; then the backend's own stop, and a kill after a bound.
    fn stop(&mut self, guest_powering_off: bool) -> Result<()>;
    /// Freezes the guest's vCPUs.
    fn pause(&mut self) -> Result<()>;
    /// Lets a paused guest run again.
    fn resume(&mut self) -> Result<()>;
    /// Saves the VM's whole state (devices and RAM) into `dir` ([`Capabilities::snapshot`]),
    /// from which a VM of the same configuration starts ([`VmConfig::restore_from`]). A
    /// running VM runs on afterwards; a paused one stays paused.
    fn snapshot(&mut self, dir: &Path) -> Result<()>;
    /// Errors if the VM is not running (its process exited, or it was stopped).
    fn check_running(&mut self) -> Result<()>;
    /// After a call into the guest failed: `Some` when the VM ended by itself meanwhile (its
    /// process exited; it was not stopped), waiting up to `bound` for an exit under way. Its
    /// logs are then kept as a failed boot's are, and the error
    /// ([`HypervisorError::NotRunning`]) says how it ended and names the kept console log.
    fn ended_by_itself(&mut self, bound: Duration) -> Option<HypervisorError>;
    /// The file the guest's console is written to.
    fn console_log(&self) -> PathBuf;
    /// The host process running the VM, while it runs (a subreaper must leave it alone).
    fn pid(&self) -> Option<u32>;
    /// Puts `disk` into empty disk slot `slot` of the running VM (see
    /// [`VmConfig::disk_slots`]); the guest sees the slot's disk grow to the disk's size.
    fn attach_disk(&mut self, slot: usize, disk: &Disk) -> Result<()> {
        let _ = (slot, disk);
        Err(HypervisorError::NotSupported {
            operation: "adding a disk to a running VM",
            backend: self.backend().name(),
        })
    }
    /// Empties disk slot `slot` again (the guest sees a disk of size 0).
    fn detach_disk(&mut self, slot: usize) -> Result<()> {
        let _ = slot;
        Err(HypervisorError::NotSupported {
            operation: "removing a disk from a running VM",
            backend: self.backend().name(),
        })
    }
}

/// The guest kernel's command line, the same for every backend but for how a reboot ends
/// the VM (`reboot`: `t` where QEMU's -no-reboot turns the triple fault into an exit, `k`
/// where hull-vmm ends on the i8042 reset), where the agent listens, and the host's TSC
/// frequency when known (saves the guest its calibration). `pci`: the machine has a PCI bus
/// the guest must scan (host PCI devices passed through); others turn the scan off.
pub(crate) fn guest_cmdline(
    reboot: &str,
    agent_listen: &str,
    tsc_khz: Option<u64>,
    pci: bool,
    extra: &str,
) -> String {
    let mut c = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        // A panic resets at once, which ends the VM.
        "panic=-1".into(),
        format!("reboot={reboot}"),
        "cryptomgr.notests".into(),
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
    if !pci {
        c.insert(5, "pci=off".into());
    }
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
    /// The first backend this host can run whose capabilities cover the VM: `builtin` with
    /// hardware KVM, else `qemu` (see [`detect::pick_backend`]).
    Auto,
    /// QEMU `microvm`.
    Qemu,
    /// hull's own VMM (`hull-vmm`), hardware KVM only.
    Builtin,
}

/// A hypervisor of the chosen backend for `config` (nothing runs until `boot`). `auto` picks
/// as `hull check` reports; a backend whose capabilities do not cover the config is refused
/// here, before anything starts, naming what it lacks and the backend that has it.
pub fn select(choice: BackendChoice, config: VmConfig) -> Result<Box<dyn Hypervisor>> {
    let needs = config.needs();
    let backend = match choice {
        BackendChoice::Qemu => Backend::Qemu,
        BackendChoice::Builtin => Backend::Builtin,
        BackendChoice::Auto => {
            let pick = detect::pick_backend(&needs, detect::kvm_hardware_backed_cached, || {
                find_qemu().is_ok()
            });
            pick.backend.ok_or(HypervisorError::NoBackend {
                reason: pick.reason,
            })?
        }
    };
    backend.check_covers(&needs)?;
    Ok(match backend {
        Backend::Qemu => Box::new(QemuHypervisor::new(config)),
        Backend::Builtin => Box::new(BuiltinHypervisor::new(config)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pci_device_must_be_bound_to_vfio_pci() {
        let sys = tempfile::tempdir().unwrap();
        let drivers = sys.path().join("drivers");
        for d in ["vfio-pci", "nvme"] {
            std::fs::create_dir_all(drivers.join(d)).unwrap();
        }
        for (addr, driver) in [
            ("0000:00:03.0", Some("vfio-pci")),
            ("0000:00:04.0", Some("nvme")),
            ("0000:00:05.0", None),
        ] {
            let dev = sys.path().join(addr);
            std::fs::create_dir_all(&dev).unwrap();
            if let Some(d) = driver {
                std::os::unix::fs::symlink(drivers.join(d), dev.join("driver")).unwrap();
            }
        }
        check_pci_device(sys.path(), "0000:00:03.0").unwrap();
        let e = |a| check_pci_device(sys.path(), a).unwrap_err().to_string();
        assert_eq!(
            e("0000:00:04.0"),
            "vm config: pci device 0000:00:04.0 is bound to nvme, not vfio-pci"
        );
        assert!(
            e("0000:00:05.0").contains("bound to no driver"),
            "{}",
            e("0000:00:05.0")
        );
        assert!(
            e("0000:09:00.0").contains("no such device"),
            "{}",
            e("0000:09:00.0")
        );
    }

    fn sharing() -> VmConfig {
        let mut c = VmConfig::new("/k", "/i", "/run/hull/vm1");
        c.shares.push(Share {
            host_dir: "/srv/rootfs".into(),
            tag: "hullshare".into(),
        });
        c
    }

    #[test]
    fn an_explicit_backend_without_what_the_vm_needs_is_refused_before_it_starts() {
        let e = select(BackendChoice::Builtin, sharing())
            .err()
            .expect("builtin has no shared filesystem");
        assert!(matches!(e, HypervisorError::Lacks { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "the builtin backend cannot run this vm: it has no shared filesystem (virtio-9p); \
             use hypervisor = \"qemu\""
        );
        let q = select(BackendChoice::Qemu, sharing()).unwrap();
        assert_eq!(q.backend(), Backend::Qemu);
        assert!(q.pid().is_none(), "nothing runs until boot");
    }

    #[test]
    fn auto_gives_a_sharing_vm_a_backend_with_a_shared_filesystem() {
        if find_qemu().is_err() {
            let e = select(BackendChoice::Auto, sharing()).err().unwrap();
            assert!(e.to_string().contains("cannot run here"), "{e}");
            return;
        }
        let h = select(BackendChoice::Auto, sharing()).unwrap();
        assert_eq!(h.backend(), Backend::Qemu);
        assert!(!h.capabilities().shared_fs.is_empty());
    }

    #[test]
    fn accel_auto_follows_the_hardware_probe_and_explicit_ones_stay() {
        assert_eq!(Accel::Auto.resolve(|| true), Accel::Kvm);
        assert_eq!(Accel::Auto.resolve(|| false), Accel::Tcg);
        assert_eq!(Accel::Tcg.resolve(|| panic!("not probed")), Accel::Tcg);
        assert_eq!(Accel::Kvm.resolve(|| false).name(), "kvm");
    }

    #[test]
    fn a_vm_needs_a_shared_filesystem_only_when_it_shares() {
        assert_eq!(VmConfig::new("/k", "/i", "/s").needs(), Needs::default());
        assert_eq!(sharing().needs().shared_fs, Some(SharedFs::Virtio9p));
    }

    #[test]
    fn a_vm_needs_as_many_nics_as_it_has() {
        let mut c = VmConfig::new("/k", "/i", "/s");
        assert!(c.nics.is_empty() && c.nic_fds().is_empty());
        for _ in 0..2 {
            let tap = std::fs::File::open("/dev/null").unwrap();
            c.nics.push(Nic {
                tap: Arc::new(tap.into()),
            });
        }
        assert_eq!(c.needs().nics, 2);
        assert_eq!(c.needs().shared_fs, None);
        // Clones (one config per VMM start) share the taps.
        assert_eq!(c.clone().nic_fds(), c.nic_fds());
    }

    #[test]
    fn a_vm_needs_as_many_disks_as_it_has() {
        let mut c = VmConfig::new("/k", "/i", "/s");
        assert!(c.disks.is_empty());
        c.disks = vec![
            Disk {
                path: "/dev/loop0".into(),
                read_only: false,
                shared: false,
            };
            2
        ];
        assert_eq!(c.needs().disks, 2);
        assert_eq!(c.needs().nics, 0);
    }

    #[test]
    fn disk_serials_are_fixed_distinct_and_fit_virtio_blk() {
        assert_eq!(disk_serial(0), "hull-disk-0");
        assert_eq!(disk_serial(12), "hull-disk-12");
        // VIRTIO_BLK_ID_BYTES: the guest sees at most 20 bytes.
        assert!(disk_serial(9_999_999_999).len() <= 20);
        let serials: std::collections::HashSet<String> = (0..300).map(disk_serial).collect();
        assert_eq!(serials.len(), 300);
    }

    #[test]
    fn a_missing_or_odd_disk_is_one_line_naming_it_before_anything_runs() {
        let d = tempfile::tempdir().unwrap();
        let (k, i) = (d.path().join("vmlinux"), d.path().join("initrd"));
        std::fs::write(&k, b"k").unwrap();
        std::fs::write(&i, b"i").unwrap();
        let img = d.path().join("disk.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let mut c = VmConfig::new(&k, &i, d.path().join("vm"));
        let disk = |p: &Path| Disk {
            path: p.into(),
            read_only: true,
            shared: false,
        };
        c.disks = vec![disk(&img)];
        c.check_bootable(None).unwrap();
        let missing = d.path().join("gone");
        c.disks.push(disk(&missing));
        let e = c.check_bootable(None).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("vm config: disk 1: {missing:?}: No such file or directory (os error 2)")
        );
        assert!(!e.contains('\n'), "{e}");
        c.disks[1] = disk(Path::new("/dev/null"));
        let e = c.check_bootable(None).unwrap_err().to_string();
        assert!(
            e.contains("disk 1: \"/dev/null\" is neither a block device nor a file"),
            "{e}"
        );
    }

    #[test]
    fn nic_device_macs_are_fixed_distinct_local_unicast_addresses() {
        assert_eq!(nic_device_mac(0), [0x02, 0x68, 0x75, 0x6c, 0x00, 0x00]);
        assert_eq!(mac_string(nic_device_mac(1)), "02:68:75:6c:00:01");
        let macs: std::collections::HashSet<[u8; 6]> = (0..300).map(nic_device_mac).collect();
        assert_eq!(macs.len(), 300);
        for m in macs {
            assert_eq!(m[0] & 0b11, 0b10, "locally administered unicast: {m:02x?}");
        }
    }

    #[test]
    fn cmdline_has_the_boot_time_switches_and_ends_with_extra() {
        let c = guest_cmdline(
            "t",
            "serial:/dev/vport0p1",
            Some(2_100_000),
            false,
            "loglevel=7",
        );
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
        assert!(words.contains(&"pci=off"), "no PCI bus to scan: {c}");
        let pci = guest_cmdline("t", "serial:/dev/vport0p1", None, true, "");
        assert!(!pci.contains("pci=off"), "{pci}");
        let bare = guest_cmdline("k", "vsock://1024", None, false, "");
        assert!(
            !bare.contains("tsc_early_khz") && !bare.ends_with(' '),
            "{bare}"
        );
    }
}
