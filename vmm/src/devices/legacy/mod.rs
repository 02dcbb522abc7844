//! Legacy PC devices: the 8250 UART on COM1 and the i8042 controller (reset line).

pub mod i8042;
pub mod serial;

use vmm_sys_util::eventfd::EventFd;

/// An `EventFd` as a vm-superio interrupt or reset trigger.
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl EventFdTrigger {
    /// Wraps a new non-blocking eventfd.
    pub fn new() -> std::io::Result<EventFdTrigger> {
        Ok(EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK)?))
    }
}
