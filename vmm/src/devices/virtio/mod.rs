//! Virtio devices over the virtio-mmio transport: the device trait, interrupts, descriptor
//! chain validation, and one folder per device.

pub mod block;
pub mod console;
pub mod descriptor;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

#[cfg(test)]
pub mod test_utils;

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// `VIRTIO_F_VERSION_1`: the modern (non-legacy) interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device id of net.
pub const TYPE_NET: u32 = 1;
/// Device id of block.
pub const TYPE_BLOCK: u32 = 2;
/// Device id of console.
pub const TYPE_CONSOLE: u32 = 3;
/// Device id of the entropy source.
pub const TYPE_RNG: u32 = 4;
/// Device id of vsock.
pub const TYPE_VSOCK: u32 = 19;
/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 0x2;

/// Errors of virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The backing file or device could not be opened.
    #[error("cannot open {what} {name}: {source}")]
    Open {
        /// Kind of backend.
        what: &'static str,
        /// Its name or path.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The driver activated the device with unusable queues.
    #[error("{device}: cannot activate: {reason}")]
    Activate {
        /// Device name.
        device: &'static str,
        /// Why.
        reason: String,
    },
}

/// The interrupt line of one virtio-mmio device: status bits plus the irqfd.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt raising `evt` (registered as irqfd by the VMM).
    pub fn new(evt: EventFd) -> Interrupt {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    /// Tells the driver a used ring changed.
    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!(error = %e, "cannot raise virtio interrupt");
        }
    }

    /// Tells the driver the device's configuration space changed (a disk's capacity).
    pub fn signal_config_change(&self) {
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!(error = %e, "cannot raise virtio interrupt");
        }
    }

    /// Current interrupt status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledges `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Restores the status bits (snapshots).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The eventfd behind the line.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }
}

/// What an activated device works with: guest memory, its queues and its interrupt line.
pub type Activation = (GuestMemoryMmap, Vec<Queue>, Interrupt);

/// For [`VirtioDevice::activate`]: the activation to keep, once the driver has given `device`
/// as many queues as its [`VirtioDevice::queue_max_sizes`] lists.
pub fn activation(
    device: &dyn VirtioDevice,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Interrupt,
) -> Result<Activation, VirtioError> {
    let want = device.queue_max_sizes().len();
    if queues.len() != want {
        return Err(VirtioError::Activate {
            device: device.name(),
            reason: format!("needs {want} queue(s), got {}", queues.len()),
        });
    }
    Ok((mem, queues, interrupt))
}

/// For [`VirtioDevice::read_config`]: reads a configuration space laid out as `cfg` at
/// `offset`; bytes past its end read as zero.
pub fn read_config_bytes(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| cfg.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Short name for logs and errors.
    fn name(&self) -> &'static str;
    /// Virtio device id.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver.
    fn avail_features(&self) -> u64;
    /// Features the driver accepted.
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: start using `queues`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError>;
    /// The driver notified queue `index`.
    fn process_queue(&mut self, index: u16);
    /// Host fds the event loop should watch: (fd, also for writability).
    fn host_fds(&self) -> Vec<(RawFd, bool)> {
        Vec::new()
    }
    /// A watched host fd is ready.
    fn process_host_event(&mut self, _fd: RawFd, _readable: bool, _writable: bool) {}
    /// The driver reset the device: drop the queues.
    fn reset(&mut self);
    /// The device was re-activated from a snapshot (its host-side state is gone).
    fn restored(&mut self) {}
    /// The activated queues (for snapshots).
    fn queues(&self) -> &[Queue] {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let cfg = [1, 2, 3, 4];
        let mut data = [0xff; 4];
        read_config_bytes(&cfg, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&[], 0, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn activation_needs_every_queue() {
        let dev = rng::Rng::new();
        let mem = crate::vstate::memory::create_guest_memory(1 << 20).unwrap();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let Err(e) = activation(&dev, mem.clone(), Vec::new(), irq.clone()) else {
            panic!("activated without its queue");
        };
        assert_eq!(
            e.to_string(),
            "virtio-rng: cannot activate: needs 1 queue(s), got 0"
        );
        let q = <Queue as virtio_queue::QueueT>::new(256).unwrap();
        assert_eq!(activation(&dev, mem, vec![q], irq).unwrap().1.len(), 1);
    }
}
