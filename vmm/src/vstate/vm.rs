//! The KVM VM: memory slots, in-kernel irqchip (PIC + IOAPIC) and PIT, irqfd/ioeventfd, and
//! the snapshot state of those in-kernel devices and kvmclock ([`KvmVmState`]).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::KVM_TSS_ADDRESS;

/// Errors while setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm ({0}): this host needs KVM (hardware virtualization) and access to /dev/kvm")]
    OpenKvm(kvm_ioctls::Error),
    /// /dev/kvm does not answer KVM ioctls.
    #[error(
        "/dev/kvm does not answer KVM_GET_API_VERSION: it is not a usable KVM device on this host"
    )]
    NotKvm,
    /// The KVM API version is not 12.
    #[error("unsupported KVM API version {0}, expected 12")]
    ApiVersion(i32),
    /// A KVM capability hull needs is missing.
    #[error("KVM lacks the capability {0:?} that hull-vmm needs")]
    MissingCap(kvm_ioctls::Cap),
    /// A VM ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// What was attempted.
        what: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
}

/// What KVM holds for the VM itself (not its vCPUs) that a snapshot needs.
pub struct KvmVmState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

/// The in-kernel irqchip's chips, by KVM chip id: PIC master, PIC slave, IOAPIC.
const IRQCHIP_IDS: [u32; 3] = [0, 1, 2];

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A KVM VM with its memory registered.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm, checks the capabilities used and creates an empty VM.
    pub fn new() -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version < 0 {
            return Err(VmError::NotKvm);
        }
        if version != 12 {
            return Err(VmError::ApiVersion(version));
        }
        for cap in [
            kvm_ioctls::Cap::Irqchip,
            kvm_ioctls::Cap::Ioeventfd,
            kvm_ioctls::Cap::Irqfd,
            kvm_ioctls::Cap::UserMemory,
            kvm_ioctls::Cap::SetTssAddr,
            kvm_ioctls::Cap::Pit2,
            kvm_ioctls::Cap::ImmediateExit,
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(cap));
            }
        }
        let fd = kvm.create_vm().map_err(|source| VmError::Kvm {
            what: "create VM",
            source,
        })?;
        Ok(Vm { kvm, fd })
    }

    /// Creates the in-kernel irqchip (PIC + IOAPIC + LAPICs), the PIT and KVM's TSS. Call after
    /// [`Vm::register_memory`] and before creating vCPUs.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        let fd = &self.fd;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|source| VmError::Kvm {
                what: "set TSS address",
                source,
            })?;
        fd.create_irq_chip().map_err(|source| VmError::Kvm {
            what: "create in-kernel irqchip",
            source,
        })?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(|source| VmError::Kvm {
            what: "create in-kernel PIT",
            source,
        })?;
        Ok(())
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::Kvm {
                    what: "find host address of guest memory",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which
            // the VMM keeps alive (it is cloned into every device and the Vmm) for as long as
            // the VM exists.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| VmError::Kvm {
                what: "register guest memory",
                source,
            })?;
        }
        Ok(())
    }

    /// Reads the irqchip, PIT and kvmclock state (while the vCPUs do not run).
    pub fn save_state(&self) -> Result<KvmVmState, VmError> {
        let mut irqchips = Vec::new();
        for chip_id in IRQCHIP_IDS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(kvm_err("read irqchip state"))?;
            irqchips.push(chip);
        }
        let pit = self.fd.get_pit2().map_err(kvm_err("read PIT state"))?;
        let mut clock = self.fd.get_clock().map_err(kvm_err("read kvmclock"))?;
        // Only the clock value is restorable; flags describe the host's clock source.
        clock.flags = 0;
        Ok(KvmVmState {
            irqchips,
            pit,
            clock,
        })
    }

    /// Loads a state written by [`Vm::save_state`]; call before restoring the vCPUs, whose
    /// LAPICs KVM routes through the irqchip.
    pub fn restore_state(&self, s: &KvmVmState) -> Result<(), VmError> {
        for chip in &s.irqchips {
            self.fd
                .set_irqchip(chip)
                .map_err(kvm_err("restore irqchip state"))?;
        }
        self.fd
            .set_pit2(&s.pit)
            .map_err(kvm_err("restore PIT state"))?;
        self.fd
            .set_clock(&s.clock)
            .map_err(kvm_err("restore kvmclock"))?;
        Ok(())
    }

    /// The /dev/kvm handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Option<Vm> {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("SKIP: /dev/kvm does not exist on this host (no KVM)");
            return None;
        }
        let vm = Vm::new().unwrap();
        vm.setup_irqchip().unwrap();
        Some(vm)
    }

    fn pic_imr(chip: &kvm_irqchip) -> u8 {
        // SAFETY: chip ids 0 and 1 are the PICs, whose state KVM reads and writes as `pic`.
        unsafe { chip.chip.pic.imr }
    }

    #[test]
    fn irqchip_pit_and_clock_state_round_trip() {
        let Some(a) = vm() else { return };
        let mut s = a.save_state().unwrap();
        assert_eq!(
            s.irqchips.iter().map(|c| c.chip_id).collect::<Vec<_>>(),
            IRQCHIP_IDS
        );
        assert_eq!(s.clock.flags, 0);
        // Chip 1 is the PIC slave; writing a union field is safe, reading it back is not.
        s.irqchips[1].chip.pic.imr = 0x5a;
        s.pit.channels[2].count = 0x1234;

        let Some(b) = vm() else { return };
        b.restore_state(&s).unwrap();
        let back = b.save_state().unwrap();
        assert_eq!(pic_imr(&back.irqchips[1]), 0x5a);
        assert_eq!(back.pit.channels[2].count, 0x1234);
    }
}
