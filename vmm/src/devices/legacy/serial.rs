//! 8250 UART (vm-superio) on COM1: output goes to the VMM's stdout (or any writer), input comes
//! from the event loop, the interrupt goes through an irqfd. Its snapshot state
//! ([`SerialSnapshot`]) and save/restore live here, beside the device.

use std::io::Write;

use serde::{Deserialize, Serialize};
use tracing::warn;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::BusDevice;

/// The COM1 UART.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

/// The 8250's registers, as a snapshot holds them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SerialSnapshot {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub regs: [u8; 9],
    /// Bytes waiting for the guest.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> SerialSnapshot {
        SerialSnapshot {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> SerialState {
        let [dll, dlm, ier, iir, lcr, lsr, mcr, msr, scr] = s.regs;
        SerialState {
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
        }
    }
}

/// Errors while restoring the UART from a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The interrupt eventfd could not be duplicated for the restored UART.
    #[error("{0}")]
    CloneInterrupt(std::io::Error),
    /// vm-superio refused the saved registers (e.g. more input than its FIFO holds).
    #[error("{0}")]
    State(vm_superio::serial::Error<std::io::Error>),
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
    pub fn state(&self) -> SerialState {
        self.serial.state()
    }

    /// The UART's state as a snapshot holds it.
    pub fn save(&self) -> SerialSnapshot {
        self.serial.state().into()
    }

    /// Loads the register state of a snapshot, keeping the interrupt line and the output. On
    /// an error the UART is left as it was.
    pub fn restore(&mut self, s: &SerialSnapshot) -> Result<(), SerialError> {
        let state = SerialState::from(s);
        let clone = || {
            self.serial
                .interrupt_evt()
                .0
                .try_clone()
                .map(EventFdTrigger)
                .map_err(SerialError::CloneInterrupt)
        };
        let (placeholder, trigger) = (clone()?, clone()?);
        // Check the state on a throwaway UART first: the real one takes the output writer,
        // which a refused state would lose.
        let sink = || Box::new(std::io::sink()) as Box<dyn Write + Send>;
        Serial::from_state(&state, clone()?, NoEvents, sink()).map_err(SerialError::State)?;
        let old = std::mem::replace(&mut self.serial, Serial::new(placeholder, sink()));
        self.serial = Serial::from_state(&state, trigger, NoEvents, old.into_writer())
            .map_err(SerialError::State)?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn uart() -> SerialDevice {
        SerialDevice::new(EventFdTrigger::new().unwrap(), Box::new(std::io::sink()))
    }

    #[test]
    fn save_restore_round_trip_keeps_registers_and_input() {
        let mut a = uart();
        // LCR with DLAB set, divisor 0x0c01, then LCR 8N1, IER, MCR, scratch.
        for (off, v) in [
            (3, 0x80),
            (0, 0x01),
            (1, 0x0c),
            (3, 0x03),
            (1, 0x01),
            (4, 0x0b),
            (7, 0x5a),
        ] {
            a.write(off, &[v]);
        }
        assert_eq!(a.enqueue_input(b"hi"), 2);
        let saved = a.save();
        assert_eq!(saved.regs[0..2], [0x01, 0x0c]);
        assert_eq!(saved.in_buffer, b"hi");

        let mut b = uart();
        b.restore(&saved).unwrap();
        assert_eq!(b.save(), saved);
        assert_eq!(b.state(), a.state());
        let mut scratch = [0];
        b.read(7, &mut scratch);
        assert_eq!(scratch, [0x5a]);
    }

    #[test]
    fn refused_state_leaves_the_uart_as_it_was() {
        let mut a = uart();
        a.write(7, &[0x42]);
        let before = a.save();
        let too_much = SerialSnapshot {
            in_buffer: vec![0; 4096],
            ..before.clone()
        };
        assert!(matches!(a.restore(&too_much), Err(SerialError::State(_))));
        assert_eq!(a.save(), before);
    }
}
