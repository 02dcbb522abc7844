//! hull runtime library: the `Sandbox` seam, its host backend on libcontainer,
//! and the runc-compatible command line.

pub mod agent_client;
pub mod cli;
pub mod config;
pub mod error;
pub mod hypervisor;
pub mod sandbox;
pub mod server;
pub mod signal;
pub mod spec;

pub use error::{Error, Result};
pub use sandbox::{HostSandbox, Sandbox};
