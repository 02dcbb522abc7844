//! What each backend can do, as implemented now, and what a VM needs of it. Callers decide
//! from [`Capabilities`], never from a backend's name: a new capability is a flag here, a
//! method on the `Hypervisor` trait, and an agent call, in that order.

use std::fmt;

use crate::error::{HypervisorError, Result};

/// A hypervisor backend (what `hypervisor = "auto"` resolves to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// QEMU's `microvm` machine (KVM or TCG).
    Qemu,
    /// hull's own VMM (`hull-vmm`), hardware KVM only.
    Builtin,
}

impl Backend {
    /// Every backend, in the order `auto` considers them.
    pub const ALL: [Backend; 2] = [Backend::Builtin, Backend::Qemu];

    /// The name the config uses (`hypervisor = "qemu"`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
            Backend::Builtin => "builtin",
        }
    }

    /// Errors ([`HypervisorError::Lacks`]) when this backend lacks something `needs` asks,
    /// naming a backend that has it.
    pub(crate) fn check_covers(self, needs: &Needs) -> Result<()> {
        let Some(missing) = self.capabilities().lacks(needs) else {
            return Ok(());
        };
        let fix = Backend::ALL
            .into_iter()
            .find(|b| b.capabilities().lacks(needs).is_none())
            .map(|b| format!("; use hypervisor = \"{b}\""))
            .unwrap_or_default();
        Err(HypervisorError::Lacks {
            backend: self,
            missing,
            fix,
        })
    }

    /// What this backend can do.
    pub fn capabilities(self) -> Capabilities {
        match self {
            Backend::Qemu => Capabilities {
                shared_fs: &[SharedFs::Virtio9p],
                pause: true,
                snapshot: true,
                templates: true,
                stops_by_guest_power_off: false,
                block: DeviceSupport::COLD_AND_SLOTS,
                nic: DeviceSupport::COLD,
                vfio: DeviceSupport::COLD,
            },
            Backend::Builtin => Capabilities {
                shared_fs: &[],
                pause: true,
                snapshot: true,
                templates: true,
                stops_by_guest_power_off: true,
                block: DeviceSupport::COLD_AND_SLOTS,
                nic: DeviceSupport::COLD,
                vfio: DeviceSupport::NONE,
            },
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A way to share a host directory with the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedFs {
    /// virtio-9p (the guest mounts it with `-t 9p -o trans=virtio`).
    Virtio9p,
}

impl fmt::Display for SharedFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SharedFs::Virtio9p => "virtio-9p",
        })
    }
}

/// Whether a kind of device can be given to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSupport {
    /// At boot (cold plug).
    pub cold: bool,
    /// To a running VM (hot plug).
    pub hot: bool,
}

impl DeviceSupport {
    /// Neither at boot nor to a running VM.
    pub const NONE: DeviceSupport = DeviceSupport {
        cold: false,
        hot: false,
    };
    /// At boot only (microvm and hull-vmm have no hotplug).
    pub const COLD: DeviceSupport = DeviceSupport {
        cold: true,
        hot: false,
    };
    /// At boot, and into a running VM's empty slots made at boot.
    pub const COLD_AND_SLOTS: DeviceSupport = DeviceSupport {
        cold: true,
        hot: true,
    };
}

/// What a backend can do, as implemented now (nothing is claimed that is not wired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The kinds of shared filesystem it gives the guest (`VmConfig::shares`); empty: none.
    pub shared_fs: &'static [SharedFs],
    /// Freezes and thaws the guest's vCPUs (`Hypervisor::pause`, `resume`).
    pub pause: bool,
    /// Saves a running VM's state (`Hypervisor::snapshot`).
    pub snapshot: bool,
    /// Starts VMs from a saved template of a booted guest (`VmConfig::template_dir`); without
    /// it every VM boots.
    pub templates: bool,
    /// The clean end of this VM is the guest powering itself off (hull-vmm has no other): ask
    /// the agent for it (`DestroySandbox` with `power_off`), then `Hypervisor::stop(true)`.
    pub stops_by_guest_power_off: bool,
    /// Block devices: virtio-blk disks on host block devices or image files
    /// (`VmConfig::disks`).
    pub block: DeviceSupport,
    /// Network interfaces: virtio-net NICs on host taps (`VmConfig::nics`).
    pub nic: DeviceSupport,
    /// Host PCI devices passed through with VFIO (`VmConfig::pci_devices`).
    pub vfio: DeviceSupport,
}

impl Capabilities {
    /// The first thing `needs` asks that these capabilities do not cover.
    pub fn lacks(&self, needs: &Needs) -> Option<Missing> {
        match needs.shared_fs {
            Some(kind) if !self.shared_fs.contains(&kind) => return Some(Missing::SharedFs(kind)),
            _ => {}
        }
        if needs.nics > 0 && !self.nic.cold {
            return Some(Missing::Nics);
        }
        if needs.disks > 0 && !self.block.cold {
            return Some(Missing::Disks);
        }
        if needs.disk_slots > 0 && !self.block.hot {
            return Some(Missing::DiskSlots);
        }
        (needs.pci_devices > 0 && !self.vfio.cold).then_some(Missing::Vfio)
    }
}

/// What a VM needs of its backend (see `VmConfig::needs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// A shared filesystem of this kind (the VM shares host directories).
    pub shared_fs: Option<SharedFs>,
    /// This many NICs at boot (the pod's interfaces); 0: none.
    pub nics: usize,
    /// This many disks at boot (the pod's block devices); 0: none.
    pub disks: usize,
    /// This many empty disk slots filled while the VM runs (disk rootfs, devices of later
    /// containers); 0: none.
    pub disk_slots: usize,
    /// This many host PCI devices passed through with VFIO at boot; 0: none.
    pub pci_devices: usize,
}

/// A capability a VM needs and a backend lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No shared filesystem of this kind.
    SharedFs(SharedFs),
    /// No NICs at boot.
    Nics,
    /// No disks at boot.
    Disks,
    /// No disks added to a running VM.
    DiskSlots,
    /// No VFIO PCI pass-through at boot.
    Vfio,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::SharedFs(kind) => write!(f, "no shared filesystem ({kind})"),
            Missing::Nics => f.write_str("no network interfaces (virtio-net on a tap)"),
            Missing::Disks => f.write_str("no disks (virtio-blk)"),
            Missing::DiskSlots => f.write_str("no disks added while the vm runs (disk slots)"),
            Missing::Vfio => f.write_str("no PCI device pass-through (VFIO)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_need_a_backend_with_their_shared_filesystem() {
        let shares = Needs {
            shared_fs: Some(SharedFs::Virtio9p),
            ..Needs::default()
        };
        assert_eq!(Backend::Qemu.capabilities().lacks(&shares), None);
        let missing = Backend::Builtin.capabilities().lacks(&shares);
        assert_eq!(missing, Some(Missing::SharedFs(SharedFs::Virtio9p)));
        assert_eq!(
            missing.unwrap().to_string(),
            "no shared filesystem (virtio-9p)"
        );
        for b in Backend::ALL {
            assert_eq!(b.capabilities().lacks(&Needs::default()), None, "{b}");
        }
    }

    #[test]
    fn nics_need_a_backend_that_adds_them_at_boot() {
        let nics = Needs {
            nics: 2,
            ..Needs::default()
        };
        for b in Backend::ALL {
            assert_eq!(b.capabilities().lacks(&nics), None, "{b}");
        }
        let without = Capabilities {
            nic: DeviceSupport::NONE,
            ..Backend::Qemu.capabilities()
        };
        assert_eq!(without.lacks(&nics), Some(Missing::Nics));
        assert_eq!(
            Missing::Nics.to_string(),
            "no network interfaces (virtio-net on a tap)"
        );
        assert_eq!(without.lacks(&Needs::default()), None);
    }

    #[test]
    fn disks_need_a_backend_that_adds_them_at_boot() {
        let disks = Needs {
            disks: 2,
            ..Needs::default()
        };
        for b in Backend::ALL {
            assert_eq!(b.capabilities().lacks(&disks), None, "{b}");
        }
        let without = Capabilities {
            block: DeviceSupport::NONE,
            ..Backend::Qemu.capabilities()
        };
        assert_eq!(without.lacks(&disks), Some(Missing::Disks));
        assert_eq!(Missing::Disks.to_string(), "no disks (virtio-blk)");
        assert_eq!(without.lacks(&Needs::default()), None);
    }

    #[test]
    fn disk_slots_need_a_backend_that_fills_them_while_the_vm_runs() {
        let slots = Needs {
            disk_slots: 3,
            ..Needs::default()
        };
        for b in Backend::ALL {
            assert_eq!(b.capabilities().lacks(&slots), None, "{b}");
        }
        let cold_only = Capabilities {
            block: DeviceSupport::COLD,
            ..Backend::Builtin.capabilities()
        };
        assert_eq!(cold_only.lacks(&slots), Some(Missing::DiskSlots));
        assert_eq!(
            Missing::DiskSlots.to_string(),
            "no disks added while the vm runs (disk slots)"
        );
    }

    #[test]
    fn pci_devices_need_a_backend_with_vfio_at_boot() {
        let pci = Needs {
            pci_devices: 1,
            ..Needs::default()
        };
        assert_eq!(Backend::Qemu.capabilities().lacks(&pci), None);
        assert_eq!(
            Backend::Builtin.capabilities().lacks(&pci),
            Some(Missing::Vfio)
        );
        assert_eq!(
            Missing::Vfio.to_string(),
            "no PCI device pass-through (VFIO)"
        );
        let e = Backend::Builtin.check_covers(&pci).unwrap_err().to_string();
        assert!(e.contains("hypervisor = \"qemu\""), "{e}");
    }

    #[test]
    fn no_backend_claims_a_device_it_cannot_add_yet() {
        for b in Backend::ALL {
            let c = b.capabilities();
            // VFIO at boot on QEMU (a PCIe bus on microvm); hull-vmm has no PCI bus.
            let vfio = match b {
                Backend::Qemu => DeviceSupport::COLD,
                Backend::Builtin => DeviceSupport::NONE,
            };
            assert_eq!(c.vfio, vfio, "{b}");
            // NICs at boot only: microvm and hull-vmm have no hotplug. Disks at boot, and
            // into the empty slots a VM boots with (QEMU: a new backing node and a resize;
            // hull-vmm: a new backing and a configuration change).
            assert_eq!(c.nic, DeviceSupport::COLD, "{b}");
            assert_eq!(c.block, DeviceSupport::COLD_AND_SLOTS, "{b}");
            assert!(c.pause && c.snapshot && c.templates, "{b}");
        }
    }
}
