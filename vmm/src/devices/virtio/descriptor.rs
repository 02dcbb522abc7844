//! Validation of virtio descriptor chains before a device touches them: every buffer inside
//! guest RAM, no loops or dangling `next` links, bounded length and count, readable buffers
//! before writable ones. Devices work on the resulting [`ParsedChain`] only.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Most descriptors a chain may have.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;
/// Most bytes a chain may describe.
pub const MAX_CHAIN_BYTES: u64 = 1 << 30;

/// Why a descriptor chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// The chain has no descriptor (or its head could not be read).
    #[error("empty or unreadable descriptor chain")]
    Empty,
    /// A buffer lies (partly) outside guest RAM.
    #[error("descriptor buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The chain ended on a descriptor that still has `NEXT`: a loop, a `next` index beyond the
    /// queue, an unreadable descriptor or a bad indirect table.
    #[error("descriptor chain is truncated: loop, bad next index or bad indirect table")]
    Truncated,
    /// More descriptors than allowed.
    #[error("descriptor chain has more than {0} descriptors")]
    TooManyDescriptors(usize),
    /// More bytes than allowed.
    #[error("descriptor chain describes more than {0} bytes")]
    TooManyBytes(u64),
    /// A device-readable buffer follows a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
}

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A validated descriptor chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedChain {
    /// Index of the head descriptor (returned in the used ring).
    pub head: u16,
    /// Buffers in chain order: readable ones, then writable ones.
    pub segments: Vec<Segment>,
}

impl ParsedChain {
    /// The device-readable buffers.
    pub fn readable(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| !s.write)
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.write)
    }

    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        self.readable().map(|s| u64::from(s.len)).sum()
    }

    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.writable().map(|s| u64::from(s.len)).sum()
    }

    /// Copies all readable bytes out of guest memory.
    pub fn read_all(&self, mem: &GuestMemoryMmap) -> Result<Vec<u8>, vm_memory::GuestMemoryError> {
        let mut out = vec![0u8; self.readable_len() as usize];
        let mut off = 0;
        for s in self.readable() {
            vm_memory::Bytes::read_slice(mem, &mut out[off..off + s.len as usize], s.addr)?;
            off += s.len as usize;
        }
        Ok(out)
    }

    /// Writes `data` across the writable buffers; returns bytes written.
    pub fn write_all(
        &self,
        mem: &GuestMemoryMmap,
        mut data: &[u8],
    ) -> Result<usize, vm_memory::GuestMemoryError> {
        let mut written = 0;
        for s in self.writable() {
            if data.is_empty() {
                break;
            }
            let n = data.len().min(s.len as usize);
            vm_memory::Bytes::write_slice(mem, &data[..n], s.addr)?;
            data = &data[n..];
            written += n;
        }
        Ok(written)
    }
}

/// Validates `chain` against `mem` with the default limits.
pub fn parse_chain<M>(chain: DescriptorChain<M>) -> Result<ParsedChain, DescriptorError>
where
    M: Deref + Clone,
    M::Target: GuestMemoryBackend + vm_memory::GuestMemory,
{
    parse_chain_with_limits(chain, MAX_CHAIN_DESCRIPTORS, MAX_CHAIN_BYTES)
}

/// Validates `chain` with explicit limits.
pub fn parse_chain_with_limits<M>(
    chain: DescriptorChain<M>,
    max_descriptors: usize,
    max_bytes: u64,
) -> Result<ParsedChain, DescriptorError>
where
    M: Deref + Clone,
    M::Target: GuestMemoryBackend + vm_memory::GuestMemory,
{
    let head = chain.head_index();
    let mem_check = chain.clone();
    let mem = mem_check.memory();
    let mut segments = Vec::new();
    let mut total: u64 = 0;
    let mut last_has_next = false;
    let mut seen_write = false;
    for desc in chain {
        if segments.len() == max_descriptors {
            return Err(DescriptorError::TooManyDescriptors(max_descriptors));
        }
        let (addr, len) = (desc.addr(), desc.len());
        let in_range = len == 0
            || addr
                .checked_add(u64::from(len) - 1)
                .is_some_and(|_| GuestMemoryBackend::check_range(mem, addr, len as usize));
        if !in_range {
            return Err(DescriptorError::OutOfRange {
                addr: addr.raw_value(),
                len,
            });
        }
        total += u64::from(len);
        if total > max_bytes {
            return Err(DescriptorError::TooManyBytes(max_bytes));
        }
        let write = desc.is_write_only();
        if seen_write && !write {
            return Err(DescriptorError::ReadableAfterWritable);
        }
        seen_write |= write;
        last_has_next = desc.has_next();
        segments.push(Segment { addr, len, write });
    }
    if segments.is_empty() {
        return Err(DescriptorError::Empty);
    }
    if last_has_next {
        return Err(DescriptorError::Truncated);
    }
    Ok(ParsedChain { head, segments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    fn first_chain(
        m: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
    ) -> Result<ParsedChain, DescriptorError> {
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(m).unwrap().next().ok_or(DescriptorError::Empty)?;
        parse_chain(chain)
    }

    #[test]
    fn good_chain_is_parsed_in_order() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[
            desc(0x10_0000, 16, 0, 0),
            desc(0x20_0000, 512, 0, 0),
            desc(0x30_0000, 1, VRING_DESC_F_WRITE, 0),
        ])
        .unwrap();
        let c = first_chain(&m, &vq).unwrap();
        assert_eq!(c.head, 0);
        assert_eq!(c.segments.len(), 3);
        assert_eq!(c.readable_len(), 528);
        assert_eq!(c.writable_len(), 1);
    }

    #[test]
    fn out_of_range_buffer_is_rejected() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[
            desc(0x10_0000, 16, 0, 0),
            desc(0xff_fff0, 0x20, VRING_DESC_F_WRITE, 0),
        ])
        .unwrap();
        assert_eq!(
            first_chain(&m, &vq),
            Err(DescriptorError::OutOfRange {
                addr: 0xff_fff0,
                len: 0x20
            })
        );
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[desc(u64::MAX - 4, 16, 0, 0)])
            .unwrap();
        assert!(matches!(
            first_chain(&m, &vq),
            Err(DescriptorError::OutOfRange { .. })
        ));
    }

    #[test]
    fn loop_is_rejected() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // 0 -> 1 -> 0 -> ...
        vq.add_desc_chains(
            &[
                desc(0x10_0000, 8, VRING_DESC_F_NEXT, 1),
                desc(0x10_1000, 8, VRING_DESC_F_NEXT, 0),
            ],
            0,
        )
        .unwrap();
        assert_eq!(first_chain(&m, &vq), Err(DescriptorError::Truncated));
    }

    #[test]
    fn next_index_beyond_queue_is_rejected() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[desc(0x10_0000, 8, VRING_DESC_F_NEXT, 200)], 0)
            .unwrap();
        assert_eq!(first_chain(&m, &vq), Err(DescriptorError::Truncated));
    }

    #[test]
    fn oversize_chains_are_rejected() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs: Vec<_> = (0..8)
            .map(|i| desc(0x10_0000 + i * 0x1000, 8, 0, 0))
            .collect();
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&m).unwrap().next().unwrap();
        assert_eq!(
            parse_chain_with_limits(chain, 4, 1 << 20),
            Err(DescriptorError::TooManyDescriptors(4))
        );

        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[
            desc(0x10_0000, 0x80_0000, 0, 0),
            desc(0x10_0000, 0x80_0000, 0, 0),
        ])
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&m).unwrap().next().unwrap();
        assert_eq!(
            parse_chain_with_limits(chain, 16, 0x80_0000),
            Err(DescriptorError::TooManyBytes(0x80_0000))
        );
    }

    #[test]
    fn readable_after_writable_is_rejected() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[
            desc(0x10_0000, 8, VRING_DESC_F_WRITE, 0),
            desc(0x11_0000, 8, 0, 0),
        ])
        .unwrap();
        assert_eq!(
            first_chain(&m, &vq),
            Err(DescriptorError::ReadableAfterWritable)
        );
    }

    #[test]
    fn nested_indirect_table_is_rejected() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Head points at an indirect table at 0x50_0000 whose only entry is indirect again.
        vm_memory::Bytes::write_obj(
            &m,
            desc(0x50_0000, 16, VRING_DESC_F_INDIRECT, 0),
            GuestAddress(0x50_0000),
        )
        .unwrap();
        vq.add_desc_chains(&[desc(0x50_0000, 16, VRING_DESC_F_INDIRECT, 0)], 0)
            .unwrap();
        assert!(first_chain(&m, &vq).is_err());
    }

    #[test]
    fn valid_indirect_table_is_followed() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vm_memory::Bytes::write_obj(
            &m,
            desc(0x10_0000, 8, VRING_DESC_F_NEXT, 1),
            GuestAddress(0x50_0000),
        )
        .unwrap();
        vm_memory::Bytes::write_obj(
            &m,
            desc(0x11_0000, 4, VRING_DESC_F_WRITE, 0),
            GuestAddress(0x50_0010),
        )
        .unwrap();
        vq.add_desc_chains(&[desc(0x50_0000, 32, VRING_DESC_F_INDIRECT, 0)], 0)
            .unwrap();
        let c = first_chain(&m, &vq).unwrap();
        assert_eq!(c.segments.len(), 2);
        assert_eq!(c.writable_len(), 4);
    }

    #[test]
    fn read_and_write_helpers_cross_segments() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vm_memory::Bytes::write_slice(&m, b"abc", GuestAddress(0x10_0000)).unwrap();
        vm_memory::Bytes::write_slice(&m, b"de", GuestAddress(0x20_0000)).unwrap();
        vq.build_desc_chain(&[
            desc(0x10_0000, 3, 0, 0),
            desc(0x20_0000, 2, 0, 0),
            desc(0x30_0000, 2, VRING_DESC_F_WRITE, 0),
            desc(0x40_0000, 2, VRING_DESC_F_WRITE, 0),
        ])
        .unwrap();
        let c = first_chain(&m, &vq).unwrap();
        assert_eq!(c.read_all(&m).unwrap(), b"abcde");
        assert_eq!(c.write_all(&m, b"xyz").unwrap(), 3);
        let mut b = [0u8; 1];
        vm_memory::Bytes::read_slice(&m, &mut b, GuestAddress(0x40_0000)).unwrap();
        assert_eq!(&b, b"z");
    }
}
