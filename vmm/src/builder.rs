//! Wires memory, the KVM VM, vCPUs and devices into a [`Vmm`] from a [`VmResources`], and runs
//! the VMM's event loop (exit, serial input, virtio host-side I/O, API socket).

use std::fs::File;
use std::io::Write;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linux_loader::cmdline::Cmdline;
use tracing::{debug, info, warn};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{self, boot, layout, mptable, regs::BootEntry};
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::legacy::EventFdTrigger;
use crate::devices::virtio::mmio::{reg, MmioTransport};
use crate::devices::virtio::{self, VirtioDevice};
use crate::devices::{Bus, BusError};
use crate::snapshot::{self, SnapshotError, VmParts};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{
    Buses, ExitNotifier, SnapshotCaps, Vcpu, VcpuError, VcpuEvent, VcpuHandle, VmExit,
};
use crate::vstate::vm::{Vm, VmError};

/// Errors while building or driving the VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file named in the configuration could not be opened.
    #[error("cannot open {what} {path}: {source}")]
    Open {
        /// kernel, initrd, block device...
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// KVM VM set-up failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the kernel or writing boot parameters failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// A vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Devices overlap on a bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A virtio device could not be created.
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioError),
    /// An eventfd, irqfd or epoll operation failed.
    #[error("cannot {what}: {source}")]
    Sys {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Saving or restoring a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Building the VM a snapshot is restored into failed.
    #[error("cannot rebuild VM for restore: {0}")]
    Rebuild(Box<BuildError>),
    /// The API socket failed.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// The seccomp filter could not be built.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// A block device: a raw image file or a host block device node, optionally read-only, with
/// the serial the guest reads (`VIRTIO_BLK_T_GET_ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Path of the raw image or device node.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    pub read_only: bool,
    /// The disk's serial (at most 20 bytes); without it, the file's name cut to 20 bytes.
    pub serial: Option<String>,
}

impl std::str::FromStr for BlockConfig {
    type Err = String;
    /// Parses `FILE[,ro|rw][,serial=S]` (options in any order after the path; a path with a
    /// comma cannot be named).
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut path, mut read_only, mut serial) = (s, false, None);
        while let Some((rest, opt)) = path.rsplit_once(',') {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                _ => match opt.strip_prefix("serial=") {
                    Some(id) if id.len() > virtio::block::ID_BYTES => {
                        return Err(format!(
                            "block serial {id:?} is longer than {} bytes",
                            virtio::block::ID_BYTES
                        ))
                    }
                    Some(id) => serial = Some(id.to_string()),
                    None => {
                        return Err(format!(
                            "unknown block option {opt:?} (expected ro, rw or serial=S)"
                        ))
                    }
                },
            }
            path = rest;
        }
        if path.is_empty() {
            return Err("empty block device path".into());
        }
        Ok(BlockConfig {
            path: path.into(),
            read_only,
            serial,
        })
    }
}

/// A disk slot: a virtio-blk device with a serial whose disk comes and goes while the guest
/// runs (API `attach-disk` / `detach-disk`), empty (size 0) at start unless `disk` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    /// The serial the guest reads (at most 20 bytes).
    pub serial: String,
    /// What the slot holds at start: (image or device, read-only); `None`: empty.
    pub disk: Option<(PathBuf, bool)>,
}

impl std::str::FromStr for SlotConfig {
    type Err = String;
    /// Parses `SERIAL[,file=PATH][,ro]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let serial = parts.next().unwrap_or_default();
        if serial.is_empty() || serial.len() > virtio::block::ID_BYTES {
            return Err(format!(
                "disk slot serial {serial:?}: expected 1 to {} bytes",
                virtio::block::ID_BYTES
            ));
        }
        let (mut file, mut read_only) = (None, false);
        for opt in parts {
            match opt {
                "ro" => read_only = true,
                _ => match opt.strip_prefix("file=") {
                    Some(p) if !p.is_empty() => file = Some(PathBuf::from(p)),
                    _ => {
                        return Err(format!(
                            "unknown disk slot option {opt:?} (expected file=PATH or ro)"
                        ))
                    }
                },
            }
        }
        if read_only && file.is_none() {
            return Err("disk slot option ro without file=PATH".into());
        }
        Ok(SlotConfig {
            serial: serial.to_string(),
            disk: file.map(|f| (f, read_only)),
        })
    }
}

/// A net device on a tap this VMM inherited as an open fd: `FD` or `FD,mac=MAC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetFdConfig {
    /// The inherited fd (a tap made with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`); it stays
    /// open, the device uses a duplicate.
    pub fd: RawFd,
    /// The MAC the guest sees (`aa:bb:cc:dd:ee:ff`); random when not given.
    pub mac: Option<[u8; 6]>,
}

impl std::str::FromStr for NetFdConfig {
    type Err = String;
    /// Parses `FD` or `FD,mac=aa:bb:cc:dd:ee:ff`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (fd, opts) = s.split_once(',').unwrap_or((s, ""));
        let fd: RawFd = fd
            .parse()
            .ok()
            .filter(|fd| *fd > 2)
            .ok_or_else(|| format!("net fd {fd:?}: expected a number above 2"))?;
        let mac =
            match opts {
                "" => None,
                o => Some(o.strip_prefix("mac=").and_then(parse_mac).ok_or_else(|| {
                    format!("net fd option {o:?}: expected mac=aa:bb:cc:dd:ee:ff")
                })?),
            };
        Ok(NetFdConfig { fd, mac })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Everything a VM is made of (Firecracker calls it the same): what to boot, its size and its
/// devices.
#[derive(Debug, Clone)]
pub struct VmResources {
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (virtio-mmio devices are appended).
    pub cmdline: String,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Host unix socket of the hybrid vsock device.
    pub vsock_uds: Option<PathBuf>,
    /// Guest CID of the vsock device.
    pub vsock_cid: u64,
    /// Block devices, in this order.
    pub block: Vec<BlockConfig>,
    /// Disk slots, in this order, after the block devices.
    pub disk_slots: Vec<SlotConfig>,
    /// Host tap interface for a net device.
    pub tap: Option<String>,
    /// Net devices on inherited tap fds, after the `tap` one, in this order.
    pub net_fds: Vec<NetFdConfig>,
    /// Add a virtio entropy device.
    pub rng: bool,
    /// Add a virtio console (output to the serial writer).
    pub virtio_console: bool,
    /// Unix socket for the control API.
    pub api_sock: Option<PathBuf>,
    /// Install the seccomp filter on VMM threads.
    pub seccomp: bool,
    /// Forward the VMM's stdin to the serial console.
    pub stdin: bool,
    /// Name of the VM on every log line (the sandbox id).
    pub id: String,
}

impl Default for VmResources {
    fn default() -> Self {
        VmResources {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            mem_mib: 128,
            vcpus: 1,
            vsock_uds: None,
            vsock_cid: 3,
            block: Vec::new(),
            disk_slots: Vec::new(),
            tap: None,
            net_fds: Vec::new(),
            rng: true,
            virtio_console: false,
            api_sock: None,
            seccomp: true,
            stdin: false,
            id: "hull-vm".to_string(),
        }
    }
}

/// Kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule";

/// A registered virtio-mmio device.
pub struct VirtioSlot {
    /// The transport (holding the device model).
    pub transport: Arc<Mutex<MmioTransport>>,
    /// MMIO base address.
    pub base: u64,
    /// Legacy IRQ (GSI).
    pub irq: u32,
    /// ioeventfd KVM signals on guest writes to QueueNotify (no exit to the vCPU thread).
    pub notify: EventFd,
}

/// A built VM: memory, devices and (once started) vCPU threads.
pub struct Vmm {
    vm: Vm,
    mem: GuestMemoryMmap,
    config: VmResources,
    io_bus: Bus,
    mmio_bus: Bus,
    vcpus: Vec<Vcpu>,
    handles: Vec<VcpuHandle>,
    exit: ExitNotifier,
    serial: Arc<Mutex<SerialDevice>>,
    virtio: Vec<VirtioSlot>,
    /// The disk slots, in order: (index into `virtio`, the hold on its backing).
    disk_slots: Vec<(usize, virtio::block::SlotHandle)>,
    paused: bool,
    /// irqfds (eventfd, GSI) registered with KVM once the vCPUs run (see [`Vmm::start`]).
    pending_irqfds: Vec<(EventFd, u32)>,
    /// ioeventfds (eventfd, MMIO address) registered likewise.
    pending_ioevents: Vec<(EventFd, u64)>,
    api: Option<crate::api::ApiServer>,
    /// The command line the guest got (with virtio-mmio devices).
    pub cmdline: String,
    /// How the boot vCPU enters the kernel.
    pub entry: BootEntry,
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Sys { what, source }
}

impl Vmm {
    /// Builds the VM from `config`; the serial console writes to `serial_out`. vCPUs are created
    /// and configured but do not run until [`Vmm::start`].
    pub fn build(
        config: VmResources,
        serial_out: Box<dyn Write + Send>,
    ) -> Result<Vmm, BuildError> {
        let _span = tracing::info_span!("vm", id = %config.id).entered();
        let mut vmm = Vmm::build_machine(config, serial_out)?;
        let mut kernel = File::open(&vmm.config.kernel).map_err(|source| BuildError::Open {
            what: "kernel",
            path: vmm.config.kernel.clone(),
            source,
        })?;
        let loaded = boot::load_kernel(&vmm.mem, &mut kernel)?;
        let initrd = match &vmm.config.initrd {
            Some(path) => {
                let mut f = File::open(path).map_err(|source| BuildError::Open {
                    what: "initrd",
                    path: path.clone(),
                    source,
                })?;
                let max = loaded
                    .setup_header
                    .map(|h| u64::from(h.initrd_addr_max))
                    .filter(|m| *m != 0);
                Some(boot::load_initrd(&vmm.mem, &mut f, loaded.kernel_end, max)?)
            }
            None => None,
        };
        let cmdline = vmm.full_cmdline()?;
        vmm.create_vcpus()?;
        let cmdline_len = boot::write_cmdline(&vmm.mem, &cmdline)?;
        match loaded.entry {
            BootEntry::Linux64 { .. } => {
                boot::configure_linux_boot(&vmm.mem, loaded.setup_header, cmdline_len, initrd)?;
            }
            BootEntry::Pvh { .. } => {
                boot::configure_pvh_boot(&vmm.mem, initrd)?;
            }
        }
        mptable::setup_mptable(&vmm.mem, vmm.config.vcpus)?;
        vmm.entry = loaded.entry;
        let cpuid = arch::cpuid::supported_cpuid(vmm.vm.kvm()).map_err(VcpuError::from)?;
        for vcpu in &vmm.vcpus {
            vcpu.configure(&vmm.mem, &cpuid, vmm.config.vcpus, loaded.entry)?;
        }
        info!(entry = ?loaded.entry, cmdline = %vmm.cmdline, "guest loaded");
        Ok(vmm)
    }

    /// Everything but the kernel: KVM VM, memory, legacy and virtio devices, vCPUs.
    fn build_machine(
        config: VmResources,
        serial_out: Box<dyn Write + Send>,
    ) -> Result<Vmm, BuildError> {
        if config.vcpus == 0 || config.vcpus > 32 {
            return Err(BuildError::Config(format!(
                "{} vCPUs: must be 1..=32",
                config.vcpus
            )));
        }
        let fds = &config.net_fds;
        if let Some((i, n)) = fds
            .iter()
            .enumerate()
            .find(|(i, n)| fds[..*i].iter().any(|m| m.fd == n.fd))
        {
            return Err(BuildError::Config(format!(
                "net fd {} is given twice (net device {i})",
                n.fd
            )));
        }
        if config.mem_mib < 2 || config.mem_mib > 256 * 1024 {
            return Err(BuildError::Config(format!(
                "{} MiB of memory: must be 2..=262144",
                config.mem_mib
            )));
        }
        let vm = Vm::new()?;
        let mem = memory::create_guest_memory(config.mem_mib << 20)?;
        vm.register_memory(&mem)?;
        vm.setup_irqchip()?;

        let exit = ExitNotifier::new(
            EventFd::new(libc::EFD_NONBLOCK).map_err(sys("create exit eventfd"))?,
        );
        let mut io_bus = Bus::new();

        let serial_irq = EventFdTrigger::new().map_err(sys("create serial eventfd"))?;
        let pending_irqfds = vec![(
            serial_irq
                .0
                .try_clone()
                .map_err(sys("clone serial eventfd"))?,
            layout::COM1_IRQ,
        )];
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, serial_out)));
        io_bus.insert(serial.clone(), u64::from(layout::COM1_BASE), 8)?;

        let reset = EventFdTrigger(exit.evt().try_clone().map_err(sys("clone exit eventfd"))?);
        io_bus.insert(
            Arc::new(Mutex::new(I8042::new(reset))),
            u64::from(layout::I8042_BASE),
            5,
        )?;

        let mut vmm = Vmm {
            vm,
            mem,
            config,
            io_bus,
            mmio_bus: Bus::new(),
            vcpus: Vec::new(),
            handles: Vec::new(),
            exit,
            serial,
            virtio: Vec::new(),
            disk_slots: Vec::new(),
            paused: false,
            pending_irqfds,
            pending_ioevents: Vec::new(),
            api: None,
            cmdline: String::new(),
            entry: BootEntry::Linux64 { entry: 0 },
        };
        vmm.add_configured_virtio_devices()?;
        if let Some(path) = vmm.config.api_sock.clone() {
            vmm.api = Some(crate::api::ApiServer::bind(&path)?);
        }
        Ok(vmm)
    }

    fn add_configured_virtio_devices(&mut self) -> Result<(), BuildError> {
        if self.config.virtio_console {
            let out = Box::new(std::io::stdout());
            self.add_virtio_device(Box::new(virtio::console::Console::new(out)))?;
        }
        for b in self.config.block.clone() {
            let dev = virtio::block::Block::open(&b.path, b.read_only, b.serial.as_deref())?;
            self.add_virtio_device(Box::new(dev))?;
        }
        for slot in self.config.disk_slots.clone() {
            let (dev, handle) = virtio::block::Block::slot(&slot.serial);
            if let Some((path, read_only)) = &slot.disk {
                handle.fill(path, *read_only)?;
            }
            let index = self.virtio.len();
            self.add_virtio_device(Box::new(dev))?;
            self.disk_slots.push((index, handle));
        }
        if let Some(tap) = self.config.tap.clone() {
            let dev = virtio::net::Net::with_tap(&tap)?;
            self.add_virtio_device(Box::new(dev))?;
        }
        for n in self.config.net_fds.clone() {
            let dev = virtio::net::Net::with_inherited_fd(n.fd, n.mac)?;
            self.add_virtio_device(Box::new(dev))?;
        }
        if let Some(uds) = self.config.vsock_uds.clone() {
            let dev = virtio::vsock::Vsock::new(self.config.vsock_cid, &uds)?;
            self.add_virtio_device(Box::new(dev))?;
        }
        if self.config.rng {
            self.add_virtio_device(Box::new(virtio::rng::Rng::new()))?;
        }
        Ok(())
    }

    /// Puts a virtio device on the MMIO bus with its own window and IRQ (before start).
    pub fn add_virtio_device(
        &mut self,
        device: Box<dyn VirtioDevice>,
    ) -> Result<&VirtioSlot, BuildError> {
        let idx = self.virtio.len() as u64;
        let irq = layout::VIRTIO_IRQ_BASE + idx as u32;
        if irq > layout::VIRTIO_IRQ_MAX {
            return Err(BuildError::Config(
                "too many virtio devices for the legacy IRQs".into(),
            ));
        }
        let base = layout::VIRTIO_MMIO_START + idx * layout::VIRTIO_MMIO_SIZE;
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(sys("create virtio irq eventfd"))?;
        let notify =
            EventFd::new(libc::EFD_NONBLOCK).map_err(sys("create virtio notify eventfd"))?;
        self.pending_irqfds.push((
            irq_evt
                .try_clone()
                .map_err(sys("clone virtio irq eventfd"))?,
            irq,
        ));
        self.pending_ioevents.push((
            notify
                .try_clone()
                .map_err(sys("clone virtio notify eventfd"))?,
            base + reg::QUEUE_NOTIFY,
        ));
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            self.mem.clone(),
            device,
            irq_evt,
        )));
        transport.lock().expect("transport lock").set_notifier(
            notify
                .try_clone()
                .map_err(sys("clone virtio notify eventfd"))?,
        );

        self.mmio_bus
            .insert(transport.clone(), base, layout::VIRTIO_MMIO_SIZE)?;
        self.virtio.push(VirtioSlot {
            notify,
            transport,
            base,
            irq,
        });
        Ok(self.virtio.last().expect("just pushed"))
    }

    /// Registered virtio devices.
    pub fn virtio_devices(&self) -> &[VirtioSlot] {
        &self.virtio
    }

    fn full_cmdline(&mut self) -> Result<Cmdline, BuildError> {
        let mut cmdline = boot::build_cmdline(&self.config.cmdline)?;
        for slot in &self.virtio {
            cmdline
                .add_virtio_mmio_device(
                    layout::VIRTIO_MMIO_SIZE,
                    vm_memory::GuestAddress(slot.base),
                    slot.irq,
                    None,
                )
                .map_err(|e| boot::BootError::Cmdline(e.to_string()))?;
        }
        self.cmdline = cmdline
            .as_cstring()
            .map_err(|e| boot::BootError::Cmdline(e.to_string()))?
            .into_string()
            .unwrap_or_default();
        Ok(cmdline)
    }

    fn create_vcpus(&mut self) -> Result<(), BuildError> {
        let caps = Arc::new(SnapshotCaps::detect(self.vm.kvm()));
        for id in 0..self.config.vcpus {
            self.vcpus.push(Vcpu::new(
                self.vm.fd(),
                id,
                self.exit.clone(),
                caps.clone(),
            )?);
        }
        Ok(())
    }

    /// The port I/O bus (tests add devices here before start).
    pub fn io_bus_mut(&mut self) -> &mut Bus {
        &mut self.io_bus
    }

    /// The MMIO bus (tests add devices here before start).
    pub fn mmio_bus_mut(&mut self) -> &mut Bus {
        &mut self.mmio_bus
    }

    /// The KVM VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The configuration.
    pub fn config(&self) -> &VmResources {
        &self.config
    }

    /// The COM1 UART.
    pub fn serial(&self) -> &Arc<Mutex<SerialDevice>> {
        &self.serial
    }

    /// Starts the vCPU threads.
    pub fn start(&mut self) -> Result<(), BuildError> {
        let _span = tracing::info_span!("vm", id = %self.config.id).entered();
        let filter = if self.config.seccomp {
            Some(Arc::new(crate::seccomp::vcpu_filter()?))
        } else {
            None
        };
        let buses = Buses {
            io: Arc::new(self.io_bus.clone()),
            mmio: Arc::new(self.mmio_bus.clone()),
        };
        for vcpu in self.vcpus.drain(..) {
            self.handles
                .push(vcpu.start(buses.clone(), filter.clone())?);
        }
        debug!(vcpus = self.handles.len(), "vCPUs started");
        self.register_event_fds()
    }

    /// Registers the devices' irqfds and ioeventfds. Each registration waits for a kernel
    /// SRCU grace period (milliseconds on a busy host), so it happens while the guest already
    /// runs: KVM delivers an interrupt raised before its irqfd existed at registration, and a
    /// QueueNotify written before its ioeventfd existed reaches the transport, which forwards
    /// it to the same eventfd.
    fn register_event_fds(&mut self) -> Result<(), BuildError> {
        let kvm_err = |what: &'static str| {
            move |e: kvm_ioctls::Error| sys(what)(std::io::Error::from_raw_os_error(e.errno()))
        };
        for (evt, gsi) in self.pending_irqfds.drain(..) {
            self.vm
                .fd()
                .register_irqfd(&evt, gsi)
                .map_err(kvm_err("register irqfd"))?;
        }
        for (evt, addr) in self.pending_ioevents.drain(..) {
            self.vm
                .fd()
                .register_ioevent(
                    &evt,
                    &kvm_ioctls::IoEventAddress::Mmio(addr),
                    kvm_ioctls::NoDatamatch,
                )
                .map_err(kvm_err("register ioeventfd"))?;
        }
        Ok(())
    }

    /// Pauses every vCPU.
    pub fn pause(&mut self) -> Result<(), BuildError> {
        for h in &self.handles {
            h.request(VcpuEvent::Pause)?;
        }
        self.paused = true;
        Ok(())
    }

    /// Resumes every vCPU.
    pub fn resume(&mut self) -> Result<(), BuildError> {
        for h in &self.handles {
            h.request(VcpuEvent::Resume)?;
        }
        self.paused = false;
        Ok(())
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Puts the image or device at `path` into disk slot `slot` (replacing what it held) and
    /// tells the guest of its new capacity; returns that capacity in bytes.
    pub fn attach_disk(
        &mut self,
        slot: usize,
        path: &std::path::Path,
        read_only: bool,
    ) -> Result<u64, BuildError> {
        let (index, handle) = self.disk_slot(slot)?;
        let sectors = handle.fill(path, read_only)?;
        self.virtio[index]
            .transport
            .lock()
            .expect("transport lock")
            .config_changed();
        info!(slot, path = %path.display(), read_only, sectors, "disk attached to a slot");
        Ok(sectors * 512)
    }

    /// Empties disk slot `slot` (the guest sees size 0).
    pub fn detach_disk(&mut self, slot: usize) -> Result<(), BuildError> {
        let (index, handle) = self.disk_slot(slot)?;
        handle.empty();
        self.virtio[index]
            .transport
            .lock()
            .expect("transport lock")
            .config_changed();
        info!(slot, "disk slot emptied");
        Ok(())
    }

    fn disk_slot(&self, slot: usize) -> Result<(usize, virtio::block::SlotHandle), BuildError> {
        self.disk_slots.get(slot).cloned().ok_or_else(|| {
            BuildError::Config(format!(
                "no disk slot {slot} (the VM has {})",
                self.disk_slots.len()
            ))
        })
    }

    /// Saves vCPU, irqchip, PIT, device and memory state into `dir` (the VM must be paused).
    pub fn snapshot(&mut self, dir: &std::path::Path) -> Result<(), BuildError> {
        if !self.paused {
            return Err(BuildError::Config(
                "pause the VM before taking a snapshot".into(),
            ));
        }
        let vcpus = self
            .handles
            .iter()
            .map(VcpuHandle::save_state)
            .collect::<Result<Vec<_>, _>>()?;
        snapshot::save(dir, &self.snapshot_parts(), vcpus)?;
        Ok(())
    }

    /// Rebuilds a VM from a snapshot directory written by [`Vmm::snapshot`]: the devices
    /// `config` describes, the memory size and vCPU count of the snapshot. Its vCPUs do not
    /// run until [`Vmm::start`].
    pub fn restore(
        dir: &std::path::Path,
        mut config: VmResources,
        serial_out: Box<dyn Write + Send>,
    ) -> Result<Vmm, BuildError> {
        let state = snapshot::load(dir)?;
        config.mem_mib = state.mem_mib;
        config.vcpus = state.vcpu_count()?;
        let rebuild = |e| BuildError::Rebuild(Box::new(e));
        let mut vmm = Vmm::build_machine(config, serial_out).map_err(rebuild)?;
        vmm.create_vcpus().map_err(rebuild)?;
        state.restore(dir, &vmm.snapshot_parts(), &vmm.vcpus)?;
        Ok(vmm)
    }

    /// The parts whose state a snapshot holds.
    fn snapshot_parts(&self) -> VmParts<'_> {
        VmParts {
            vm: &self.vm,
            mem: &self.mem,
            serial: &self.serial,
            virtio: self.virtio.iter().map(|s| &*s.transport).collect(),
        }
    }

    /// Stops the vCPU threads.
    pub fn stop(&mut self) {
        for h in self.handles.drain(..) {
            h.finish();
        }
    }

    /// Runs the event loop until the guest resets or shuts down, a VMM error happens, or
    /// `timeout` passes (then `VmExit::Error`).
    pub fn run(&mut self, timeout: Option<Duration>) -> Result<VmExit, BuildError> {
        let _span = tracing::info_span!("vm", id = %self.config.id).entered();
        if self.handles.is_empty() && !self.vcpus.is_empty() {
            self.start()?;
        }
        let epoll = Epoll::new().map_err(sys("create epoll"))?;
        const EXIT: u64 = u64::MAX;
        const STDIN: u64 = u64::MAX - 1;
        const API: u64 = u64::MAX - 2;
        let add = |fd: RawFd, data: u64, set: EventSet| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(set, data))
                .map_err(sys("add fd to epoll"))
        };
        add(self.exit.evt().as_raw_fd(), EXIT, EventSet::IN)?;
        if self.config.stdin {
            // stdin may be a file or /dev/null, which epoll refuses: then there is no input.
            if add(libc::STDIN_FILENO, STDIN, EventSet::IN).is_err() {
                debug!("stdin cannot be polled; serial input disabled");
            }
        }
        if let Some(api) = &self.api {
            add(api.listener_fd(), API, EventSet::IN)?;
        }
        // Host-side fds of virtio devices, keyed (device index << 32 | fd).
        let mut watched: Vec<(u64, RawFd)> = Vec::new();
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            self.sync_device_fds(&epoll, &mut watched)?;
            let wait_ms = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.stop();
                        return Ok(VmExit::Error(format!(
                            "guest did not finish within {:?}",
                            timeout.unwrap_or_default()
                        )));
                    }
                    left.as_millis().min(i32::MAX as u128) as i32
                }
                None => -1,
            };
            let n = match epoll.wait(wait_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(sys("wait on epoll")(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    EXIT => {
                        let _ = self.exit.evt().read();
                        let why = self.exit.reason();
                        info!(reason = ?why, "VM exit");
                        self.stop();
                        return Ok(why);
                    }
                    STDIN => {
                        let mut buf = [0u8; 64];
                        // SAFETY: reading into a stack buffer of the length passed.
                        let r = unsafe {
                            libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len())
                        };
                        if r <= 0 {
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                libc::STDIN_FILENO,
                                EpollEvent::default(),
                            );
                        } else {
                            self.serial
                                .lock()
                                .expect("serial lock")
                                .enqueue_input(&buf[..r as usize]);
                        }
                    }
                    API => {
                        if let Some(api) = &mut self.api {
                            if let Some(fd) = api.accept() {
                                add(fd, API - 1 - fd as u64, EventSet::IN)?;
                            }
                        }
                    }
                    data if data >= API - 1 - (i32::MAX as u64) && data < API => {
                        let fd = (API - 1 - data) as RawFd;
                        self.handle_api_client(fd, &epoll);
                    }
                    data => {
                        let idx = (data >> 32) as usize;
                        let fd = data as u32 as RawFd;
                        if let Some(slot) = self.virtio.get(idx) {
                            if fd == slot.notify.as_raw_fd() {
                                let _ = slot.notify.read();
                                let mut t = slot.transport.lock().expect("transport lock");
                                t.notify_all_queues();
                                continue;
                            }
                            let set = ev.event_set();
                            slot.transport
                                .lock()
                                .expect("transport lock")
                                .process_host_event(
                                    fd,
                                    set.contains(EventSet::IN) || set.contains(EventSet::HANG_UP),
                                    set.contains(EventSet::OUT),
                                );
                        }
                    }
                }
            }
        }
    }

    fn sync_device_fds(
        &self,
        epoll: &Epoll,
        watched: &mut Vec<(u64, RawFd)>,
    ) -> Result<(), BuildError> {
        let mut want: Vec<(u64, RawFd, EventSet)> = Vec::new();
        for (i, slot) in self.virtio.iter().enumerate() {
            let fd = slot.notify.as_raw_fd();
            want.push((((i as u64) << 32) | fd as u32 as u64, fd, EventSet::IN));
            for (fd, out) in slot.transport.lock().expect("transport lock").host_fds() {
                let set = if out {
                    EventSet::IN | EventSet::OUT
                } else {
                    EventSet::IN
                };
                want.push((((i as u64) << 32) | fd as u32 as u64, fd, set));
            }
        }
        watched.retain(|(key, fd)| {
            if want.iter().any(|(k, _, _)| k == key) {
                true
            } else {
                let _ = epoll.ctl(ControlOperation::Delete, *fd, EpollEvent::default());
                false
            }
        });
        for (key, fd, set) in want {
            let ev = EpollEvent::new(set, key);
            if watched.iter().any(|(k, _)| *k == key) {
                // The fd number may belong to a new file now (a closed vsock stream's number
                // reused), which epoll no longer knows: add it again.
                if epoll.ctl(ControlOperation::Modify, fd, ev).is_err()
                    && epoll.ctl(ControlOperation::Add, fd, ev).is_err()
                {
                    warn!(fd, "cannot watch device fd");
                }
            } else if epoll.ctl(ControlOperation::Add, fd, ev).is_ok() {
                watched.push((key, fd));
            } else {
                warn!(fd, "cannot watch device fd");
            }
        }
        Ok(())
    }

    fn handle_api_client(&mut self, fd: RawFd, epoll: &Epoll) {
        let Some(api) = self.api.as_mut() else { return };
        match api.read_request(fd) {
            crate::api::ClientRead::Requests(reqs) => {
                for req in reqs {
                    let resp = self.handle_api_request(req);
                    if let Some(api) = self.api.as_mut() {
                        api.respond(fd, &resp);
                    }
                }
            }
            crate::api::ClientRead::Pending => {}
            crate::api::ClientRead::Closed => {
                let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                api.close(fd);
            }
        }
    }

    fn handle_api_request(&mut self, req: crate::api::Request) -> crate::api::Response {
        use crate::api::{Request, Response};
        let res = match req {
            Request::Pause => self.pause(),
            Request::Resume => self.resume(),
            Request::Snapshot { dir } => self.snapshot(std::path::Path::new(&dir)),
            Request::AttachDisk {
                slot,
                path,
                read_only,
            } => self
                .attach_disk(slot, std::path::Path::new(&path), read_only)
                .map(|_| ()),
            Request::DetachDisk { slot } => self.detach_disk(slot),
            Request::Status => Ok(()),
        };
        match res {
            Ok(()) => Response::ok(if self.paused { "paused" } else { "running" }),
            Err(e) => Response::error(e.to_string()),
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_config_parses_ro() {
        assert_eq!(
            "a.img,ro".parse::<BlockConfig>().unwrap(),
            BlockConfig {
                serial: None,
                path: "a.img".into(),
                read_only: true
            }
        );
        assert!(!"a.img".parse::<BlockConfig>().unwrap().read_only);
        assert!("a.img,xx".parse::<BlockConfig>().is_err());
        assert!(",ro".parse::<BlockConfig>().is_err());
    }

    #[test]
    fn block_config_parses_a_serial_in_any_order_and_refuses_a_long_one() {
        let want = BlockConfig {
            path: "/dev/loop0".into(),
            read_only: true,
            serial: Some("hull-disk-0".into()),
        };
        for s in [
            "/dev/loop0,ro,serial=hull-disk-0",
            "/dev/loop0,serial=hull-disk-0,ro",
        ] {
            assert_eq!(s.parse::<BlockConfig>().unwrap(), want, "{s}");
        }
        // A comma ends the path: what follows is an option.
        assert!("/a,b.img,serial=x".parse::<BlockConfig>().is_err());
        let e = "a.img,serial=123456789012345678901"
            .parse::<BlockConfig>()
            .unwrap_err();
        assert_eq!(
            e,
            "block serial \"123456789012345678901\" is longer than 20 bytes"
        );
    }

    #[test]
    fn slot_config_parses_an_empty_or_filled_slot() {
        assert_eq!(
            "hull-slot-0".parse::<SlotConfig>().unwrap(),
            SlotConfig {
                serial: "hull-slot-0".into(),
                disk: None
            }
        );
        assert_eq!(
            "hull-slot-1,file=/p/c.img,ro"
                .parse::<SlotConfig>()
                .unwrap(),
            SlotConfig {
                serial: "hull-slot-1".into(),
                disk: Some(("/p/c.img".into(), true))
            }
        );
        for bad in ["", "123456789012345678901", "s,ro", "s,file=", "s,rw"] {
            assert!(bad.parse::<SlotConfig>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn net_fd_config_parses_the_fd_and_the_mac() {
        assert_eq!(
            "7,mac=02:68:75:6c:00:01".parse::<NetFdConfig>().unwrap(),
            NetFdConfig {
                fd: 7,
                mac: Some([0x02, 0x68, 0x75, 0x6c, 0x00, 0x01])
            }
        );
        assert_eq!(
            "12".parse::<NetFdConfig>().unwrap(),
            NetFdConfig { fd: 12, mac: None }
        );
        for bad in [
            "",
            "x",
            "1",
            "-3",
            "7,mac=02:68:75:6c:00",
            "7,mac=02:68:75:6c:00:01:02",
            "7,mac=02:68:75:6c:00:zz",
            "7,mac=2:68:75:6c:00:01",
            "7,ro",
        ] {
            assert!(bad.parse::<NetFdConfig>().is_err(), "{bad:?} accepted");
        }
    }
}
