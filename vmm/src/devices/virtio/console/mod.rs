//! virtio-console (single port): transmit queue to a host writer, receive queue fed from host
//! input.

use std::collections::VecDeque;
use std::io::Write;

use tracing::warn;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::mmio::drain_queue;
use super::{
    activation, read_config_bytes, Activation, Interrupt, VirtioDevice, VirtioError, TYPE_CONSOLE,
    VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: [u16; 2] = [256, 256];
const RX: usize = 0;
const TX: usize = 1;
/// Host input kept while the guest has no receive buffers.
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// The console device.
pub struct Console {
    out: Box<dyn Write + Send>,
    input: VecDeque<u8>,
    active: Option<Activation>,
}

impl Console {
    /// A console writing guest output to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Console {
        Console {
            out,
            input: VecDeque::new(),
            active: None,
        }
    }

    /// Queues host input for the guest and delivers what fits.
    pub fn push_input(&mut self, bytes: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.input.len());
        self.input.extend(&bytes[..bytes.len().min(room)]);
        self.deliver_input();
    }

    fn deliver_input(&mut self) {
        let Some((mem, queues, irq)) = self.active.as_mut() else {
            return;
        };
        let input = &mut self.input;
        let used = drain_queue(&mut queues[RX], mem, "virtio-console", |chain| {
            if input.is_empty() {
                return None;
            }
            let n = (chain.writable_len() as usize).min(input.len());
            let data: Vec<u8> = input.drain(..n).collect();
            Some(chain.write_all(mem, &data).unwrap_or(0) as u32)
        });
        if used {
            irq.signal_used_queue();
        }
    }

    fn transmit(&mut self) {
        let Some((mem, queues, irq)) = self.active.as_mut() else {
            return;
        };
        let out = &mut self.out;
        let used = drain_queue(&mut queues[TX], mem, "virtio-console", |chain| {
            match chain.read_all(mem) {
                Ok(bytes) => {
                    if let Err(e) = out.write_all(&bytes).and_then(|_| out.flush()) {
                        warn!(error = %e, "console output failed");
                    }
                }
                Err(e) => warn!(error = %e, "console buffer unreadable"),
            }
            Some(0)
        });
        if used {
            irq.signal_used_queue();
        }
    }
}

impl VirtioDevice for Console {
    fn name(&self) -> &'static str {
        "virtio-console"
    }
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
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
    fn process_queue(&mut self, index: u16) {
        match index as usize {
            RX => self.deliver_input(),
            TX => self.transmit(),
            _ => {}
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
    use std::sync::{Arc, Mutex};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_to_the_writer_and_receives_input() {
        let m = test_mem();
        let rxq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
        m.write_slice(b"hello ", GuestAddress(0x10_0000)).unwrap();
        m.write_slice(b"world", GuestAddress(0x11_0000)).unwrap();
        txq.build_desc_chain(&[desc(0x10_0000, 6, 0), desc(0x11_0000, 5, 0)])
            .unwrap();
        rxq.build_desc_chain(&[desc(0x20_0000, 4, VRING_DESC_F_WRITE)])
            .unwrap();
        let out = Shared::default();
        let (irq, evt) = test_interrupt();
        let mut dev = Console::new(Box::new(out.clone()));
        dev.activate(
            m.clone(),
            vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            irq,
        )
        .unwrap();
        dev.process_queue(1);
        assert_eq!(&*out.0.lock().unwrap(), b"hello world");
        assert_eq!(used(&txq), vec![(0, 0)]);
        assert_eq!(evt.read().unwrap(), 1);
        dev.push_input(b"input");
        assert_eq!(used(&rxq), vec![(0, 4)]);
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&b, b"inpu");
        assert_eq!(dev.input.len(), 1);
    }
}
