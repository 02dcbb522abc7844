//! CPUID the guest sees: what KVM supports, with per-vCPU topology fixed up.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

/// Errors while setting CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("cannot read the CPUID KVM supports: {0}")]
    Supported(kvm_ioctls::Error),
    /// KVM_SET_CPUID2 failed.
    #[error("cannot set CPUID of vCPU {id}: {source}")]
    Set {
        /// vCPU index.
        id: u8,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const ECX_HYPERVISOR_BIT: u32 = 31;
const ECX_TSC_DEADLINE_BIT: u32 = 24;
const EDX_HTT_BIT: u32 = 28;

/// The CPUID KVM supports on this host.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)
}

/// Fixes `cpuid` up for vCPU `id` of `count`: APIC ids, logical count, hypervisor bit.
pub fn filter_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    for entry in cpuid.as_mut_slice().iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processor count.
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                entry.ecx |= 1 << ECX_HYPERVISOR_BIT;
                entry.ecx |= 1 << ECX_TSC_DEADLINE_BIT;
                if count > 1 {
                    entry.edx |= 1 << EDX_HTT_BIT;
                } else {
                    entry.edx &= !(1 << EDX_HTT_BIT);
                }
            }
            LEAF_EXT_TOPOLOGY => {
                // x2APIC id of this vCPU; one thread per core.
                entry.edx = u32::from(id);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 0x100;
                    }
                    1 => {
                        entry.eax = 8;
                        entry.ebx = u32::from(count);
                        entry.ecx = 0x201;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            _ => {}
        }
    }
}

/// Sets the filtered CPUID on `vcpu`.
pub fn setup_cpuid(vcpu: &VcpuFd, base: &CpuId, id: u8, count: u8) -> Result<(), CpuidError> {
    let mut cpuid = base.clone();
    filter_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid)
        .map_err(|source| CpuidError::Set { id, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn leaf1_gets_apic_id_and_hypervisor_bit() {
        let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xffff_ffff,
            ..Default::default()
        }])
        .unwrap();
        filter_cpuid(&mut cpuid, 3, 4);
        let e = cpuid.as_slice()[0];
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & (1 << ECX_HYPERVISOR_BIT), 0);
        assert_ne!(e.edx & (1 << EDX_HTT_BIT), 0);
    }
}
