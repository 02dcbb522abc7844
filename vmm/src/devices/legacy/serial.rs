//! 8250 UART (vm-superio) on COM1: output goes to the VMM's stdout (or any writer), input comes
//! from the event loop, the interrupt goes through an irqfd.

use std::io::Write;

use tracing::warn;
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::BusDevice;

/// The COM1 UART.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A UART raising `interrupt` and writing to `out`.
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> SerialDevice {
        SerialDevice {
            serial: Serial::new(interrupt, out),
        }
    }

    /// Queues host input for the guest; returns how many bytes fitted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "serial input dropped");
                0
            }
        }
    }

    /// The UART's register state (for snapshots).
    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.serial.state()
    }

    /// The interrupt eventfd.
    pub fn interrupt_evt(&self) -> &EventFdTrigger {
        self.serial.interrupt_evt()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.serial.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.serial.write(offset as u8, data[0]) {
                warn!(error = %e, "serial write failed");
            }
            if offset == 0 {
                let _ = self.serial.writer_mut().flush();
            }
        }
    }
}

impl SerialDevice {
    /// Loads the register state of a snapshot, keeping the interrupt line and the output.
    pub fn restore(&mut self, s: &crate::snapshot::SerialSnapshot) -> Result<(), String> {
        let clone = || {
            self.serial
                .interrupt_evt()
                .0
                .try_clone()
                .map(EventFdTrigger)
                .map_err(|e| e.to_string())
        };
        let (placeholder, trigger) = (clone()?, clone()?);
        let old = std::mem::replace(
            &mut self.serial,
            Serial::new(
                placeholder,
                Box::new(std::io::sink()) as Box<dyn Write + Send>,
            ),
        );
        let out = old.into_writer();
        let [dll, dlm, ier, iir, lcr, lsr, mcr, msr, scr] = s.regs;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlm,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: s.in_buffer.clone(),
        };
        self.serial = Serial::from_state(&state, trigger, vm_superio::serial::NoEvents, out)
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
