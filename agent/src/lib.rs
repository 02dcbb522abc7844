//! hull-agent: PID 1 of a pod's VM. Its one job is carrying out the host's orders inside the
//! guest: it serves the agent API (hull-protocols) over ttrpc (vsock, virtio-serial or a unix
//! socket), sets the guest up (mounts, network, clock, entropy), and runs the pod's containers
//! through hull-container's driver, keeping what only the guest has: the processes it started
//! and their streams, reaping as PID 1, and the pod's network namespace.

#![warn(missing_docs)]

pub mod agent;
pub mod container;
pub mod devices;
pub mod error;
pub mod init;
pub mod mounts;
pub mod netns;
pub mod paths;
pub mod process;
pub mod reaper;
pub mod server;
pub mod sysinfo;
pub mod transport;

pub use agent::{Agent, AgentConfig};
pub use error::AgentError;
