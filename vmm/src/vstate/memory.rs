//! Guest memory: anonymous private mappings laid out around the 32-bit MMIO gap.

use std::fs::File;
use std::io::Write;

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
                if !is_zero(page) {
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

/// Whether a page holds only zeros (word by word: this runs over every page of a snapshot).
fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: every bit pattern is a valid u64; align_to only reinterprets the
        // aligned middle of the byte slice.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// The data extents of `file` (`SEEK_DATA`/`SEEK_HOLE`), as (offset, length), up to `len`.
/// (hull-runtime's rootdisk has the same walk for rootfs images; the crates share no
/// dependency to hold one copy.)
fn extents(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on the descriptor `file` owns; it only moves that file's offset.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    Ok(out)
}

/// Fills guest RAM from a file written by [`dump`]. Only the file's data is read: the
/// holes `dump` left are the guest's zero pages, which fresh anonymous memory already is,
/// so a restore reads (and the restored VM's RSS holds) only the memory its guest had
/// used, not the whole RAM (256 MiB of mostly holes took over 10 s in the nested test
/// machine, where a restored guest must answer within 10 s).
pub fn load(mem: &GuestMemoryMmap, file: &mut File) -> Result<(), MemoryError> {
    use std::os::unix::fs::FileExt;
    let io = |source| MemoryError::Io {
        what: "read",
        source,
    };
    let expected = total_size(mem);
    let found = file.metadata().map_err(io)?.len();
    if found != expected {
        return Err(MemoryError::SizeMismatch { expected, found });
    }
    let data = extents(file, expected).map_err(io)?;
    let page = PAGE as u64;
    let mut buf = vec![0u8; 1 << 20];
    // The regions lie end to end in the file, as `dump` wrote them; `at` is where this one
    // starts. Each extent is widened to whole pages and cut to the region.
    let mut at = 0u64;
    for region in mem.iter() {
        let end = at + region.len();
        for &(off, n) in &data {
            let mut from = (off / page * page).max(at);
            let to = (off + n).div_ceil(page).saturating_mul(page).min(end);
            while from < to {
                let k = ((to - from) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..k], from).map_err(io)?;
                for (i, p) in buf[..k].chunks(PAGE).enumerate() {
                    if !is_zero(p) {
                        let addr = region
                            .start_addr()
                            .unchecked_add(from - at + (i * PAGE) as u64);
                        mem.write_slice(p, addr).map_err(MemoryError::Access)?;
                    }
                }
                from += k as u64;
            }
        }
        at = end;
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
    fn load_reads_only_the_data_of_a_sparse_file_and_a_dense_one_alike() {
        use std::io::Seek;
        let size = 8 << 20;
        let mem = create_guest_memory(size).unwrap();
        // Two extents of data far apart, holes around them.
        mem.write_obj(0x1111_u64, GuestAddress(0x2008)).unwrap();
        mem.write_obj(0x2222_u64, GuestAddress(size - 8)).unwrap();
        let mut sparse = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        dump(&mem, &mut sparse).unwrap();
        // The same content with every block allocated (a file system without holes).
        let mut dense = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        sparse.rewind().unwrap();
        std::io::copy(&mut sparse, &mut dense).unwrap();
        for f in [&mut sparse, &mut dense] {
            let back = create_guest_memory(size).unwrap();
            back.write_obj(0x3333_u64, GuestAddress(0x5000)).unwrap();
            load(&back, f).unwrap();
            assert_eq!(back.read_obj::<u64>(GuestAddress(0x2008)).unwrap(), 0x1111);
            assert_eq!(
                back.read_obj::<u64>(GuestAddress(size - 8)).unwrap(),
                0x2222
            );
            // A page that is a hole in the file is left as it was (fresh memory: zero).
            assert_eq!(back.read_obj::<u64>(GuestAddress(0x5000)).unwrap(), 0x3333);
        }
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
