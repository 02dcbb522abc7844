//! Helpers for device-model tests against virtio-queue's mock split queues.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;

/// 16 MiB of test guest memory.
pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// A descriptor (the mock fills in NEXT links).
pub fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
}

/// An interrupt and a clone of its eventfd to observe it.
pub fn test_interrupt() -> (Interrupt, EventFd) {
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let observer = evt.try_clone().unwrap();
    (Interrupt::new(evt), observer)
}

/// The used ring as (head id, length) pairs.
pub fn used(vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}
