//! Snapshots: vCPU registers/LAPIC/MSRs, the in-kernel irqchip (PIC master, PIC slave,
//! IOAPIC), PIT and clock, the serial UART, virtio-mmio transports, and guest memory, written
//! to `vm.json` and `memory.bin` in a directory; restore rebuilds an identical VM that continues
//! where the snapshot was taken.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

use crate::arch::cpuid;
use crate::builder::{BuildError, VmConfig, Vmm};
pub use crate::devices::legacy::serial::SerialSnapshot;
use crate::devices::virtio::mmio::MmioState;
use crate::vstate::memory;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::{KvmVmState, VmError};

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
    /// Building the VM for restore failed.
    #[error("cannot rebuild VM for restore: {0}")]
    Build(Box<BuildError>),
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

/// Writes the state of a paused `vmm` (with its vCPU states) into `dir`.
pub fn save(vmm: &mut Vmm, vcpus: Vec<VcpuState>, dir: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mem_mib = vmm.config().mem_mib;
    let (vm, mem, _, serial, virtio) = vmm.parts_mut();
    let KvmVmState {
        irqchips,
        pit,
        clock,
    } = vm.save_state()?;
    let serial = serial.lock().expect("serial lock").save();
    let virtio = virtio
        .iter()
        .map(|v| v.transport.lock().expect("transport lock").state())
        .collect();
    let state = VmState {
        mem_mib,
        vcpus,
        irqchips,
        pit,
        clock,
        serial,
        virtio,
    };

    let mem_path = dir.join(MEMORY_FILE);
    let mut f = File::create(&mem_path).map_err(io_err(&mem_path))?;
    memory::dump(mem, &mut f)?;
    let state_path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    serde_json::to_writer(&mut f, &state).map_err(SnapshotError::Format)?;
    f.flush().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &state_path).map_err(io_err(&state_path))?;
    Ok(())
}

/// Rebuilds a VM from `dir`: same devices as `config` describes, memory and state from the
/// snapshot. The vCPUs start with [`Vmm::start`] / [`Vmm::run`].
pub fn restore(
    dir: &Path,
    mut config: VmConfig,
    serial_out: Box<dyn Write + Send>,
) -> Result<Vmm, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let f = File::open(&state_path).map_err(io_err(&state_path))?;
    let state: VmState =
        serde_json::from_reader(std::io::BufReader::new(f)).map_err(SnapshotError::Format)?;
    config.mem_mib = state.mem_mib;
    config.vcpus = u8::try_from(state.vcpus.len())
        .map_err(|_| SnapshotError::Mismatch(format!("{} vCPUs", state.vcpus.len())))?;
    let mut vmm =
        Vmm::build_machine(config, serial_out).map_err(|e| SnapshotError::Build(Box::new(e)))?;
    vmm.create_vcpus()
        .map_err(|e| SnapshotError::Build(Box::new(e)))?;
    let kvm_cpuid =
        cpuid::supported_cpuid(vmm.vm().kvm()).map_err(|e| SnapshotError::Vcpu(e.into()))?;
    let count = vmm.config().vcpus;
    let virtio_len = vmm.virtio_devices().len();
    if virtio_len != state.virtio.len() {
        return Err(SnapshotError::Mismatch(format!(
            "snapshot has {} virtio devices, configuration {}",
            state.virtio.len(),
            virtio_len
        )));
    }
    let (vm, mem, vcpus, serial, virtio) = vmm.parts_mut();

    let mem_path = dir.join(MEMORY_FILE);
    let mut f = File::open(&mem_path).map_err(io_err(&mem_path))?;
    memory::load(mem, &mut f)?;

    // The irqchip before the LAPICs, as KVM routes through it.
    vm.restore_state(&KvmVmState {
        irqchips: state.irqchips,
        pit: state.pit,
        clock: state.clock,
    })?;
    for (vcpu, s) in vcpus.iter().zip(&state.vcpus) {
        cpuid::setup_cpuid(vcpu.fd(), &kvm_cpuid, vcpu.id(), count)
            .map_err(|e| SnapshotError::Vcpu(e.into()))?;
        vcpu.restore_state(s)?;
    }
    serial
        .lock()
        .expect("serial lock")
        .restore(&state.serial)
        .map_err(|e| SnapshotError::Mismatch(format!("serial state: {e}")))?;
    for (slot, s) in virtio.iter().zip(&state.virtio) {
        slot.transport.lock().expect("transport lock").restore(s);
    }
    Ok(vmm)
}
