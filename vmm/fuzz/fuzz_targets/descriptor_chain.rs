//! Fuzzes virtio descriptor chain validation: the input becomes guest memory holding a split
//! virtqueue (descriptor table, available ring) of a fuzzed size; every available chain is
//! popped and validated. Invariants: no panic, accepted chains lie inside guest memory and within
//! the length limits, and their buffers can be read and written.

#![no_main]

use hull_vmm::devices::virtio::descriptor::{parse_chain, MAX_CHAIN_BYTES, MAX_CHAIN_DESCRIPTORS};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const MEM_SIZE: usize = 0x10000;
const DESC_TABLE: u64 = 0x0;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let size = 1u16 << (data[0] % 9); // 1..=256
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    // The rest of the input fills guest memory from the descriptor table on.
    let body = &data[2..data.len().min(MEM_SIZE + 2)];
    mem.write_slice(body, GuestAddress(0)).unwrap();
    // Byte 1 picks the starting next_avail so wrap-around paths are reached.
    // Rings packed right after the table so that short inputs reach the available ring.
    let avail_ring = DESC_TABLE + 16 * u64::from(size);
    let used_ring = (avail_ring + 6 + 2 * u64::from(size) + 3) & !3;
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(avail_ring as u32), Some(0));
    q.set_used_ring_address(Some(used_ring as u32), Some(0));
    q.set_next_avail(u16::from(data[1]));
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    for _ in 0..64 {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        if let Ok(parsed) = parse_chain(chain) {
            assert!(parsed.segments.len() <= MAX_CHAIN_DESCRIPTORS);
            let mut total = 0u64;
            let mut seen_write = false;
            for s in &parsed.segments {
                assert!(s.len == 0 || mem.check_range(s.addr, s.len as usize));
                assert!(!(seen_write && !s.write));
                seen_write |= s.write;
                total += u64::from(s.len);
            }
            assert!(total <= MAX_CHAIN_BYTES);
            let bytes = parsed
                .read_all(&mem)
                .expect("validated buffers are readable");
            assert_eq!(bytes.len() as u64, parsed.readable_len());
            let n = parsed
                .write_all(&mem, &bytes)
                .expect("validated buffers are writable");
            assert!(n as u64 <= parsed.writable_len());
        }
        let _ = q.add_used(&mem, head, 0);
    }
});
