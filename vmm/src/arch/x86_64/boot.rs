//! Loading a kernel (ELF vmlinux, with or without a PVH note, or bzImage), the initrd and the
//! command line into guest memory, and writing the boot parameters the chosen protocol wants:
//! the Linux zero page (`boot_params` with e820) or PVH's `hvm_start_info` with its memory map.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{
    Address, ByteValued, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::layout::*;
use super::regs::BootEntry;

/// Errors while loading the kernel and writing boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image could not be loaded.
    #[error("cannot load kernel image (neither ELF vmlinux nor bzImage): {0}")]
    LoadKernel(loader::Error),
    /// The initrd does not fit.
    #[error("initrd of {size} bytes does not fit in guest memory between the kernel and {limit:#x}: give the VM more memory")]
    InitrdTooBig {
        /// Initrd size.
        size: u64,
        /// Highest address it may end at.
        limit: u64,
    },
    /// The initrd could not be read into memory.
    #[error("cannot read initrd into guest memory: {0}")]
    ReadInitrd(vm_memory::GuestMemoryError),
    /// The initrd file could not be read.
    #[error("cannot read initrd file: {0}")]
    InitrdIo(std::io::Error),
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// The command line could not be written.
    #[error("cannot write kernel command line: {0}")]
    WriteCmdline(loader::Error),
    /// Boot parameters could not be written.
    #[error("cannot write boot parameters: {0}")]
    BootParams(linux_loader::configurator::Error),
}

/// Where the kernel landed and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry mode and address.
    pub entry: BootEntry,
    /// The bzImage setup header, if the image was a bzImage.
    pub setup_header: Option<setup_header>,
    /// First byte after the loaded kernel.
    pub kernel_end: u64,
}

/// Where the initrd landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdConfig {
    /// Guest physical address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads `kernel` (ELF vmlinux or bzImage) into `mem`. An ELF with a PVH note is entered through
/// PVH; other ELFs and bzImages through the Linux 64-bit boot protocol.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<LoadedKernel, BootError> {
    match Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))) {
        Ok(res) => {
            let entry = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh {
                    entry: addr.raw_value(),
                },
                _ => BootEntry::Linux64 {
                    entry: res.kernel_load.raw_value(),
                },
            };
            Ok(LoadedKernel {
                entry,
                setup_header: None,
                kernel_end: res.kernel_end,
            })
        }
        Err(loader::Error::Elf(linux_loader::loader::elf::Error::InvalidElfMagicNumber)) => {
            let res = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
                .map_err(BootError::LoadKernel)?;
            // The 64-bit entry point (startup_64) sits 0x200 bytes into the protected-mode code.
            Ok(LoadedKernel {
                entry: BootEntry::Linux64 {
                    entry: res.kernel_load.raw_value() + 0x200,
                },
                setup_header: res.setup_header,
                kernel_end: res.kernel_end,
            })
        }
        Err(e) => Err(BootError::LoadKernel(e)),
    }
}

/// Highest address (exclusive) of RAM below the MMIO gap.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|end| *end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

/// Loads the initrd page-aligned at the top of low RAM (and below `addr_max` if given), above
/// the kernel, which ends at `kernel_end`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut File,
    kernel_end: u64,
    addr_max: Option<u64>,
) -> Result<InitrdConfig, BootError> {
    let size = initrd.seek(SeekFrom::End(0)).map_err(BootError::InitrdIo)?;
    initrd
        .seek(SeekFrom::Start(0))
        .map_err(BootError::InitrdIo)?;
    let mut limit = low_ram_end(mem);
    if let Some(max) = addr_max {
        limit = limit.min(max.saturating_add(1));
    }
    let address = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= HIMEM_START.max(kernel_end))
        .ok_or(BootError::InitrdTooBig { size, limit })?;
    let mut buf = Vec::new();
    initrd.read_to_end(&mut buf).map_err(BootError::InitrdIo)?;
    vm_memory::Bytes::write_slice(mem, &buf, GuestAddress(address))
        .map_err(BootError::ReadInitrd)?;
    Ok(InitrdConfig { address, size })
}

/// Builds a kernel command line from `raw`.
pub fn build_cmdline(raw: &str) -> Result<Cmdline, BootError> {
    Cmdline::try_from(raw, CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))
}

/// Writes the command line at `CMDLINE_START`.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<u32, BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::WriteCmdline)?;
    let len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();
    Ok(len as u32)
}

/// RAM ranges as the e820/PVH memory map reports them.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    for r in mem.iter() {
        let start = r.start_addr().raw_value();
        let end = start + r.len();
        let start = start.max(HIMEM_START);
        if end > start {
            map.push((start, end - start));
        }
    }
    map
}

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Writes the Linux zero page (boot_params) at `ZERO_PAGE_START`.
pub fn configure_linux_boot(
    mem: &GuestMemoryMmap,
    setup: Option<setup_header>,
    cmdline_size: u32,
    initrd: Option<InitrdConfig>,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = setup {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size + 1;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.address as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    for (i, (addr, size)) in memory_map(mem).into_iter().enumerate() {
        params.e820_table[i].addr = addr;
        params.e820_table[i].size = size;
        params.e820_table[i].r#type = E820_RAM;
        params.e820_entries += 1;
    }
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::BootParams)?;
    Ok(params)
}

/// `hvm_start_info` as guest-memory bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct StartInfo(pub hvm_start_info);
// SAFETY: hvm_start_info is a repr(C) struct of plain integers; every bit pattern is valid.
unsafe impl ByteValued for StartInfo {}

/// `hvm_memmap_table_entry` as guest-memory bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct MemmapEntry(pub hvm_memmap_table_entry);
// SAFETY: hvm_memmap_table_entry is a repr(C) struct of plain integers.
unsafe impl ByteValued for MemmapEntry {}

/// `hvm_modlist_entry` as guest-memory bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct ModlistEntry(pub hvm_modlist_entry);
// SAFETY: hvm_modlist_entry is a repr(C) struct of plain integers.
unsafe impl ByteValued for ModlistEntry {}

/// Writes PVH's `hvm_start_info`, memory map and module list (the initrd).
pub fn configure_pvh_boot(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdConfig>,
) -> Result<hvm_start_info, BootError> {
    let map: Vec<MemmapEntry> = memory_map(mem)
        .into_iter()
        .map(|(addr, size)| {
            MemmapEntry(hvm_memmap_table_entry {
                addr,
                size,
                type_: E820_RAM,
                reserved: 0,
            })
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new::<StartInfo>(&StartInfo(info), GuestAddress(PVH_INFO_START));
    if let Some(initrd) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new::<StartInfo>(&StartInfo(info), GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[ModlistEntry(hvm_modlist_entry {
                paddr: initrd.address,
                size: initrd.size,
                ..Default::default()
            })],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&map, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::BootParams)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    fn mem(mib: u64) -> GuestMemoryMmap {
        crate::vstate::memory::create_guest_memory(mib << 20).unwrap()
    }

    fn file(bytes: &[u8]) -> File {
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn memory_map_skips_ebda_low_memory_and_the_mmio_gap() {
        assert_eq!(
            memory_map(&mem(64)),
            vec![(0, EBDA_START), (HIMEM_START, (64 << 20) - HIMEM_START)]
        );
        let big = mem(4096 + 512);
        assert_eq!(
            memory_map(&big),
            vec![
                (0, EBDA_START),
                (HIMEM_START, MMIO_GAP_START - HIMEM_START),
                (MMIO_GAP_END, (4096 + 512 - 3072) << 20),
            ]
        );
    }

    #[test]
    fn zero_page_has_cmdline_initrd_and_e820() {
        let m = mem(32);
        let initrd = InitrdConfig {
            address: 0x1f0_0000,
            size: 0x1234,
        };
        let p = configure_linux_boot(&m, None, 10, Some(initrd)).unwrap();
        let back: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ back.hdr.boot_flag }, { p.hdr.boot_flag });
        assert_eq!({ back.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ back.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ back.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ back.hdr.cmdline_size }, 11);
        assert_eq!({ back.hdr.ramdisk_image }, 0x1f0_0000);
        assert_eq!({ back.hdr.ramdisk_size }, 0x1234);
        assert_eq!(back.e820_entries, 2);
        assert_eq!({ back.e820_table[1].addr }, HIMEM_START);
        assert_eq!({ back.e820_table[1].size }, (32 << 20) - HIMEM_START);
    }

    #[test]
    fn pvh_start_info_memmap_and_module() {
        let m = mem(32);
        let initrd = InitrdConfig {
            address: 0x1f0_0000,
            size: 0x1000,
        };
        configure_pvh_boot(&m, Some(initrd)).unwrap();
        let info: StartInfo = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.0.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.0.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.0.memmap_entries, 2);
        assert_eq!(info.0.nr_modules, 1);
        let e: MemmapEntry = m.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!(
            (e.0.addr, e.0.size, e.0.type_),
            (HIMEM_START, (32 << 20) - HIMEM_START, E820_RAM)
        );
        let md: ModlistEntry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((md.0.paddr, md.0.size), (0x1f0_0000, 0x1000));
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_and_too_big_fails() {
        let m = mem(16);
        let data = vec![0xabu8; 5000];
        let cfg = load_initrd(&m, &mut file(&data), 0, None).unwrap();
        assert_eq!(cfg.size, 5000);
        assert_eq!(cfg.address % 4096, 0);
        assert!(cfg.address + 5000 <= 16 << 20 && (16 << 20) - (cfg.address + 5000) < 4096);
        let mut b = [0u8; 2];
        m.read_slice(&mut b, GuestAddress(cfg.address + 4998))
            .unwrap();
        assert_eq!(b, [0xab, 0xab]);
        // Below initrd_addr_max when given.
        let cfg = load_initrd(&m, &mut file(&data), 0, Some(0x7f_ffff)).unwrap();
        assert!(cfg.address + cfg.size <= 0x80_0000);
        let huge = vec![0u8; 17 << 20];
        assert!(matches!(
            load_initrd(&m, &mut file(&huge), 0, None),
            Err(BootError::InitrdTooBig { .. })
        ));
        // Never over the kernel: a kernel ending 4 KiB below the top leaves no room.
        assert!(matches!(
            load_initrd(&m, &mut file(&data), (16 << 20) - 4096, None),
            Err(BootError::InitrdTooBig { .. })
        ));
    }

    #[test]
    fn garbage_kernel_and_long_cmdline_are_errors() {
        let m = mem(16);
        assert!(matches!(
            load_kernel(&m, &mut file(b"definitely not a kernel")),
            Err(BootError::LoadKernel(_))
        ));
        assert!(matches!(
            build_cmdline(&"x".repeat(CMDLINE_MAX_SIZE + 1)),
            Err(BootError::Cmdline(_))
        ));
        let c = build_cmdline("console=ttyS0").unwrap();
        assert_eq!(write_cmdline(&m, &c).unwrap(), 13);
        let mut b = [0u8; 14];
        m.read_slice(&mut b, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&b, b"console=ttyS0\0");
    }
}
