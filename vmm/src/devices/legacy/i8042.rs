//! The i8042 keyboard controller, kept for its reset line: the guest writing 0xFE to port 0x64
//! (Linux's `reboot=k`) ends the VM.

use tracing::warn;
use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::devices::BusDevice;

/// The i8042 at ports 0x60..=0x64.
pub struct I8042 {
    dev: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// An i8042 that signals `reset` when the guest pulses the CPU reset line.
    pub fn new(reset: EventFdTrigger) -> I8042 {
        I8042 {
            dev: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.dev.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            if let Err(e) = self.dev.write(offset as u8, data[0]) {
                warn!(error = ?e, "i8042 reset signal failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_triggers_the_reset_event() {
        let reset = EventFdTrigger::new().unwrap();
        let evt = reset.0.try_clone().unwrap();
        let mut dev = I8042::new(reset);
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
