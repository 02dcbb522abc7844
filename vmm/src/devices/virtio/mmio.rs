//! The virtio-mmio (version 2) transport: the register window the driver programs, queue
//! set-up, feature negotiation, status and activation of the device model behind it.

use std::os::unix::io::RawFd;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::descriptor::{parse_chain, DescriptorError, ParsedChain};
use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4c55_4c48; // "HULL"

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;

/// Register offsets of the virtio-mmio window.
pub mod reg {
    /// Magic value "virt".
    pub const MAGIC: u64 = 0x000;
    /// Version (2).
    pub const VERSION: u64 = 0x004;
    /// Device id.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id.
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features (32 bits selected by `DEVICE_FEATURES_SEL`).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device feature word selector.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver feature word selector.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue selector.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Selected queue ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notification.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low word.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high word.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low word.
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// Available ring address, high word.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// Used ring address, low word.
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// Used ring address, high word.
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// Configuration generation.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Saved registers of one queue.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueRegs {
    /// Size.
    pub size: u16,
    /// Ready.
    pub ready: bool,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Next available index the device will read.
    pub next_avail: u16,
    /// Next used index the device will write.
    pub next_used: u16,
}

/// Saved transport state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MmioState {
    /// Device status register.
    pub status: u32,
    /// Features the driver acked.
    pub driver_features: u64,
    /// Queue registers.
    pub queues: Vec<QueueRegs>,
    /// Pending interrupt status.
    pub interrupt_status: u32,
    /// Configuration generation.
    pub config_generation: u32,
}

/// A virtio device behind its virtio-mmio register window.
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
    notifier: Option<EventFd>,
}

impl MmioTransport {
    /// Wraps `device`; its interrupt raises `irq_evt`.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        irq_evt: EventFd,
    ) -> MmioTransport {
        let queues = Self::fresh_queues(device.as_ref());
        MmioTransport {
            mem,
            device,
            interrupt: Interrupt::new(irq_evt),
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            notifier: None,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max).expect("device queue sizes are powers of two"))
            .collect()
    }

    /// Hands QueueNotify writes that reach the transport (rather than KVM's ioeventfd) to the
    /// event loop through `evt`, so that device work always runs on the event loop thread.
    pub fn set_notifier(&mut self, evt: EventFd) {
        self.notifier = Some(evt);
    }

    /// The device model.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device model, mutable.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The interrupt line.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// Whether the driver has activated the device.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device model changed its configuration space: a new generation, and (once the
    /// driver runs the device) a configuration-change interrupt, on which it reads it again.
    /// Before DRIVER_OK the driver reads the configuration when it probes.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    /// Host fds of the device model.
    pub fn host_fds(&self) -> Vec<(RawFd, bool)> {
        if self.activated {
            self.device.host_fds()
        } else {
            Vec::new()
        }
    }

    /// The driver notified (through the ioeventfd, so the queue is unknown): process all queues.
    pub fn notify_all_queues(&mut self) {
        if self.activated {
            for i in 0..self.device.queue_max_sizes().len() {
                self.device.process_queue(i as u16);
            }
        }
    }

    /// Forwards a host event to the device model.
    pub fn process_host_event(&mut self, fd: RawFd, readable: bool, writable: bool) {
        if self.activated {
            self.device.process_host_event(fd, readable, writable);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        // Queue set-up is only allowed before DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            warn!(
                device = self.device.name(),
                "queue change after DRIVER_OK ignored"
            );
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn try_activate(&mut self) {
        if self.activated {
            return;
        }
        let ready = self
            .queues
            .iter()
            .all(|q| q.ready() && q.is_valid(&self.mem));
        if !ready {
            warn!(
                device = self.device.name(),
                "DRIVER_OK with invalid queues; device failed"
            );
            self.status |= STATUS_FAILED;
            return;
        }
        let queues = std::mem::take(&mut self.queues);
        match self
            .device
            .activate(self.mem.clone(), queues, self.interrupt.clone())
        {
            Ok(()) => {
                self.activated = true;
                debug!(device = self.device.name(), "activated");
            }
            Err(e) => {
                warn!(error = %e, "activation failed");
                self.queues = Self::fresh_queues(self.device.as_ref());
                self.status |= STATUS_FAILED;
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in the order the spec gives.
        let added = v & !self.status;
        if v & self.status != self.status {
            warn!(
                device = self.device.name(),
                status = v,
                "status bits cleared without reset"
            );
            return;
        }
        if added & STATUS_FEATURES_OK != 0
            && self.driver_features & !self.device.avail_features() != 0
        {
            warn!(
                device = self.device.name(),
                "driver acked features the device did not offer"
            );
            return;
        }
        self.status = v;
        if added & STATUS_FEATURES_OK != 0 {
            self.device.set_acked_features(self.driver_features);
        }
        if added & STATUS_DRIVER_OK != 0 {
            let needed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            if v & needed == needed {
                self.try_activate();
            } else {
                self.status |= STATUS_FAILED;
            }
        }
    }

    /// The transport state for a snapshot.
    pub fn state(&self) -> MmioState {
        let queues = if self.activated {
            self.device.queues()
        } else {
            &self.queues[..]
        };
        MmioState {
            status: self.status,
            driver_features: self.driver_features,
            queues: queues
                .iter()
                .map(|q| QueueRegs {
                    size: q.size(),
                    ready: q.ready(),
                    desc: q.desc_table(),
                    avail: q.avail_ring(),
                    used: q.used_ring(),
                    next_avail: q.next_avail(),
                    next_used: q.next_used(),
                })
                .collect(),
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
        }
    }

    /// Restores a saved state; re-activates the device if the driver had.
    pub fn restore(&mut self, s: &MmioState) {
        for (q, r) in self.queues.iter_mut().zip(&s.queues) {
            q.set_size(r.size);
            q.set_desc_table_address(Some(r.desc as u32), Some((r.desc >> 32) as u32));
            q.set_avail_ring_address(Some(r.avail as u32), Some((r.avail >> 32) as u32));
            q.set_used_ring_address(Some(r.used as u32), Some((r.used >> 32) as u32));
            q.set_next_avail(r.next_avail);
            q.set_next_used(r.next_used);
            q.set_ready(r.ready);
        }
        self.driver_features = s.driver_features;
        self.config_generation = s.config_generation;
        self.interrupt.set_status(s.interrupt_status);
        self.status = s.status;
        if s.status & STATUS_FEATURES_OK != 0 {
            self.device.set_acked_features(s.driver_features);
        }
        if s.status & STATUS_DRIVER_OK != 0 && s.status & STATUS_FAILED == 0 {
            self.try_activate();
            if self.activated {
                self.device.restored();
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            warn!(
                offset,
                len = data.len(),
                "virtio-mmio register read not 32-bit"
            );
            data.fill(0);
            return;
        }
        let features = self.device.avail_features() | VIRTIO_F_VERSION_1;
        let v: u32 = match offset {
            reg::MAGIC => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(offset, "read of unknown virtio-mmio register");
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            warn!(
                offset,
                len = data.len(),
                "virtio-mmio register write not 32-bit"
            );
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let lo = |q: &mut Queue, f: fn(&mut Queue, Option<u32>, Option<u32>)| f(q, Some(v), None);
        let hi = |q: &mut Queue, f: fn(&mut Queue, Option<u32>, Option<u32>)| f(q, None, Some(v));
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = v,
            reg::DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 {
                    warn!("feature write after FEATURES_OK ignored");
                } else {
                    match self.driver_features_select {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => {}
                    }
                }
            }
            reg::QUEUE_SEL => self.queue_select = v,
            reg::QUEUE_NUM => self.update_queue(|q| q.set_size(v as u16)),
            reg::QUEUE_READY => self.update_queue(|q| q.set_ready(v == 1)),
            reg::QUEUE_DESC_LOW => self.update_queue(|q| lo(q, Queue::set_desc_table_address)),
            reg::QUEUE_DESC_HIGH => self.update_queue(|q| hi(q, Queue::set_desc_table_address)),
            reg::QUEUE_AVAIL_LOW => self.update_queue(|q| lo(q, Queue::set_avail_ring_address)),
            reg::QUEUE_AVAIL_HIGH => self.update_queue(|q| hi(q, Queue::set_avail_ring_address)),
            reg::QUEUE_USED_LOW => self.update_queue(|q| lo(q, Queue::set_used_ring_address)),
            reg::QUEUE_USED_HIGH => self.update_queue(|q| hi(q, Queue::set_used_ring_address)),
            reg::QUEUE_NOTIFY => {
                if self.activated {
                    match &self.notifier {
                        Some(evt) => {
                            if let Err(e) = evt.write(1) {
                                warn!(error = %e, "cannot signal queue notification");
                            }
                        }
                        None => self.device.process_queue(v as u16),
                    }
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            _ => debug!(offset, "write to unknown virtio-mmio register"),
        }
    }
}

/// Pops every available chain of `queue`, validates it and hands it to `f`, which returns how
/// many bytes it wrote into the chain. Invalid chains are returned to the driver with length 0.
/// Returns whether anything was used (the caller then raises the interrupt).
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    device: &'static str,
    mut f: impl FnMut(&ParsedChain) -> Option<u32>,
) -> bool {
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let len = match parse_chain(chain) {
            Ok(parsed) => match f(&parsed) {
                Some(len) => len,
                None => {
                    // The device cannot take this chain now: leave it for later.
                    queue.go_to_previous_position();
                    break;
                }
            },
            Err(e) => {
                log_bad_chain(device, &e);
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            warn!(device, error = ?e, "cannot add to used ring");
            break;
        }
        used = true;
    }
    used
}

fn log_bad_chain(device: &'static str, e: &DescriptorError) {
    warn!(device, error = %e, "bad descriptor chain rejected");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use vm_memory::GuestAddress;

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identifies_and_negotiates_and_activates() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(mem, Box::new(Rng::new()), evt);
        assert_eq!(r(&mut t, reg::MAGIC), MMIO_MAGIC_VALUE);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), super::super::TYPE_RNG);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1); // VERSION_1
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE);
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(
            &mut t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 256);
        w(&mut t, reg::QUEUE_NUM, 16);
        w(&mut t, reg::QUEUE_DESC_LOW, 0x1000);
        w(&mut t, reg::QUEUE_AVAIL_LOW, 0x2000);
        w(&mut t, reg::QUEUE_USED_LOW, 0x3000);
        w(&mut t, reg::QUEUE_READY, 1);
        w(
            &mut t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(t.is_activated());
        let st = t.state();
        assert_eq!(st.queues[0].desc, 0x1000);
        assert_eq!(st.queues[0].size, 16);
        w(&mut t, reg::STATUS, 0);
        assert!(!t.is_activated());
        assert_eq!(r(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn a_filled_slot_raises_a_config_change_with_its_new_capacity() {
        use crate::devices::virtio::block::Block;
        use crate::devices::virtio::INT_CONFIG;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (block, slot) = Block::slot("hull-slot-0");
        let mut t = MmioTransport::new(mem, Box::new(block), evt.try_clone().unwrap());
        let capacity = |t: &mut MmioTransport| {
            let mut d = [0u8; 8];
            t.read(reg::CONFIG, &mut d);
            u64::from_le_bytes(d)
        };
        assert_eq!(capacity(&mut t), 0);
        // Before the driver runs the device: a new generation, no interrupt.
        t.config_changed();
        assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 1);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
        assert!(evt.read().is_err(), "no interrupt before DRIVER_OK");
        let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE);
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, reg::STATUS, ok);
        w(&mut t, reg::QUEUE_NUM, 16);
        w(&mut t, reg::QUEUE_DESC_LOW, 0x1000);
        w(&mut t, reg::QUEUE_AVAIL_LOW, 0x2000);
        w(&mut t, reg::QUEUE_USED_LOW, 0x3000);
        w(&mut t, reg::QUEUE_READY, 1);
        w(&mut t, reg::STATUS, ok | STATUS_DRIVER_OK);
        assert!(t.is_activated());

        let img = vmm_sys_util::tempfile::TempFile::new().unwrap();
        img.as_file().set_len(8192).unwrap();
        assert_eq!(slot.fill(img.as_path(), false).unwrap(), 16);
        t.config_changed();
        assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 2);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(capacity(&mut t), 16);
        w(&mut t, reg::INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);

        slot.empty();
        t.config_changed();
        assert_eq!(capacity(&mut t), 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
        // A missing image leaves the slot as it was.
        assert!(slot
            .fill(std::path::Path::new("/nonexistent.img"), false)
            .is_err());
        assert_eq!(slot.sectors(), 0);
    }

    #[test]
    fn driver_ok_with_unset_queue_fails_the_device() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(mem, Box::new(Rng::new()), evt);
        w(
            &mut t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(
            &mut t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(!t.is_activated());
        assert_ne!(r(&mut t, reg::STATUS) & STATUS_FAILED, 0);
    }
}
