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

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use hull_agent_client::BlockDevice;
use hull_hypervisor::Disk;
use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::VmPod;
use crate::error::{Error, Result};

/// Where the locks that keep a device to one pod live.
const LOCK_DIR: &str = "/run/hull/devices";

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
    /// Held while the pod runs: no second pod gets the device.
    _lock: File,
}

/// A block device of a spec.
#[derive(Debug)]
struct Wanted {
    container_path: String,
    number: (i64, i64),
    read_only: bool,
}

/// The spec's block devices; an error for a character device the guest cannot provide.
fn wanted(id: &str, spec: &Spec) -> Result<Vec<Wanted>> {
    let Some(linux) = spec.linux() else {
        return Ok(Vec::new());
    };
    let rules = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
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
                    container_path: path,
                    number,
                    read_only: !writable,
                });
            }
            LinuxDeviceType::C | LinuxDeviceType::U if GUEST_CHAR_DEVICES.contains(&number) => {}
            t => {
                return Err(Error::invalid(format!(
                    "container {id}: device {path} ({t:?} {}:{}) cannot be given to a vm pod: \
                     only block devices and the guest's own character devices (null, zero, \
                     random, tty, fuse, net/tun, kvm) pass into its VM",
                    number.0, number.1
                )))
            }
        }
    }
    Ok(out)
}

/// The host's node of block device `major:minor`.
fn host_node(number: (i64, i64)) -> Option<PathBuf> {
    let uevent =
        fs::read_to_string(format!("/sys/dev/block/{}:{}/uevent", number.0, number.1)).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    let node = Path::new("/dev").join(name);
    node.exists().then_some(node)
}

/// Takes the device `number` for this pod, or says which pod-less reason it cannot.
fn lock(number: (i64, i64), host: &Path, path: &str) -> Result<File> {
    fs::create_dir_all(LOCK_DIR).map_err(|e| Error::io(LOCK_DIR, e))?;
    let p = Path::new(LOCK_DIR).join(format!("{}_{}", number.0, number.1));
    let f = File::create(&p).map_err(|e| Error::io(&p, e))?;
    // SAFETY: flock(2) on a descriptor `f` owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::invalid(format!(
            "device {path} ({}, {}:{}) is in use by another vm pod",
            host.display(),
            number.0,
            number.1
        )));
    }
    Ok(f)
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

    /// What the agent needs to give container `id` its block devices: the pod's disks the
    /// VM booted with, and, for a device the VM did not boot with, an empty disk slot filled
    /// now (taken for this pod, freed with the container: [`Self::release_slots`]).
    pub(super) fn disks_for(&self, id: &str, spec: &Spec) -> Result<Vec<BlockDevice>> {
        let wanted = wanted(id, spec)?;
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let result = (|| {
            for w in &wanted {
                let mut g = self.inner.lock();
                let vm = g
                    .vm
                    .as_mut()
                    .ok_or_else(|| Error::Vm(format!("pod {}: its vm is not running", self.id)))?;
                if let Some(i) = vm.disks.iter().position(|d| d.number == w.number) {
                    out.push(BlockDevice {
                        serial: hull_hypervisor::disk_serial(i),
                        container_path: w.container_path.clone(),
                        ..Default::default()
                    });
                    continue;
                }
                // Another container of the pod has it in a slot already: the same disk.
                if let Some(slot) = vm
                    .slots
                    .iter()
                    .position(|x| x.as_ref().is_some_and(|(_, d)| d.number == w.number))
                {
                    // Slots are attached read-write (see QEMU's attach_disk); each
                    // container's own device rule decides what it may do.
                    if let Some((users, _)) = vm.slots[slot].as_mut() {
                        users.push(id.to_string());
                    }
                    out.push(BlockDevice {
                        serial: hull_hypervisor::disk_slot_serial(slot),
                        container_path: w.container_path.clone(),
                        ..Default::default()
                    });
                    continue;
                }
                let slot = vm.slots.iter().position(Option::is_none).ok_or_else(|| {
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
                        },
                    )
                    .map_err(|e| {
                        super::vm_err(format!("add {} to the pod's vm", disk.host.display()), e)
                    })?;
                vm.slots[slot] = Some((vec![id.to_string()], disk));
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
            let last = match vm.slots[slot].as_mut() {
                Some((users, _)) if users.iter().any(|u| u == id) => {
                    users.retain(|u| u != id);
                    users.is_empty()
                }
                _ => false,
            };
            if last {
                if let Err(e) = vm.hv.detach_disk(slot) {
                    tracing::warn!(pod = %self.id, container = %id, slot, "empty a disk slot: {e}");
                }
                vm.slots[slot] = None;
            }
        }
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
    let lock = lock(w.number, &host, &w.container_path)?;
    Ok(PodDisk {
        host,
        number: w.number,
        read_only: w.read_only,
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
