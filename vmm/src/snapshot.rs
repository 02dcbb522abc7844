//! Snapshots: vCPU registers/LAPIC/MSRs, the in-kernel irqchip (PIC master, PIC slave,
//! IOAPIC), PIT and clock, the serial UART, virtio-mmio transports, and guest memory, written
//! to `vm.json` and `memory.bin` in a directory; restore loads them into a freshly built VM
//! that continues where the snapshot was taken.
//!
//! Each part saves and restores its own state beside its code ([`Vcpu::save_state`],
//! [`Vm::save_state`], [`SerialDevice::save`], [`MmioTransport::state`], [`memory::dump`]);
//! this module only composes those states into the [`VmState`] file format and back. It sees
//! the parts of a VM ([`VmParts`]), never the builder: the builder's `Vmm::snapshot` and
//! `Vmm::restore` call into it, in that one direction.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use crate::arch::cpuid;
use crate::devices::legacy::serial::SerialDevice;
pub use crate::devices::legacy::serial::SerialSnapshot;
use crate::devices::virtio::mmio::{MmioState, MmioTransport};
use crate::vstate::memory;
use crate::vstate::vcpu::{Vcpu, VcpuState};
use crate::vstate::vm::{KvmVmState, Vm, VmError};

/// Errors while saving or restoring.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File I/O failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state file is not valid.
    #[error("snapshot state file is invalid: {0}")]
    Format(serde_json::Error),
    /// Reading or loading the irqchip, PIT or clock failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Memory dump or load failed.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// The snapshot does not fit the VM being restored.
    #[error("snapshot does not match: {0}")]
    Mismatch(String),
    /// A vCPU could not be restored.
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
}

/// Everything but memory.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// vCPU states, by index.
    pub vcpus: Vec<VcpuState>,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
    /// COM1.
    pub serial: SerialSnapshot,
    /// virtio-mmio transports, by slot.
    pub virtio: Vec<MmioState>,
}

const STATE_FILE: &str = "vm.json";
const MEMORY_FILE: &str = "memory.bin";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The parts of a built VM whose state a snapshot holds (its vCPUs come separately: running
/// ones answer through their threads, restored ones are not started yet).
pub struct VmParts<'a> {
    /// The KVM VM (irqchip, PIT, kvmclock).
    pub vm: &'a Vm,
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// COM1.
    pub serial: &'a Mutex<SerialDevice>,
    /// virtio-mmio transports, by slot.
    pub virtio: Vec<&'a Mutex<MmioTransport>>,
}

impl VmState {
    /// Gathers the state of paused `parts`, with their vCPUs' states, by index.
    pub fn save(parts: &VmParts, vcpus: Vec<VcpuState>) -> Result<VmState, SnapshotError> {
        let KvmVmState {
            irqchips,
            pit,
            clock,
        } = parts.vm.save_state()?;
        Ok(VmState {
            mem_mib: memory::total_size(parts.mem) >> 20,
            vcpus,
            irqchips,
            pit,
            clock,
            serial: parts.serial.lock().expect("serial lock").save(),
            virtio: parts
                .virtio
                .iter()
                .map(|t| t.lock().expect("transport lock").state())
                .collect(),
        })
    }

    /// How many vCPUs the snapshot has.
    pub fn vcpu_count(&self) -> Result<u8, SnapshotError> {
        u8::try_from(self.vcpus.len())
            .map_err(|_| SnapshotError::Mismatch(format!("{} vCPUs", self.vcpus.len())))
    }

    /// Loads the state into `parts` and `vcpus`, built for it (same memory size, vCPU count
    /// and devices) but not started; guest memory comes from `dir`.
    pub fn restore(self, dir: &Path, parts: &VmParts, vcpus: &[Vcpu]) -> Result<(), SnapshotError> {
        if parts.virtio.len() != self.virtio.len() {
            return Err(SnapshotError::Mismatch(format!(
                "snapshot has {} virtio devices, configuration {}",
                self.virtio.len(),
                parts.virtio.len()
            )));
        }
        if vcpus.len() != self.vcpus.len() {
            return Err(SnapshotError::Mismatch(format!(
                "snapshot has {} vCPUs, the VM {}",
                self.vcpus.len(),
                vcpus.len()
            )));
        }
        let count = self.vcpu_count()?;
        let kvm_cpuid =
            cpuid::supported_cpuid(parts.vm.kvm()).map_err(|e| SnapshotError::Vcpu(e.into()))?;

        let mem_path = dir.join(MEMORY_FILE);
        let mut f = File::open(&mem_path).map_err(io_err(&mem_path))?;
        memory::load(parts.mem, &mut f)?;

        // The irqchip before the LAPICs, as KVM routes through it.
        parts.vm.restore_state(&KvmVmState {
            irqchips: self.irqchips,
            pit: self.pit,
            clock: self.clock,
        })?;
        for (vcpu, s) in vcpus.iter().zip(&self.vcpus) {
            vcpu.restore(&kvm_cpuid, count, s)?;
        }
        parts
            .serial
            .lock()
            .expect("serial lock")
            .restore(&self.serial)
            .map_err(|e| SnapshotError::Mismatch(format!("serial state: {e}")))?;
        for (transport, s) in parts.virtio.iter().zip(&self.virtio) {
            transport.lock().expect("transport lock").restore(s);
        }
        Ok(())
    }
}

/// Writes the state of paused `parts` (with their vCPUs' states) into `dir`: guest memory to
/// `memory.bin`, then the rest to `vm.json`, replaced whole.
pub fn save(dir: &Path, parts: &VmParts, vcpus: Vec<VcpuState>) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let state = VmState::save(parts, vcpus)?;
    let mem_path = dir.join(MEMORY_FILE);
    let mut f = File::create(&mem_path).map_err(io_err(&mem_path))?;
    memory::dump(parts.mem, &mut f)?;
    let state_path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    serde_json::to_writer(&mut f, &state).map_err(SnapshotError::Format)?;
    f.flush().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &state_path).map_err(io_err(&state_path))?;
    Ok(())
}

/// Reads the state file (`vm.json`) of the snapshot in `dir`.
pub fn load(dir: &Path) -> Result<VmState, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let f = File::open(&state_path).map_err(io_err(&state_path))?;
    serde_json::from_reader(std::io::BufReader::new(f)).map_err(SnapshotError::Format)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vm.json's fields are the snapshot format: existing snapshots must still load.
    #[test]
    fn state_file_keeps_its_fields() {
        let state = VmState {
            mem_mib: 16,
            vcpus: Vec::new(),
            irqchips: vec![kvm_irqchip::default(); 3],
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data::default(),
            serial: SerialSnapshot {
                regs: [1, 2, 3, 4, 5, 6, 7, 8, 9],
                in_buffer: b"in".to_vec(),
            },
            virtio: Vec::new(),
        };
        let json = serde_json::to_value(&state).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["clock", "irqchips", "mem_mib", "pit", "serial", "vcpus", "virtio"]
        );
        assert_eq!(
            json["serial"],
            serde_json::json!({"regs": [1, 2, 3, 4, 5, 6, 7, 8, 9], "in_buffer": [105, 110]})
        );
        let back: VmState = serde_json::from_value(json).unwrap();
        assert_eq!(back.mem_mib, 16);
        assert_eq!(back.serial, state.serial);
        assert_eq!(back.vcpu_count().unwrap(), 0);
    }
}
