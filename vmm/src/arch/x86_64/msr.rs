//! Model-specific registers set on every vCPU at boot.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// Errors while setting MSRs.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// The MSR list could not be built.
    #[error("cannot build MSR list: {0:?}")]
    Build(vmm_sys_util::fam::Error),
    /// KVM refused the MSRs.
    #[error("cannot set MSRs of vCPU: {0}")]
    Set(kvm_ioctls::Error),
    /// KVM set fewer MSRs than asked.
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    Partial {
        /// How many were set.
        set: usize,
        /// How many were asked.
        wanted: usize,
    },
}

/// `IA32_SYSENTER_CS`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `STAR`.
pub const MSR_STAR: u32 = 0xc000_0081;
/// `LSTAR`.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `CSTAR`.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `SYSCALL_MASK`.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `KERNEL_GS_BASE`.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// `IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_TSC_DEADLINE`: restored after the LAPIC (KVM drops it unless the LAPIC timer is in
/// TSC-deadline mode).
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// `IA32_MISC_ENABLE`.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MISC_ENABLE.FAST_STRING`.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;

/// MSRs saved in snapshots besides the boot ones, where KVM supports them: PAT, MTRR default
/// type, TSC deadline and adjust, TSC_AUX, and the KVM paravirtual clock, async-PF, steal-time
/// and PV-EOI MSRs (old and new numbers).
pub const SNAPSHOT_EXTRA_MSRS: &[u32] = &[
    0x277, // IA32_PAT
    0x2ff, // MTRRdefType
    MSR_IA32_TSC_DEADLINE,
    0x3b,        // IA32_TSC_ADJUST
    0xc000_0103, // TSC_AUX
    0x11,        // MSR_KVM_WALL_CLOCK
    0x12,        // MSR_KVM_SYSTEM_TIME
    0x4b56_4d00, // MSR_KVM_WALL_CLOCK_NEW
    0x4b56_4d01, // MSR_KVM_SYSTEM_TIME_NEW
    0x4b56_4d02, // MSR_KVM_ASYNC_PF_EN
    0x4b56_4d03, // MSR_KVM_STEAL_TIME
    0x4b56_4d04, // MSR_KVM_PV_EOI_EN
];

/// The MSRs set at boot and saved in snapshots.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    ]
}

/// Sets `entries` on `vcpu`, failing unless all of them were taken.
pub fn set_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), MsrError> {
    let msrs = Msrs::from_entries(entries).map_err(MsrError::Build)?;
    let set = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    if set != entries.len() {
        return Err(MsrError::Partial {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// Sets the boot MSRs.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    set_msrs(vcpu, &boot_msr_entries())
}
