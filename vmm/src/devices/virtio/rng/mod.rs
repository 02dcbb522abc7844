//! virtio-rng: fills the driver's buffers from the host's getrandom(2).

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::mmio::drain_queue;
use super::{
    activation, read_config_bytes, Activation, Interrupt, VirtioDevice, VirtioError, TYPE_RNG,
    VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: [u16; 1] = [256];
/// Most bytes handed out per request.
const MAX_REQUEST: usize = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    active: Option<Activation>,
}

impl Rng {
    /// A new, inactive entropy device.
    pub fn new() -> Rng {
        Rng::default()
    }
}

fn fill_random(buf: &mut [u8]) -> bool {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: getrandom writes at most `len - off` bytes into the live buffer slice.
        let r = unsafe { libc::getrandom(buf[off..].as_mut_ptr().cast(), buf.len() - off, 0) };
        if r <= 0 {
            return false;
        }
        off += r as usize;
    }
    true
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        "virtio-rng"
    }
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[], offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        self.active = Some(activation(self, mem, queues, interrupt)?);
        Ok(())
    }
    fn process_queue(&mut self, _index: u16) {
        let Some((mem, queues, irq)) = self.active.as_mut() else {
            return;
        };
        let used = drain_queue(&mut queues[0], mem, "virtio-rng", |chain| {
            let len = (chain.writable_len() as usize).min(MAX_REQUEST);
            let mut buf = vec![0u8; len];
            if !fill_random(&mut buf) {
                return Some(0);
            }
            Some(chain.write_all(mem, &buf).unwrap_or(0) as u32)
        });
        if used {
            irq.signal_used_queue();
        }
    }
    fn reset(&mut self) {
        self.active = None;
    }
    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.1[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;

    #[test]
    fn fills_writable_buffers_and_interrupts() {
        let m = test_mem();
        let vq = virtio_queue::mock::MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[
            desc(0x10_0000, 64, VRING_DESC_F_WRITE),
            desc(0x20_0000, 64, VRING_DESC_F_WRITE),
        ])
        .unwrap();
        let (irq, evt) = test_interrupt();
        let mut dev = Rng::new();
        dev.activate(m.clone(), vec![vq.create_queue().unwrap()], irq)
            .unwrap();
        dev.process_queue(0);
        assert_eq!(used(&vq), vec![(0, 128)]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut b = [0u8; 64];
        vm_memory::Bytes::read_slice(&m, &mut b, vm_memory::GuestAddress(0x20_0000)).unwrap();
        assert!(b.iter().any(|x| *x != 0));
    }

    #[test]
    fn bad_chain_is_returned_empty() {
        let m = test_mem();
        let vq = virtio_queue::mock::MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[desc(0xfff_0000, 64, VRING_DESC_F_WRITE)])
            .unwrap();
        let (irq, _evt) = test_interrupt();
        let mut dev = Rng::new();
        dev.activate(m.clone(), vec![vq.create_queue().unwrap()], irq)
            .unwrap();
        dev.process_queue(0);
        assert_eq!(used(&vq), vec![(0, 0)]);
    }
}
