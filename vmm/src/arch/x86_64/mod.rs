//! x86-64: memory layout, boot protocols (Linux 64-bit and PVH), GDT, page tables, CPUID, MSRs
//! and the MP table.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
