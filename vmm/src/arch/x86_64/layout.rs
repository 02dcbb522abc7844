//! Guest physical memory layout of a hull micro-VM (x86-64).

/// GDT used while booting.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT used while booting.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 page table.
pub const PML4_START: u64 = 0x9000;
/// PDPT page table.
pub const PDPTE_START: u64 = 0xa000;
/// First of `PDE_COUNT` page directories (each maps 1 GiB with 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Page directories: the first 4 GiB are identity mapped.
pub const PDE_COUNT: u64 = 4;
/// MP floating pointer structure and table.
pub const MPTABLE_START: u64 = 0x9fc00;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest kernel command line accepted (including the NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of the low RAM below the EBDA.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory: kernels are loaded here or above.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (virtio-mmio devices, IOAPIC, LAPIC).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First legacy IRQ handed to virtio-mmio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable legacy IRQ for virtio-mmio devices.
pub const VIRTIO_IRQ_MAX: u32 = 23;
/// KVM's TSS, three pages just below the IOAPIC/LAPIC region.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// COM1 port base.
pub const COM1_BASE: u16 = 0x3f8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;
/// i8042 port base (0x60..=0x64).
pub const I8042_BASE: u16 = 0x60;

/// Guest RAM regions for `mem_size` bytes: below the MMIO gap, then above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(64 << 20), vec![(0, 64 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
