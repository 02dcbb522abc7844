//! Host probes: what this host can run VMs with, and why. `hull check` reports them, and
//! [`pick_backend`] (what `hypervisor = "auto"` resolves to) follows them.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use crate::capabilities::{Backend, Needs};
use crate::programs::{find_in_path, find_qemu, QEMU_BINARY};

/// The outcome of one probe, with the reason a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The capability is there.
    pub ok: bool,
    /// Why (what was found or missing, where).
    pub reason: String,
}

impl Probe {
    /// Found / possible, and why.
    pub fn yes(reason: impl Into<String>) -> Self {
        Probe {
            ok: true,
            reason: reason.into(),
        }
    }
    /// Missing / impossible, and why.
    pub fn no(reason: impl Into<String>) -> Self {
        Probe {
            ok: false,
            reason: reason.into(),
        }
    }
}

/// What `auto` picks, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoPick {
    /// The backend, or `None` when this host cannot run the VM.
    pub backend: Option<Backend>,
    /// Why.
    pub reason: String,
}

/// Everything `hull check` says about virtualization on this host.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// /dev/kvm exists and opens.
    pub kvm: Probe,
    /// KVM runs guest kernel code at hardware speed (a timed tiny guest).
    pub kvm_hardware: Probe,
    /// /dev/vhost-vsock, which a vsock agent channel under QEMU would need (its agent channel
    /// is virtio-serial today).
    pub vhost_vsock: Probe,
    /// An IOMMU with groups, for VFIO device pass-through.
    pub iommu: Probe,
    /// The IOMMU groups' PCI devices and their drivers; yes when one is bound to vfio-pci.
    pub vfio_devices: Probe,
    /// Host block devices passed to vm pods as disks (what the backends can do).
    pub block: Probe,
    /// The QEMU binary (`HULL_QEMU`, else qemu-system-x86_64 on PATH).
    pub qemu: Probe,
    /// The builtin backend (hull-vmm): what it can run, and whether it can here.
    pub builtin: Probe,
    /// virtiofsd, which virtio-fs shares would need (shares are virtio-9p today).
    pub virtiofsd: Probe,
    /// Pod networking for vm pods: /dev/net/tun opens, so a pod's interfaces can get taps.
    pub pod_networking: Probe,
    /// /dev/vhost-net, which would move NIC frames in the host kernel (QEMU's NICs run
    /// with vhost off: QEMU copies frames in user space).
    pub vhost_net: Probe,
    /// A built guest kernel in the cache.
    pub guest_kernel: Probe,
    /// A built guest initrd in the cache.
    pub guest_initrd: Probe,
}

/// How long the timed KVM guest may take before KVM counts as emulated.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// What the timed guest (65535 iterations of `loop`, then `hlt`: one KVM_RUN) takes on hardware
/// virtualization: `loop` costs ~5-7 cycles, so ~200 µs at 2 GHz, plus one VM entry and exit.
/// (Measured on an emulating nested KVM: ~0.7 µs per iteration, about 45 ms.)
pub const KVM_HARDWARE_REFERENCE: Duration = Duration::from_micros(250);
/// Slower than this many times the reference means the KVM is emulating guest kernel mode.
pub const KVM_EMULATED_FACTOR: u32 = 20;

impl HostReport {
    /// Runs every probe (the KVM timing takes at most [`KVM_PROBE_TIMEOUT`]).
    pub fn probe() -> Self {
        let kvm = probe_kvm(Path::new("/dev/kvm"));
        let kvm_hardware = if kvm.ok {
            classify_kvm_timing(time_kvm_guest(KVM_PROBE_TIMEOUT))
        } else {
            Probe::no("no usable /dev/kvm")
        };
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let qemu = match find_qemu() {
            Ok(p) => Probe::yes(format!("{}", p.display())),
            Err(_) => Probe::no(format!(
                "{QEMU_BINARY} not on PATH, nor at $HULL_QEMU (apt-get install qemu-system-x86)"
            )),
        };
        let virtiofsd = match find_in_path("virtiofsd", &path_var).or_else(|| {
            ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        }) {
            Some(p) => Probe::yes(format!("{}", p.display())),
            None => Probe::no("virtiofsd not found (shares use virtio-9p, which needs none)"),
        };
        let cache = cache_dir();
        let guest_kernel = match find_guest_kernel(&cache) {
            Some(p) => Probe::yes(format!("{}", p.display())),
            None => Probe::no(format!(
                "no kernel-*/vmlinux under {} (run guest-kernel/build.sh)",
                cache.display()
            )),
        };
        let guest_initrd = match find_guest_initrd(&cache) {
            Some(p) => Probe::yes(format!("{}", p.display())),
            None => Probe::no(format!(
                "no initrd-*.cpio under {} (run guest-kernel/initrd.sh)",
                cache.display()
            )),
        };
        let builtin = probe_builtin(
            &kvm_hardware,
            crate::programs::find_vmm_binary().filter(|p| p.is_file()),
        );
        HostReport {
            kvm,
            kvm_hardware,
            builtin,
            vhost_vsock: probe_device(
                Path::new("/dev/vhost-vsock"),
                "a vsock agent channel is possible (qemu's is virtio-serial)",
                "no vsock agent channel (qemu's is virtio-serial, which needs none)",
            ),
            iommu: probe_iommu(Path::new("/sys/kernel/iommu_groups")),
            vfio_devices: probe_vfio_devices(Path::new("/sys/kernel/iommu_groups")),
            block: probe_block(),
            qemu,
            virtiofsd,
            pod_networking: probe_tun(Path::new("/dev/net/tun")),
            vhost_net: probe_vhost_net(Path::new("/dev/vhost-net")),
            guest_kernel,
            guest_initrd,
        }
    }
}

/// Where guest artefacts are cached: `$HULL_CACHE`, else `~/.cache/hull`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HULL_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/hull")
}

/// The newest `kernel-*/vmlinux` in `cache`.
pub fn find_guest_kernel(cache: &Path) -> Option<PathBuf> {
    newest(
        cache,
        |name| name.starts_with("kernel-") && !name.contains('.'),
        Some("vmlinux"),
    )
}

/// The newest `initrd-*.cpio` in `cache`.
pub fn find_guest_initrd(cache: &Path) -> Option<PathBuf> {
    newest(
        cache,
        |name| name.starts_with("initrd-") && name.ends_with(".cpio"),
        None,
    )
}

fn newest(dir: &Path, matches: impl Fn(&str) -> bool, inner: Option<&str>) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| matches(&e.file_name().to_string_lossy()))
        .map(|e| match inner {
            Some(f) => e.path().join(f),
            None => e.path(),
        })
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

fn probe_kvm(dev: &Path) -> Probe {
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => Probe::yes(format!("{} opens", dev.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Probe::no(format!("{} does not exist", dev.display()))
        }
        Err(e) => Probe::no(format!("{}: {e}", dev.display())),
    }
}

fn probe_device(dev: &Path, yes: &str, no: &str) -> Probe {
    if dev.exists() {
        Probe::yes(format!("{} exists: {yes}", dev.display()))
    } else {
        Probe::no(format!("{} missing: {no}", dev.display()))
    }
}

/// Pod networking for vm pods needs taps: the tun device `dev` must open.
pub fn probe_tun(dev: &Path) -> Probe {
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => Probe::yes(format!(
            "{} opens: a vm pod's interfaces get taps, joined to the pod's veths by tc redirects",
            dev.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Probe::no(format!(
            "{} does not exist: vm pods cannot have network interfaces",
            dev.display()
        )),
        Err(e) => Probe::no(format!(
            "{}: {e}: vm pods cannot have network interfaces",
            dev.display()
        )),
    }
}

/// vhost-net (`dev`) would move NIC frames in the host kernel; hull's NICs do without it.
pub fn probe_vhost_net(dev: &Path) -> Probe {
    probe_device(
        dev,
        "NIC frames could move in the host kernel (hull's QEMU NICs run with vhost off)",
        "frames are copied by QEMU in user space",
    )
}

/// VFIO pass-through needs an IOMMU, visible as groups under /sys/kernel/iommu_groups.
pub fn probe_iommu(groups: &Path) -> Probe {
    match std::fs::read_dir(groups) {
        Ok(d) => {
            let n = d.count();
            if n > 0 {
                Probe::yes(format!(
                    "{n} IOMMU groups: VFIO device pass-through possible"
                ))
            } else {
                Probe::no(format!(
                    "{} is empty: no IOMMU, no VFIO pass-through",
                    groups.display()
                ))
            }
        }
        Err(e) => Probe::no(format!(
            "{}: {e}: no IOMMU, no VFIO pass-through",
            groups.display()
        )),
    }
}

/// The builtin backend: what its capabilities let it run (pods whose rootfs is on disks,
/// not a shared filesystem), and whether it runs here (hardware KVM, the hull-vmm binary).
pub fn probe_builtin(kvm_hardware: &Probe, vmm: Option<PathBuf>) -> Probe {
    let c = Backend::Builtin.capabilities();
    let can = if c.shared_fs.is_empty() && c.block.hot {
        "runs pods with rootfs = \"disk\" (NICs, disks, disk slots, templates, pause), \
         not rootfs = \"share\" (no shared filesystem) nor VFIO"
    } else {
        "runs pods"
    };
    match (kvm_hardware.ok, vmm) {
        (true, Some(p)) => Probe::yes(format!("{can}; here: {}", p.display())),
        (true, None) => Probe::no(format!(
            "{can}; here: no hull-vmm ($HULL_VMM, next to hull, or on PATH)"
        )),
        (false, _) => Probe::no(format!(
            "{can}; not here: KVM is not hardware-backed (a Linux guest cannot run on it)"
        )),
    }
}

/// Block passthrough as the backends implement it: virtio-blk disks at boot, and whether
/// any backend adds them to a running VM.
pub fn probe_block() -> Probe {
    let caps = Backend::ALL.map(|b| (b, b.capabilities().block));
    let names = |f: fn(&crate::DeviceSupport) -> bool| {
        let n: Vec<&str> = caps
            .iter()
            .filter(|(_, d)| f(d))
            .map(|(b, _)| b.name())
            .collect();
        match n.is_empty() {
            true => "no".to_string(),
            false => n.join(", "),
        }
    };
    let (cold, hot) = (names(|d| d.cold), names(|d| d.hot));
    let reason =
        format!("virtio-blk, cold-plugged at boot ({cold}); into empty slots while running: {hot}");
    match caps.iter().any(|(_, d)| d.cold) {
        true => Probe::yes(reason),
        false => Probe::no(reason),
    }
}

/// The PCI devices of each IOMMU group under `groups` and the driver each is bound to
/// The name a sysfs link points at (`.../drivers/vfio-pci` -> `vfio-pci`, an `iommu_group`
/// link -> its number); `None` without the link.
pub fn sysfs_link_name(link: &Path) -> Option<String> {
    std::fs::read_link(link)
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The driver bound to the PCI device whose sysfs directory is `device`, if any.
pub fn pci_driver(device: &Path) -> Option<String> {
    sysfs_link_name(&device.join("driver"))
}

/// (`group 3: 0000:01:00.0 vfio-pci, 0000:01:00.1 ahci`); yes when one is bound to
/// vfio-pci (ready to pass to a VM), `none` without groups.
pub fn probe_vfio_devices(groups: &Path) -> Probe {
    let Ok(dir) = std::fs::read_dir(groups) else {
        return Probe::no(format!("none ({} cannot be read)", groups.display()));
    };
    let mut listed: Vec<(u64, String)> = Vec::new();
    let mut bound = 0;
    for group in dir.flatten() {
        let name = group.file_name().to_string_lossy().into_owned();
        let mut devices: Vec<String> = std::fs::read_dir(group.path().join("devices"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| {
                let driver = pci_driver(&d.path()).unwrap_or_else(|| "no driver".into());
                bound += usize::from(driver == "vfio-pci");
                format!("{} {driver}", d.file_name().to_string_lossy())
            })
            .collect();
        devices.sort();
        listed.push((
            name.parse().unwrap_or(u64::MAX),
            format!("group {name}: {}", devices.join(", ")),
        ));
    }
    if listed.is_empty() {
        return Probe::no("none (no IOMMU groups)");
    }
    listed.sort();
    let groups: Vec<String> = listed.into_iter().map(|(_, g)| g).collect();
    let reason = format!("{bound} bound to vfio-pci; {}", groups.join("; "));
    match bound > 0 {
        true => Probe::yes(reason),
        false => Probe::no(reason),
    }
}

/// What `auto` picks for a VM that `needs` these: the first backend (builtin, then qemu)
/// whose capabilities cover them and that this host can run (builtin needs hardware KVM,
/// qemu its binary). The probes are asked only when they decide (the KVM probe is slow).
pub fn pick_backend(
    needs: &Needs,
    kvm_hardware: impl FnOnce() -> bool,
    qemu: impl FnOnce() -> bool,
) -> AutoPick {
    let builtin_lacks = Backend::Builtin.capabilities().lacks(needs);
    let hardware = builtin_lacks.is_none() && kvm_hardware();
    if hardware {
        return AutoPick {
            backend: Some(Backend::Builtin),
            reason: "KVM is hardware-backed: the built-in VMM".into(),
        };
    }
    let builtin_cannot = match builtin_lacks {
        Some(missing) => format!("builtin has {missing}"),
        None => "KVM is absent or not hardware-backed".into(),
    };
    if qemu() {
        AutoPick {
            backend: Some(Backend::Qemu),
            reason: builtin_cannot,
        }
    } else {
        AutoPick {
            backend: None,
            reason: format!("{builtin_cannot}, and no QEMU: vm isolation cannot run here"),
        }
    }
}

/// The outcome of timing the tiny KVM guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmTiming {
    /// The guest's KVM_RUN took this long.
    Ran(Duration),
    /// It did not halt within the bound.
    TimedOut(Duration),
    /// KVM refused (no permission, no support...).
    Failed(String),
}

/// Classifies a [`KvmTiming`] against [`KVM_HARDWARE_REFERENCE`] x [`KVM_EMULATED_FACTOR`].
pub fn classify_kvm_timing(t: KvmTiming) -> Probe {
    let limit = KVM_HARDWARE_REFERENCE * KVM_EMULATED_FACTOR;
    match t {
        KvmTiming::Ran(d) if d <= limit => Probe::yes(format!(
            "a tiny guest ran in {} µs (hardware takes about {} µs): KVM is hardware-backed",
            d.as_micros(),
            KVM_HARDWARE_REFERENCE.as_micros()
        )),
        KvmTiming::Ran(d) => Probe::no(format!(
            "a tiny guest took {} µs, {}x what hardware takes: KVM is not hardware-backed (emulated), \
             a real guest kernel cannot boot under it",
            d.as_micros(),
            d.as_micros() / KVM_HARDWARE_REFERENCE.as_micros().max(1)
        )),
        KvmTiming::TimedOut(b) => Probe::no(format!(
            "a tiny guest did not halt within {b:?}: KVM is not hardware-backed (emulated)"
        )),
        KvmTiming::Failed(e) => Probe::no(format!("KVM could not run a tiny guest: {e}")),
    }
}

/// Whether KVM is hardware-backed, probed once per process.
pub fn kvm_hardware_backed_cached() -> bool {
    static HW: OnceLock<bool> = OnceLock::new();
    *HW.get_or_init(|| {
        Path::new("/dev/kvm").exists() && classify_kvm_timing(time_kvm_guest(KVM_PROBE_TIMEOUT)).ok
    })
}

/// Runs a real-mode guest (`mov cx, 0xffff; loop $; hlt`) through raw KVM ioctls three times
/// and returns its fastest KVM_RUN (the first warms up the vCPU; the minimum discounts a busy
/// host), giving up after `timeout`.
pub fn time_kvm_guest(timeout: Duration) -> KvmTiming {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(run_tiny_guest());
        });
    if let Err(e) = spawned {
        return KvmTiming::Failed(format!("spawn probe thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(d)) => KvmTiming::Ran(d),
        Ok(Err(e)) => KvmTiming::Failed(e),
        // The thread finishes on its own once the guest halts; its result is dropped.
        Err(_) => KvmTiming::TimedOut(timeout),
    }
}

/// Anonymous, page-aligned guest memory, unmapped on drop.
struct GuestMem {
    addr: *mut libc::c_void,
    len: usize,
}

impl GuestMem {
    fn new(len: usize) -> std::result::Result<Self, String> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(GuestMem { addr, len })
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly what mmap returned; the VM using it is gone (it is
        // declared after this guard, so it is dropped first).
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn run_tiny_guest() -> std::result::Result<Duration, String> {
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuExit};

    const GUEST_ADDR: u64 = 0x1000;
    const MEM_LEN: usize = 0x1000;
    // mov cx, 0xffff ; l: loop l ; hlt
    const CODE: [u8; 6] = [0xb9, 0xff, 0xff, 0xe2, 0xfe, 0xf4];

    let mem = GuestMem::new(MEM_LEN)?;
    // SAFETY: `mem` is a fresh writable mapping of MEM_LEN >= CODE.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem.addr.cast::<u8>(), CODE.len()) };

    fn e(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> String {
        move |err| format!("{what}: {err}")
    }
    let kvm = Kvm::new().map_err(e("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(e("KVM_CREATE_VM"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: MEM_LEN as u64,
        userspace_addr: mem.addr as u64,
        flags: 0,
    };
    // SAFETY: the region maps `mem`, which stays mapped until after `vm` is dropped.
    unsafe { vm.set_user_memory_region(region) }.map_err(e("KVM_SET_USER_MEMORY_REGION"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(e("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(e("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(e("KVM_SET_SREGS"))?;

    let mut fastest = Duration::MAX;
    for round in 0..3 {
        let regs = kvm_bindings::kvm_regs {
            rip: GUEST_ADDR,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(e("KVM_SET_REGS"))?;
        let start = Instant::now();
        // The guest does no I/O: its only exit is the hlt.
        match vcpu.run().map_err(e("KVM_RUN"))? {
            VcpuExit::Hlt => {}
            other => return Err(format!("unexpected exit {other:?} in round {round}")),
        }
        fastest = fastest.min(start.elapsed());
    }
    Ok(fastest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn vfio_devices_lists_each_groups_devices_and_their_drivers() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let groups = d.path().join("iommu_groups");
        let none = probe_vfio_devices(&groups);
        assert!(!none.ok && none.reason.starts_with("none"), "{none:?}");
        std::fs::create_dir(&groups).unwrap();
        assert_eq!(
            probe_vfio_devices(&groups),
            Probe::no("none (no IOMMU groups)")
        );
        // As sysfs has them: groups/N/devices/ADDR -> the device, whose driver -> the driver.
        let (pci, drivers) = (d.path().join("pci"), d.path().join("drivers"));
        for (group, addr, driver) in [
            ("10", "0000:01:00.1", Some("ahci")),
            ("10", "0000:01:00.0", Some("vfio-pci")),
            ("2", "0000:00:02.0", None),
        ] {
            let dev = pci.join(addr);
            std::fs::create_dir_all(&dev).unwrap();
            if let Some(driver) = driver {
                std::fs::create_dir_all(drivers.join(driver)).unwrap();
                symlink(drivers.join(driver), dev.join("driver")).unwrap();
            }
            let devices = groups.join(group).join("devices");
            std::fs::create_dir_all(&devices).unwrap();
            symlink(&dev, devices.join(addr)).unwrap();
        }
        let p = probe_vfio_devices(&groups);
        assert!(p.ok, "{p:?}");
        assert_eq!(
            p.reason,
            "1 bound to vfio-pci; group 2: 0000:00:02.0 no driver; \
             group 10: 0000:01:00.0 vfio-pci, 0000:01:00.1 ahci"
        );
    }

    #[test]
    fn builtin_says_what_it_runs_and_why_not_here() {
        let hw = Probe::yes("fast");
        let p = probe_builtin(&hw, Some("/usr/bin/hull-vmm".into()));
        assert!(p.ok, "{p:?}");
        assert!(p.reason.contains("rootfs = \"disk\""), "{p:?}");
        assert!(p.reason.ends_with("here: /usr/bin/hull-vmm"), "{p:?}");
        let p = probe_builtin(&hw, None);
        assert!(!p.ok && p.reason.contains("no hull-vmm"), "{p:?}");
        let p = probe_builtin(&Probe::no("slow"), Some("/x".into()));
        assert!(
            !p.ok && p.reason.contains("KVM is not hardware-backed"),
            "{p:?}"
        );
    }

    #[test]
    fn block_passthrough_is_cold_plugged_and_slotted() {
        let p = probe_block();
        assert!(p.ok, "{p:?}");
        assert_eq!(
            p.reason,
            "virtio-blk, cold-plugged at boot (builtin, qemu); into empty slots while running: builtin, qemu"
        );
    }

    use super::*;

    #[test]
    fn fast_guest_is_hardware_slow_guest_is_emulated() {
        assert!(classify_kvm_timing(KvmTiming::Ran(Duration::from_micros(8))).ok);
        let slow = classify_kvm_timing(KvmTiming::Ran(Duration::from_millis(40)));
        assert!(!slow.ok);
        assert!(
            slow.reason.contains("not hardware-backed"),
            "{}",
            slow.reason
        );
        assert!(!classify_kvm_timing(KvmTiming::TimedOut(Duration::from_secs(2))).ok);
        assert!(!classify_kvm_timing(KvmTiming::Failed("EPERM".into())).ok);
    }

    #[test]
    fn auto_picks_by_capabilities_then_hardware_then_qemu() {
        let none = Needs::default();
        assert_eq!(
            pick_backend(&none, || true, || true).backend,
            Some(Backend::Builtin)
        );
        let tcg = pick_backend(&none, || false, || true);
        assert_eq!(tcg.backend, Some(Backend::Qemu));
        assert!(tcg.reason.contains("not hardware-backed"), "{}", tcg.reason);
        let nothing = pick_backend(&none, || false, || false);
        assert_eq!(nothing.backend, None);
        assert!(nothing.reason.contains("cannot run"));

        // A VM that shares directories: builtin has no shared filesystem, even on hardware
        // KVM, and the (slow) KVM probe is not even run for it.
        let shares = Needs {
            shared_fs: Some(crate::SharedFs::Virtio9p),
            ..Needs::default()
        };
        let pick = pick_backend(&shares, || panic!("probed KVM"), || true);
        assert_eq!(pick.backend, Some(Backend::Qemu));
        assert_eq!(pick.reason, "builtin has no shared filesystem (virtio-9p)");
        let nothing = pick_backend(&shares, || panic!("probed KVM"), || false);
        assert_eq!(nothing.backend, None);
        assert!(
            nothing.reason.contains("cannot run here"),
            "{}",
            nothing.reason
        );

        // A VM with NICs: both backends add them at boot, so it changes nothing.
        let nics = Needs {
            nics: 2,
            ..Needs::default()
        };
        assert_eq!(
            pick_backend(&nics, || true, || true).backend,
            Some(Backend::Builtin)
        );
    }

    #[test]
    fn pod_networking_needs_the_tun_device_and_vhost_net_is_optional() {
        let d = tempfile::tempdir().unwrap();
        let missing = probe_tun(&d.path().join("tun"));
        assert!(
            !missing.ok && missing.reason.contains("does not exist"),
            "{missing:?}"
        );
        let tun = probe_tun(Path::new("/dev/null"));
        assert!(tun.ok, "{tun:?}");
        assert!(tun.reason.contains("tc redirects"), "{tun:?}");
        let no_vhost = probe_vhost_net(&d.path().join("vhost-net"));
        assert!(!no_vhost.ok, "{no_vhost:?}");
        assert!(
            no_vhost.reason.contains("copied by QEMU in user space"),
            "{no_vhost:?}"
        );
        assert!(probe_vhost_net(d.path()).ok);
    }

    #[test]
    fn iommu_needs_groups() {
        let d = tempfile::tempdir().unwrap();
        assert!(!probe_iommu(d.path()).ok);
        std::fs::create_dir(d.path().join("0")).unwrap();
        let p = probe_iommu(d.path());
        assert!(p.ok, "{}", p.reason);
        assert!(!probe_iommu(&d.path().join("absent")).ok);
    }

    #[test]
    fn finds_the_newest_cached_artefacts() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(find_guest_kernel(d.path()), None);
        for k in ["kernel-aaaa", "kernel-bbbb", "kernel-cccc.tmp"] {
            std::fs::create_dir(d.path().join(k)).unwrap();
            std::fs::write(d.path().join(k).join("vmlinux"), k).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(d.path().join("initrd-1.cpio"), "").unwrap();
        std::fs::write(d.path().join("test-1.cpio"), "").unwrap();
        assert_eq!(
            find_guest_kernel(d.path()),
            Some(d.path().join("kernel-bbbb/vmlinux"))
        );
        assert_eq!(
            find_guest_initrd(d.path()),
            Some(d.path().join("initrd-1.cpio"))
        );
    }

    #[test]
    fn missing_kvm_device_says_so() {
        let p = probe_kvm(Path::new("/nonexistent/kvm"));
        assert!(!p.ok && p.reason.contains("does not exist"));
    }

    /// Every probe on this host, as `hull check` will show them: each has a reason, and the
    /// qemu probe finds what the qemu backend runs.
    #[test]
    fn host_report_is_consistent() {
        let start = Instant::now();
        let r = HostReport::probe();
        eprintln!("{r:#?}");
        assert!(start.elapsed() < KVM_PROBE_TIMEOUT + Duration::from_secs(2));
        for p in [
            &r.kvm,
            &r.kvm_hardware,
            &r.vhost_vsock,
            &r.iommu,
            &r.qemu,
            &r.virtiofsd,
            &r.pod_networking,
            &r.vhost_net,
            &r.guest_kernel,
            &r.guest_initrd,
        ] {
            assert!(!p.reason.is_empty());
        }
        assert_eq!(r.vhost_net.ok, Path::new("/dev/vhost-net").exists());
        assert_eq!(r.qemu.ok, find_qemu().is_ok());
        assert_eq!(r.vhost_vsock.ok, Path::new("/dev/vhost-vsock").exists());
        if !r.kvm.ok {
            assert!(!r.kvm_hardware.ok);
        }
    }

    /// The real probe on this host: bounded, and it gives a verdict with a reason.
    #[test]
    fn kvm_timing_probe_is_bounded() {
        if !Path::new("/dev/kvm").exists() {
            return;
        }
        let start = Instant::now();
        let t = time_kvm_guest(KVM_PROBE_TIMEOUT);
        assert!(start.elapsed() < KVM_PROBE_TIMEOUT + Duration::from_secs(1));
        let p = classify_kvm_timing(t.clone());
        eprintln!("kvm probe: {t:?} -> {p:?}");
        assert!(!p.reason.is_empty());
    }
}
