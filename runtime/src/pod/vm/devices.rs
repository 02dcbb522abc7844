//! Host devices in a vm pod's specs. A block device (`linux.devices` type `b`: a disk, a
//! partition, a loop device, an LVM volume) becomes a virtio-blk disk of the pod's VM, backed
//! by the host's node (cold-plugged: the VM boots with the first container's devices), read-only
//! when the spec's device cgroup rules do not allow writing; the agent finds the disk by its
//! serial and gives the container a node with the guest's numbers. A device is held by one pod
//! at a time (an exclusive lock under `/run/hull/devices`). Character devices the guest kernel
//! provides itself (`/dev/null`, `/dev/fuse`, `/dev/net/tun`, `/dev/kvm`, ...) are made from
//! its own drivers; any other host character device is refused with one line naming it: a
//! node with the host's numbers would point at nothing in the guest. A block device of a
//! container created after the VM started (CRI's app containers) fills one of the VM's empty
//! disk slots (`[vm] disk_slots`): microvm has no hotplug, a slot's disk is swapped in.
//!
//! Host PCI devices bound to `vfio-pci` are passed through to the VM at boot (VFIO, on
//! microvm's PCIe bus), named as Kata takes them: a VFIO group node `/dev/vfio/N` in the
//! first container's `linux.devices` (every device of IOMMU group N), or PCI addresses in its
//! [`VFIO_ANNOTATION`]. The guest's own driver binds each device (Kata's `guest-kernel` mode);
//! the group nodes, which mean nothing in the guest, are taken out of the guest's spec. A
//! group is held by one pod at a time. Without an IOMMU on the host this is refused, saying so.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use hull_agent_client::BlockDevice;
use hull_hypervisor::{detect, Disk};
use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::VmPod;
use crate::error::{Error, Result};

/// Where the locks that keep a device to one pod live.
const LOCK_DIR: &str = "/run/hull/devices";

/// The annotation naming host PCI devices (bound to vfio-pci) to pass through to a vm pod's
/// VM, by address, separated by commas: `0000:01:00.0,0000:02:00.0` (`01:00.0` is domain 0).
pub const VFIO_ANNOTATION: &str = "io.hull.vfio";
/// The annotation naming block devices (by the host's node or the container's path,
/// separated by commas) that this pod may hold together with other pods that name them too:
/// a cluster filesystem, a disk every pod only reads. Any other device is one pod's at a time.
pub const SHARED_ANNOTATION: &str = "io.hull.shared-devices";
/// The annotation saying how a passed-through PCI device is used in the guest (Kata's
/// `vfio_mode`): `guest-kernel` (the default: the guest's driver binds it).
pub const VFIO_MODE_ANNOTATION: &str = "io.hull.vfio-mode";
/// VFIO's container node, `/dev/vfio/vfio` (misc 10:196): asked for beside group nodes.
const VFIO_CONTAINER_NODE: (i64, i64) = (10, 196);
/// PCI class of a PCI-to-PCI bridge (the upper 16 bits of `class`): a group's bridges are
/// not passed, as Kata does not.
const PCI_CLASS_BRIDGE_PCI: u32 = 0x0604;

/// Character devices a Linux guest provides with the same numbers as the host.
const GUEST_CHAR_DEVICES: &[(i64, i64)] = &[
    (1, 3),    // null
    (1, 5),    // zero
    (1, 7),    // full
    (1, 8),    // random
    (1, 9),    // urandom
    (5, 0),    // tty
    (5, 1),    // console
    (5, 2),    // ptmx
    (10, 200), // net/tun
    (10, 229), // fuse
    (10, 232), // kvm (where the guest has nested virtualization)
];

/// A host block device given to the pod's VM as a disk.
pub(super) struct PodDisk {
    /// The host's node.
    pub host: PathBuf,
    /// The host's major:minor.
    pub number: (i64, i64),
    /// Only reads are allowed.
    pub read_only: bool,
    /// Other pods may hold it too ([`SHARED_ANNOTATION`]).
    pub shared: bool,
    /// Held while the pod runs: no second pod gets the device.
    _lock: File,
}

/// What fills one of the VM's disk slots.
pub(super) enum Slot {
    /// Nothing: the guest sees a disk of size 0.
    Empty,
    /// A host block device, and the containers of the pod that use it.
    Device {
        /// The containers using it.
        users: Vec<String>,
        /// The device.
        disk: PodDisk,
    },
    /// A container's rootfs image (`[vm] rootfs = "disk"`), removed with the container.
    Rootfs {
        /// The container.
        container: String,
        /// The image file.
        image: PathBuf,
    },
}

impl super::Vm {
    /// The first empty disk slot.
    pub(super) fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| matches!(s, Slot::Empty))
    }
}

/// A host PCI device passed through to the pod's VM.
pub(super) struct PodPci {
    /// Its PCI address (`0000:01:00.0`).
    pub address: String,
    /// Its IOMMU group.
    pub group: String,
    /// Held while the pod runs (one per group): no second pod gets the group.
    _lock: std::sync::Arc<File>,
}

/// A block device of a spec.
#[derive(Debug)]
struct Wanted {
    container_path: String,
    number: (i64, i64),
    read_only: bool,
    /// Named in [`SHARED_ANNOTATION`]: other pods that share it may hold it too.
    shared: bool,
}

/// A VFIO group node of a spec (`/dev/vfio/N`), and its group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WantedGroup {
    container_path: String,
    group: String,
}

/// The name under /dev of the host's `kind` (`block`, `char`) device `major:minor`, from
/// its uevent in sysfs.
fn devname(kind: &str, number: (i64, i64)) -> Option<String> {
    let uevent =
        fs::read_to_string(format!("/sys/dev/{kind}/{}:{}/uevent", number.0, number.1)).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
}

/// The IOMMU group a character device of a spec is the VFIO node of: the host's node with
/// those numbers is `/dev/vfio/N`, or (no such node) the spec's path is.
fn vfio_group(path: &str, number: (i64, i64)) -> Option<String> {
    let devname = devname("char", number);
    let name = match &devname {
        Some(n) => n.strip_prefix("vfio/")?,
        None => path.strip_prefix("/dev/vfio/")?,
    };
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())).then(|| name.to_string())
}

/// Whether a character device of a spec is VFIO's (a group node, or the container node).
fn is_vfio(path: &str, number: (i64, i64)) -> bool {
    number == VFIO_CONTAINER_NODE || path == "/dev/vfio/vfio" || vfio_group(path, number).is_some()
}

/// The spec's VFIO group nodes (`/dev/vfio/N`).
fn wanted_groups(spec: &Spec) -> Vec<WantedGroup> {
    let devices = spec.linux().as_ref().and_then(|l| l.devices().clone());
    devices
        .iter()
        .flatten()
        .filter(|d| d.typ() == LinuxDeviceType::C)
        .filter_map(|d| {
            let path = d.path().display().to_string();
            vfio_group(&path, (d.major(), d.minor())).map(|group| WantedGroup {
                container_path: path,
                group,
            })
        })
        .collect()
}

/// The spec's block devices; an error for a character device the guest cannot provide.
/// VFIO's nodes are the PCI devices' business (`wanted_groups`).
fn wanted(id: &str, spec: &Spec) -> Result<Vec<Wanted>> {
    let Some(linux) = spec.linux() else {
        return Ok(Vec::new());
    };
    let rules = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .unwrap_or_default();
    let shared: Vec<String> = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(SHARED_ANNOTATION))
        .map(|v| {
            v.split([',', ' '])
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for d in linux.devices().iter().flatten() {
        let number = (d.major(), d.minor());
        let path = d.path().display().to_string();
        match d.typ() {
            LinuxDeviceType::B => {
                // The last matching rule decides, as the device cgroup does.
                let writable = rules
                    .iter()
                    .rfind(|r| {
                        matches!(
                            r.typ(),
                            None | Some(LinuxDeviceType::A | LinuxDeviceType::B)
                        ) && r.major().is_none_or(|m| m == number.0)
                            && r.minor().is_none_or(|m| m == number.1)
                            && r.access().as_deref().unwrap_or("rwm").contains('w')
                    })
                    .is_some_and(|r| r.allow());
                out.push(Wanted {
                    number,
                    read_only: !writable,
                    // By container path, else by host node (looked up only when any is named).
                    shared: shared.contains(&path)
                        || (!shared.is_empty()
                            && host_node(number)
                                .is_some_and(|n| shared.iter().any(|s| Path::new(s) == n))),
                    container_path: path,
                });
            }
            LinuxDeviceType::C | LinuxDeviceType::U if GUEST_CHAR_DEVICES.contains(&number) => {}
            LinuxDeviceType::C if is_vfio(&path, number) => {}
            t => {
                return Err(Error::invalid(format!(
                    "container {id}: device {path} ({t:?} {}:{}) cannot be given to a vm pod: \
                     only block devices, VFIO groups (/dev/vfio/N) and the guest's own \
                     character devices (null, zero, random, tty, fuse, net/tun, kvm) pass \
                     into its VM",
                    number.0, number.1
                )))
            }
        }
    }
    Ok(out)
}

/// The host's node of block device `major:minor`.
fn host_node(number: (i64, i64)) -> Option<PathBuf> {
    let node = Path::new("/dev").join(devname("block", number)?);
    node.exists().then_some(node)
}

/// Takes the block device `number` for this pod (`shared`: with other pods that share it),
/// or says that another pod has it.
fn lock(number: (i64, i64), host: &Path, path: &str, shared: bool) -> Result<File> {
    try_lock(&format!("{}_{}", number.0, number.1), shared)?.ok_or_else(|| {
        let how = if shared {
            "and does not share it".to_string()
        } else {
            format!("(pods may share it when each names it in {SHARED_ANNOTATION})")
        };
        Error::invalid(format!(
            "device {path} ({}, {}:{}) is in use by another vm pod {how}",
            host.display(),
            number.0,
            number.1
        ))
    })
}

/// Takes lock `name` under [`LOCK_DIR`] for this pod, exclusive or `shared`, without
/// waiting: `None` when another pod holds it.
fn try_lock(name: &str, shared: bool) -> Result<Option<File>> {
    fs::create_dir_all(LOCK_DIR).map_err(|e| Error::io(LOCK_DIR, e))?;
    let p = Path::new(LOCK_DIR).join(name);
    let f = File::create(&p).map_err(|e| Error::io(&p, e))?;
    let mode = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock(2) on a descriptor `f` owns.
    let taken = unsafe { libc::flock(f.as_raw_fd(), mode | libc::LOCK_NB) } == 0;
    Ok(taken.then_some(f))
}

impl VmPod {
    /// The first container's block devices, each checked and taken for this pod: the disks
    /// its VM boots with.
    pub(super) fn claim_disks(&self, spec: &Spec) -> Result<Vec<PodDisk>> {
        wanted(&self.id, spec)?
            .iter()
            .map(|w| claim(&self.id, w))
            .collect()
    }

    /// The first container's PCI devices to pass through, each checked and taken for this
    /// pod: the VFIO devices its VM boots with.
    pub(super) fn claim_pci(&self, spec: &Spec) -> Result<Vec<PodPci>> {
        claim_pci(&self.id, spec, Path::new("/sys"))
    }

    /// Errors unless every PCI device container `id`'s spec passes through is one the pod's
    /// VM booted with: microvm has no PCI hotplug.
    pub(super) fn check_pci_for(&self, id: &str, spec: &Spec) -> Result<()> {
        let wanted = wanted_pci(id, spec, Path::new("/sys"))?;
        let g = self.inner.lock();
        let booted: Vec<&str> =
            g.vm.iter()
                .flat_map(|vm| vm.pci.iter().map(|p| p.address.as_str()))
                .collect();
        match wanted.iter().find(|(a, _)| !booted.contains(&a.as_str())) {
            None => Ok(()),
            Some((address, group)) => Err(Error::invalid(format!(
                "container {id}: pci device {address} (IOMMU group {group}) cannot be added to \
                 the running vm of pod {}: PCI devices pass through at boot only; name them on \
                 the pod's first container (its sandbox), or in its {VFIO_ANNOTATION} annotation",
                self.id
            ))),
        }
    }

    /// What the agent needs to give container `id` its block devices: the pod's disks the
    /// VM booted with, and, for a device the VM did not boot with, an empty disk slot filled
    /// now (taken for this pod, freed with the container: [`Self::release_slots`]).
    pub(super) fn disks_for(&self, id: &str, spec: &Spec) -> Result<Vec<BlockDevice>> {
        let wanted = wanted(id, spec)?;
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let result =
            (|| {
                for w in &wanted {
                    let mut g = self.inner.lock();
                    let vm = g.vm.as_mut().ok_or_else(|| {
                        Error::Vm(format!("pod {}: its vm is not running", self.id))
                    })?;
                    if let Some(i) = vm.disks.iter().position(|d| d.number == w.number) {
                        out.push(BlockDevice {
                            serial: hull_hypervisor::disk_serial(i),
                            container_path: w.container_path.clone(),
                            ..Default::default()
                        });
                        continue;
                    }
                    // Another container of the pod has it in a slot already: the same disk.
                    if let Some(slot) = vm.slots.iter().position(
                        |x| matches!(x, Slot::Device { disk, .. } if disk.number == w.number),
                    ) {
                        // Slots are attached read-write (see QEMU's attach_disk); each
                        // container's own device rule decides what it may do.
                        if let Slot::Device { users, .. } = &mut vm.slots[slot] {
                            users.push(id.to_string());
                        }
                        out.push(BlockDevice {
                            serial: hull_hypervisor::disk_slot_serial(slot),
                            container_path: w.container_path.clone(),
                            ..Default::default()
                        });
                        continue;
                    }
                    let slot = vm.free_slot().ok_or_else(|| {
                        Error::invalid(format!(
                        "container {id}: block device {} ({}:{}): the pod's VM has no free disk \
                         slot left ([vm] disk_slots = {})",
                        w.container_path,
                        w.number.0,
                        w.number.1,
                        vm.slots.len()
                    ))
                    })?;
                    let disk = claim(&self.id, w)?;
                    vm.hv
                        .attach_disk(
                            slot,
                            &Disk {
                                path: disk.host.clone(),
                                read_only: disk.read_only,
                                shared: false,
                            },
                        )
                        .map_err(|e| {
                            super::vm_err(format!("add {} to the pod's vm", disk.host.display()), e)
                        })?;
                    vm.slots[slot] = Slot::Device {
                        users: vec![id.to_string()],
                        disk,
                    };
                    out.push(BlockDevice {
                        serial: hull_hypervisor::disk_slot_serial(slot),
                        container_path: w.container_path.clone(),
                        ..Default::default()
                    });
                }
                Ok(())
            })();
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                self.release_slots(id);
                Err(e)
            }
        }
    }

    /// Lets go of the disk slots container `id` used; a slot no container uses any more is
    /// emptied and its device freed.
    pub(super) fn release_slots(&self, id: &str) {
        let mut g = self.inner.lock();
        let Some(vm) = g.vm.as_mut() else {
            return;
        };
        for slot in 0..vm.slots.len() {
            let last = match &mut vm.slots[slot] {
                Slot::Device { users, .. } if users.iter().any(|u| u == id) => {
                    users.retain(|u| u != id);
                    users.is_empty()
                }
                Slot::Rootfs { container, .. } => container == id,
                _ => false,
            };
            if last {
                if let Err(e) = vm.hv.detach_disk(slot) {
                    tracing::warn!(pod = %self.id, container = %id, slot, "empty a disk slot: {e}");
                }
                if let Slot::Rootfs { image, .. } =
                    std::mem::replace(&mut vm.slots[slot], Slot::Empty)
                {
                    let _ = fs::remove_file(&image);
                }
            }
        }
    }
}

/// What a spec asks to pass through with VFIO: the PCI devices of its group nodes and its
/// [`VFIO_ANNOTATION`], each resolved under `sys` (normally `/sys`) to (address, group) and
/// checked bound to vfio-pci; an error naming the device otherwise, or saying the host has
/// no IOMMU.
fn wanted_pci(id: &str, spec: &Spec, sys: &Path) -> Result<Vec<(String, String)>> {
    let groups = wanted_groups(spec);
    let annotations = spec.annotations().clone().unwrap_or_default();
    let addresses: Vec<String> = annotations
        .get(VFIO_ANNOTATION)
        .map(|v| {
            v.split([',', ' '])
                .filter(|a| !a.is_empty())
                .map(|a| match a.matches(':').count() {
                    1 => format!("0000:{a}"),
                    _ => a.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if groups.is_empty() && addresses.is_empty() {
        return Ok(Vec::new());
    }
    match annotations.get(VFIO_MODE_ANNOTATION).map(String::as_str) {
        None | Some("guest-kernel") => {}
        Some("vfio") => {
            return Err(Error::invalid(format!(
                "container {id}: {VFIO_MODE_ANNOTATION}=vfio is not supported: hull's guest has \
                 no virtual IOMMU to bind the device to vfio-pci in the VM; use guest-kernel \
                 (the guest's own driver binds the device)"
            )))
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "container {id}: {VFIO_MODE_ANNOTATION}={other:?} is not one of \"guest-kernel\", \
                 \"vfio\""
            )))
        }
    }
    let iommu_groups = sys.join("kernel/iommu_groups");
    let has_iommu = fs::read_dir(&iommu_groups).is_ok_and(|mut d| d.next().is_some());
    if !has_iommu {
        let what = groups
            .iter()
            .map(|g| g.container_path.clone())
            .chain(addresses.iter().map(|a| format!("pci device {a}")))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::invalid(format!(
            "container {id}: {what}: VFIO pass-through needs an IOMMU and this host has none \
             ({} is empty): turn on VT-d / AMD-Vi in the firmware and boot with intel_iommu=on \
             or amd_iommu=on",
            iommu_groups.display()
        )));
    }
    let pci = sys.join("bus/pci/devices");
    let bound = |what: &str, addr: &str| -> Result<()> {
        match detect::pci_driver(&pci.join(addr)).as_deref() {
            Some("vfio-pci") => Ok(()),
            other => Err(Error::invalid(format!(
                "container {id}: {what}: pci device {addr} is bound to {}, not vfio-pci: bind \
                 it first (echo vfio-pci > {dev}/driver_override; echo {addr} > \
                 {dev}/driver/unbind; echo {addr} > {probe})",
                other.unwrap_or("no driver"),
                dev = pci.join(addr).display(),
                probe = sys.join("bus/pci/drivers_probe").display(),
            ))),
        }
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for g in &groups {
        let dir = iommu_groups.join(&g.group).join("devices");
        let mut members: Vec<String> = fs::read_dir(&dir)
            .map_err(|e| {
                Error::invalid(format!(
                    "container {id}: device {}: IOMMU group {}: {}: {e}",
                    g.container_path,
                    g.group,
                    dir.display()
                ))
            })?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        members.sort();
        let mut passed = 0;
        for addr in members {
            let class = fs::read_to_string(pci.join(&addr).join("class")).unwrap_or_default();
            let class = u32::from_str_radix(class.trim().trim_start_matches("0x"), 16).unwrap_or(0);
            if class >> 8 == PCI_CLASS_BRIDGE_PCI {
                continue;
            }
            bound(&format!("device {}", g.container_path), &addr)?;
            passed += 1;
            if !out.iter().any(|(a, _)| *a == addr) {
                out.push((addr, g.group.clone()));
            }
        }
        if passed == 0 {
            return Err(Error::invalid(format!(
                "container {id}: device {}: IOMMU group {} has no PCI device to pass through",
                g.container_path, g.group
            )));
        }
    }
    for addr in &addresses {
        let what = format!("{VFIO_ANNOTATION} {addr}");
        if !pci.join(addr).exists() {
            return Err(Error::invalid(format!(
                "container {id}: {what}: no such PCI device on the host"
            )));
        }
        let group =
            detect::sysfs_link_name(&pci.join(addr).join("iommu_group")).ok_or_else(|| {
                Error::invalid(format!(
                    "container {id}: {what}: the device is in no IOMMU group"
                ))
            })?;
        bound(&what, addr)?;
        if !out.iter().any(|(a, _)| a == addr) {
            out.push((addr.clone(), group));
        }
    }
    Ok(out)
}

/// Takes the PCI devices `spec` passes through for pod `pod`: one lock per IOMMU group.
fn claim_pci(pod: &str, spec: &Spec, sys: &Path) -> Result<Vec<PodPci>> {
    let wanted = wanted_pci(pod, spec, sys)?;
    let mut locks: Vec<(String, std::sync::Arc<File>)> = Vec::new();
    let mut out = Vec::new();
    for (address, group) in wanted {
        let lock = match locks.iter().find(|(g, _)| *g == group) {
            Some((_, l)) => l.clone(),
            None => {
                let l = try_lock(&format!("vfio-group-{group}"), false)?.ok_or_else(|| {
                    Error::invalid(format!(
                        "pod {pod}: pci device {address} (IOMMU group {group}) is in use by \
                         another vm pod"
                    ))
                })?;
                let l = std::sync::Arc::new(l);
                locks.push((group.clone(), l.clone()));
                l
            }
        };
        out.push(PodPci {
            address,
            group,
            _lock: lock,
        });
    }
    Ok(out)
}

/// Takes the spec's VFIO group nodes out of it (and the device cgroup rules naming them, and
/// VFIO's container node): they mean nothing in the guest, whose own drivers have the devices.
pub(super) fn strip_vfio_nodes(spec: &mut Spec) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let mut removed = Vec::new();
    if let Some(devices) = linux.devices().clone() {
        let (vfio, kept): (Vec<_>, Vec<_>) = devices.into_iter().partition(|d| {
            d.typ() == LinuxDeviceType::C
                && is_vfio(&d.path().display().to_string(), (d.major(), d.minor()))
        });
        removed.extend(vfio.iter().map(|d| (d.major(), d.minor())));
        linux.set_devices(Some(kept));
    }
    if removed.is_empty() {
        return;
    }
    if let Some(rules) = linux
        .resources_mut()
        .as_mut()
        .and_then(|r| r.devices_mut().as_mut())
    {
        rules.retain(|r| {
            !(r.allow()
                && r.typ() == Some(LinuxDeviceType::C)
                && removed
                    .iter()
                    .any(|n| r.major() == Some(n.0) && r.minor() == Some(n.1)))
        });
    }
}

/// Checks and takes a device for pod `pod`.
fn claim(pod: &str, w: &Wanted) -> Result<PodDisk> {
    let host = host_node(w.number).ok_or_else(|| {
        Error::invalid(format!(
            "pod {pod}: device {} ({}:{}): no such block device on the host",
            w.container_path, w.number.0, w.number.1
        ))
    })?;
    let lock = lock(w.number, &host, &w.container_path, w.shared)?;
    Ok(PodDisk {
        host,
        number: w.number,
        read_only: w.read_only,
        shared: w.shared,
        _lock: lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn block_devices_are_wanted_read_only_unless_a_rule_allows_writes() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{
                "devices":[{"path":"/dev/a","type":"b","major":7,"minor":1},
                           {"path":"/dev/b","type":"b","major":7,"minor":2},
                           {"path":"/dev/null","type":"c","major":1,"minor":3}],
                "resources":{"devices":[{"allow":false,"access":"rwm"},
                    {"allow":true,"type":"b","major":7,"minor":1,"access":"rwm"},
                    {"allow":true,"type":"b","major":7,"minor":2,"access":"r"}]}}}"#,
        );
        let w = wanted("c", &s).unwrap();
        assert_eq!(w.len(), 2, "null is the guest's own");
        assert!(!w[0].read_only);
        assert!(w[1].read_only);
    }

    /// A fake sysfs: IOMMU groups of PCI devices (address, group, class, driver).
    fn sysfs(devices: &[(&str, &str, &str, Option<&str>)]) -> tempfile::TempDir {
        let sys = tempfile::tempdir().unwrap();
        let root = sys.path();
        fs::create_dir_all(root.join("kernel/iommu_groups")).unwrap();
        for (addr, group, class, driver) in devices {
            let dev = root.join("bus/pci/devices").join(addr);
            fs::create_dir_all(&dev).unwrap();
            fs::write(dev.join("class"), format!("{class}\n")).unwrap();
            let g = root.join("kernel/iommu_groups").join(group);
            fs::create_dir_all(g.join("devices")).unwrap();
            std::os::unix::fs::symlink(&dev, g.join("devices").join(addr)).unwrap();
            std::os::unix::fs::symlink(&g, dev.join("iommu_group")).unwrap();
            if let Some(d) = driver {
                let drv = root.join("bus/pci/drivers").join(d);
                fs::create_dir_all(&drv).unwrap();
                std::os::unix::fs::symlink(&drv, dev.join("driver")).unwrap();
            }
        }
        sys
    }

    fn vfio_spec(devices: &str, annotations: &str) -> Spec {
        spec(&format!(
            r#"{{"ociVersion":"1.0.2","annotations":{{{annotations}}},
                "linux":{{"devices":[{devices}],
                "resources":{{"devices":[{{"allow":true,"type":"c","major":511,"minor":0,"access":"rw"}},
                                         {{"allow":true,"type":"c","major":1,"minor":3,"access":"rw"}}]}}}}}}"#
        ))
    }

    const GROUP_3: &str = r#"{"path":"/dev/vfio/3","type":"c","major":511,"minor":0},
                             {"path":"/dev/vfio/vfio","type":"c","major":10,"minor":196}"#;

    #[test]
    fn a_vfio_group_node_passes_every_device_of_its_group_but_bridges() {
        let sys = sysfs(&[
            ("0000:00:03.0", "3", "0x010802", Some("vfio-pci")),
            ("0000:00:03.1", "3", "0x060400", Some("pcieport")),
            ("0000:00:04.0", "4", "0x020000", Some("vfio-pci")),
        ]);
        let s = vfio_spec(GROUP_3, "");
        assert!(
            wanted("c", &s).unwrap().is_empty(),
            "vfio nodes are not refused"
        );
        assert_eq!(
            wanted_pci("c", &s, sys.path()).unwrap(),
            vec![("0000:00:03.0".to_string(), "3".to_string())]
        );
        // By annotation, short addresses are domain 0; one device is passed once.
        let s = vfio_spec(GROUP_3, r#""io.hull.vfio":"00:04.0, 0000:00:03.0""#);
        assert_eq!(
            wanted_pci("c", &s, sys.path()).unwrap(),
            vec![
                ("0000:00:03.0".to_string(), "3".to_string()),
                ("0000:00:04.0".to_string(), "4".to_string())
            ]
        );
    }

    #[test]
    fn vfio_is_refused_with_one_line_naming_why() {
        let err = |s: &Spec, sys: &Path| {
            let e = wanted_pci("c", s, sys).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        let none = tempfile::tempdir().unwrap();
        let e = err(&vfio_spec(GROUP_3, ""), none.path());
        assert!(
            e.contains("/dev/vfio/3") && e.contains("needs an IOMMU"),
            "{e}"
        );
        let sys = sysfs(&[
            ("0000:00:03.0", "3", "0x010802", Some("nvme")),
            ("0000:00:05.0", "5", "0x010802", None),
        ]);
        let e = err(&vfio_spec(GROUP_3, ""), sys.path());
        assert!(
            e.contains("0000:00:03.0 is bound to nvme, not vfio-pci"),
            "{e}"
        );
        let e = err(
            &vfio_spec("", r#""io.hull.vfio":"0000:00:05.0""#),
            sys.path(),
        );
        assert!(e.contains("bound to no driver"), "{e}");
        let e = err(
            &vfio_spec("", r#""io.hull.vfio":"0000:07:00.0""#),
            sys.path(),
        );
        assert!(e.contains("0000:07:00.0: no such PCI device"), "{e}");
        let mode = r#""io.hull.vfio":"0000:00:05.0","io.hull.vfio-mode":"vfio""#;
        let e = err(&vfio_spec("", mode), sys.path());
        assert!(e.contains("io.hull.vfio-mode=vfio is not supported"), "{e}");
    }

    #[test]
    fn vfio_nodes_and_their_rules_leave_the_guests_spec() {
        let mut s = vfio_spec(GROUP_3, "");
        strip_vfio_nodes(&mut s);
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.devices().as_ref().unwrap().is_empty());
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(rules.len(), 1, "only /dev/null's rule stays: {rules:?}");
        assert_eq!(rules[0].major(), Some(1));
    }

    #[test]
    fn a_host_character_device_is_refused_naming_it() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{
                "devices":[{"path":"/dev/ttyS9","type":"c","major":4,"minor":73}]}}"#,
        );
        let e = wanted("c", &s).unwrap_err().to_string();
        assert!(
            e.contains("/dev/ttyS9") && e.contains("4:73") && !e.contains('\n'),
            "{e}"
        );
    }
}
