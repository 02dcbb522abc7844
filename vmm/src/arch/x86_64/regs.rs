//! Boot-time register state of a vCPU: general registers, segments, control registers, paging,
//! FPU. Two entry modes: 64-bit long mode (Linux boot protocol) and 32-bit protected mode
//! without paging (PVH).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{gdt_entry, kvm_segment_from_gdt};
use super::layout::*;

/// Errors while setting a vCPU's boot registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("cannot {what} of vCPU: {source}")]
    Kvm {
        /// The register class.
        what: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// Writing GDT, IDT or page tables to guest memory failed.
    #[error("cannot write boot {what} to guest memory: {source}")]
    Memory {
        /// What was written.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64 {
        /// Kernel entry point.
        entry: u64,
    },
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh {
        /// PVH entry point from the ELF note.
        entry: u64,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Sets the general purpose registers for `entry`.
pub fn setup_regs(vcpu: &VcpuFd, entry: BootEntry) -> Result<(), RegsError> {
    let regs = match entry {
        BootEntry::Linux64 { entry } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        BootEntry::Pvh { entry } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(|source| RegsError::Kvm {
        what: "set regs",
        source,
    })
}

/// Sets the x87/SSE state to its power-on defaults.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "set fpu",
        source,
    })
}

/// Writes GDT and IDT to guest memory and sets segment, control registers and (for 64-bit
/// entry) identity-mapped page tables.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    entry: BootEntry,
) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(|source| RegsError::Kvm {
        what: "get sregs",
        source,
    })?;
    configure_segments_and_sregs(mem, &mut sregs, entry)?;
    if let BootEntry::Linux64 { .. } = entry {
        setup_page_tables(mem, &mut sregs)?;
    }
    vcpu.set_sregs(&sregs).map_err(|source| RegsError::Kvm {
        what: "set sregs",
        source,
    })
}

fn write_gdt(mem: &GuestMemoryMmap, table: &[u64]) -> Result<(), RegsError> {
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))
            .map_err(|source| RegsError::Memory {
                what: "GDT",
                source,
            })?;
    }
    Ok(())
}

/// Fills `sregs` with flat segments for the given entry mode and writes the GDT/IDT.
pub fn configure_segments_and_sregs(
    mem: &GuestMemoryMmap,
    sregs: &mut kvm_sregs,
    entry: BootEntry,
) -> Result<(), RegsError> {
    let gdt_table: [u64; 4] = match entry {
        BootEntry::Linux64 { .. } => [
            gdt_entry(0, 0, 0),            // NULL
            gdt_entry(0xa09b, 0, 0xfffff), // CODE (64-bit)
            gdt_entry(0xc093, 0, 0xfffff), // DATA
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
        BootEntry::Pvh { .. } => [
            gdt_entry(0, 0, 0),                // NULL
            gdt_entry(0xc09b, 0, 0xffff_ffff), // CODE (32-bit)
            gdt_entry(0xc093, 0, 0xffff_ffff), // DATA
            gdt_entry(0x008b, 0, 0x67),        // TSS
        ],
    };
    let code_seg = kvm_segment_from_gdt(gdt_table[1], 1);
    let data_seg = kvm_segment_from_gdt(gdt_table[2], 2);
    let tss_seg = kvm_segment_from_gdt(gdt_table[3], 3);

    write_gdt(mem, &gdt_table)?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt_table) - 1) as u16;

    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| RegsError::Memory {
            what: "IDT",
            source,
        })?;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = tss_seg;

    match entry {
        BootEntry::Linux64 { .. } => {
            sregs.cr0 |= X86_CR0_PE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// Identity-maps the first 4 GiB (RAM and the MMIO gap) with 2 MiB pages and turns paging on
/// in `sregs`.
pub fn setup_page_tables(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    let w = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|source| RegsError::Memory {
                what: "page tables",
                source,
            })
    };
    // PML4[0] -> PDPT, PDPT[0..4] -> 4 PDs (present | writable).
    w(PDPTE_START | 0x03, PML4_START)?;
    for pd in 0..PDE_COUNT {
        w((PDE_START + pd * 0x1000) | 0x03, PDPTE_START + pd * 8)?;
    }
    // 4 * 512 2 MiB pages: present | writable | page size.
    for i in 0..512 * PDE_COUNT {
        w((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_page_tables(&m, &mut sregs).unwrap();
        assert_eq!(m.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(), 0xa003);
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PDPTE_START)).unwrap(),
            0xb003
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PDE_START + 511 * 8))
                .unwrap(),
            (511 << 21) | 0x83
        );
        // 0xd000_0000 (the virtio-mmio window) is mapped 1:1 too.
        let idx = 0xd000_0000u64 >> 21;
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PDE_START + idx * 8))
                .unwrap(),
            0xd000_0083
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PDPTE_START + 3 * 8))
                .unwrap(),
            0xe003
        );
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
    }

    #[test]
    fn long_mode_segments() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        configure_segments_and_sregs(&m, &mut sregs, BootEntry::Linux64 { entry: 0 }).unwrap();
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cs.selector, 8);
        assert_eq!(sregs.ds.selector, 0x10);
        assert_eq!(sregs.tr.selector, 0x18);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(BOOT_GDT_START + 8)).unwrap(),
            gdt_entry(0xa09b, 0, 0xfffff)
        );
    }

    #[test]
    fn pvh_segments_are_32_bit_flat_without_paging() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        configure_segments_and_sregs(&m, &mut sregs, BootEntry::Pvh { entry: 0 }).unwrap();
        assert_eq!(sregs.cs.l, 0);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(sregs.cs.limit, 0xffff_ffff);
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.efer, 0);
    }
}
