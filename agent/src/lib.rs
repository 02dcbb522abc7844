//! hull-agent: PID 1 of the pod VM. It takes orders from the host runtime over ttrpc (vsock,
//! virtio-serial or a unix socket) and creates the pod's containers with libcontainer.

#![warn(missing_docs)]

pub mod agent;
pub mod container;
pub mod error;
pub mod helper;
pub mod init;
pub mod mounts;
pub mod netns;
pub mod network;
pub mod paths;
pub mod process;
pub mod reaper;
pub mod server;
pub mod sysinfo;
pub mod transport;

pub use agent::{Agent, AgentConfig};
pub use error::AgentError;
