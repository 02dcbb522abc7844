//! Guest memory: anonymous private mappings laid out around the 32-bit MMIO gap.

use std::fs::File;
use std::io::{Read, Write};

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::layout::ram_regions;

/// Errors while creating, saving or restoring guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is zero or not a whole number of pages.
    #[error("invalid guest memory size {0} bytes: must be a non-zero multiple of 4 KiB")]
    InvalidSize(u64),
    /// Mapping failed.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        /// Requested size.
        size: u64,
        /// The mmap error.
        source: vm_memory::mmap::FromRangesError,
    },
    /// Dumping or loading failed.
    #[error("cannot {what} guest memory file: {source}")]
    Io {
        /// save or restore.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Guest memory access failed.
    #[error("guest memory access failed: {0}")]
    Access(vm_memory::GuestMemoryError),
    /// The memory file does not match the VM's memory size.
    #[error("memory file holds {found} bytes, the VM has {expected}")]
    SizeMismatch {
        /// Bytes in the VM.
        expected: u64,
        /// Bytes in the file.
        found: u64,
    },
}

/// Creates `size` bytes of guest RAM.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if size == 0 || size % 4096 != 0 {
        return Err(MemoryError::InvalidSize(size));
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map { size, source })
}

/// Total guest RAM in bytes.
pub fn total_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// The granularity at which zero memory is skipped (a page).
const PAGE: usize = 4096;

/// Writes all guest RAM, region after region, to `file`, leaving holes for pages of zeros
/// (the file is as long as the RAM, its blocks only the RAM the guest wrote).
pub fn dump(mem: &GuestMemoryMmap, file: &mut File) -> Result<(), MemoryError> {
    use std::os::unix::fs::FileExt;
    let io = |source| MemoryError::Io {
        what: "write",
        source,
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    for region in mem.iter() {
        let mut off = 0u64;
        while off < region.len() {
            let n = (region.len() - off).min(buf.len() as u64) as usize;
            let addr = region.start_addr().unchecked_add(off);
            mem.read_slice(&mut buf[..n], addr)
                .map_err(MemoryError::Access)?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|b| *b != 0) {
                    file.write_all_at(page, at + (i * PAGE) as u64)
                        .map_err(io)?;
                }
            }
            at += n as u64;
            off += n as u64;
        }
    }
    file.set_len(at).map_err(io)?;
    file.flush().map_err(io)
}

/// Fills guest RAM from a file written by [`dump`].
pub fn load(mem: &GuestMemoryMmap, file: &mut File) -> Result<(), MemoryError> {
    let expected = total_size(mem);
    let found = file
        .metadata()
        .map_err(|source| MemoryError::Io {
            what: "read",
            source,
        })?
        .len();
    if found != expected {
        return Err(MemoryError::SizeMismatch { expected, found });
    }
    let mut buf = vec![0u8; 1 << 20];
    for region in mem.iter() {
        let mut off = 0u64;
        while off < region.len() {
            let n = (region.len() - off).min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n])
                .map_err(|source| MemoryError::Io {
                    what: "read",
                    source,
                })?;
            // Skip pages of zeros: fresh anonymous memory is already zero, and not touching
            // it keeps the restored VM's RSS to the memory its guest had used.
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|b| *b != 0) {
                    let addr = region.start_addr().unchecked_add(off + (i * PAGE) as u64);
                    mem.write_slice(page, addr).map_err(MemoryError::Access)?;
                }
            }
            off += n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unaligned_size() {
        assert!(matches!(
            create_guest_memory(4097),
            Err(MemoryError::InvalidSize(4097))
        ));
        assert!(matches!(
            create_guest_memory(0),
            Err(MemoryError::InvalidSize(0))
        ));
    }

    #[test]
    fn dump_and_load_round_trip() {
        let mem = create_guest_memory(2 << 20).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .unwrap();
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        dump(&mem, &mut f).unwrap();
        // As long as the RAM, but only the written page takes a block.
        use std::os::unix::fs::MetadataExt;
        let meta = f.metadata().unwrap();
        assert_eq!(meta.len(), 2 << 20);
        assert!(meta.blocks() * 512 <= 64 * 1024, "{} blocks", meta.blocks());
        let mem2 = create_guest_memory(2 << 20).unwrap();
        use std::io::Seek;
        f.rewind().unwrap();
        load(&mem2, &mut f).unwrap();
        assert_eq!(
            mem2.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef
        );
        let mem3 = create_guest_memory(4 << 20).unwrap();
        f.rewind().unwrap();
        assert!(matches!(
            load(&mem3, &mut f),
            Err(MemoryError::SizeMismatch { .. })
        ));
    }
}
