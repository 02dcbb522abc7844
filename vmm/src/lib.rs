//! hull-vmm: hull's built-in virtual machine monitor on KVM, built from rust-vmm crates.
//!
//! Cut by concern like Firecracker: [`arch`] (boot layout, page tables, CPUID, MSRs, boot
//! protocols), [`vstate`] (memory, VM, vCPUs), [`devices`] (legacy and virtio), and
//! [`builder`] which wires them into a running [`builder::Vmm`]. Each part keeps the state it
//! must save beside its code; [`snapshot`] only composes those states into the snapshot files.

#![warn(missing_docs)]

pub mod api;
pub mod arch;
pub mod builder;
pub mod devices;
pub mod seccomp;
pub mod snapshot;
pub mod vstate;

pub use builder::{BlockConfig, BuildError, NetFdConfig, SlotConfig, VmResources, Vmm};
pub use vstate::vcpu::VmExit;
