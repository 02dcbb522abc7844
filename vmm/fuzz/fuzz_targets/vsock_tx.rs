//! Fuzzes the hybrid vsock device with guest-controlled transmit queues: the input becomes
//! guest memory holding the three virtqueues (same packed layout as `descriptor_chain`) and
//! whatever packets the descriptors point at; the device processes its queues. Invariant: no
//! panic, whatever the headers, lengths, ports and operations say.

#![no_main]

use std::sync::OnceLock;

use hull_vmm::devices::virtio::vsock::Vsock;
use hull_vmm::devices::virtio::{Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 0x10000;
const QSIZE: u16 = 16;

fn queue(base: u64) -> Queue {
    let avail = base + 16 * u64::from(QSIZE);
    let used = (avail + 6 + 2 * u64::from(QSIZE) + 3) & !3;
    let mut q = Queue::new(256).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    q
}

fn uds_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("hull-vsock-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&data[..data.len().min(MEM_SIZE)], GuestAddress(0))
        .unwrap();
    // rx, tx and event queues at 0x0, 0x400 and 0x800.
    let queues = vec![queue(0x0), queue(0x400), queue(0x800)];
    let mut dev = Vsock::new(3, &uds_dir().join("v.sock")).unwrap();
    let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    dev.activate(mem, queues, irq).unwrap();
    dev.process_queue(1);
    dev.process_queue(0);
    dev.process_queue(2);
    for (fd, w) in dev.host_fds() {
        dev.process_host_event(fd, true, w);
    }
});
