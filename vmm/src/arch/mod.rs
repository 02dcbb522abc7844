//! Architecture specifics: guest memory layout, boot protocols and vCPU register set-up.

pub mod x86_64;

pub use self::x86_64::*;
