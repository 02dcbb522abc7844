//! hull-runtime: the runtime library every front of hull drives. Its one job is pods: a pod's
//! isolation (the host kernel, or a VM of its own through `hull-hypervisor` and the guest
//! agent), the containers in it ([`pod::Pod`], [`pod::Containers`]), and the typed config
//! that chooses between them ([`config`]).

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod pod;

pub use error::{Error, Result};
