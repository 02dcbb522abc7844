//! hull-container: one container driver for hull's two places that run containers, the host
//! pod (on the host kernel) and hull-agent (in a pod's VM). Its one job is driving
//! libcontainer: bundles and ids, the containers under a state root, the single-threaded
//! helper process that creates and execs, console sockets, cgroup stats and OOM counts.

#![warn(missing_docs)]

pub mod bundle;
pub mod console;
pub mod error;
pub mod id;
mod launch;
mod oom_killer;
pub mod options;
pub mod root;
mod seccomp;
pub mod signal;
pub mod spawn;
pub mod state;
pub mod stats;

pub use bundle::load_bundle_spec;
pub use error::{chain, Error, ErrorKind, Result};
pub use id::validate_id;
pub use options::{CreateOptions, ExecOptions, Stdio};
pub use root::ContainerRoot;
pub use state::{ContainerState, ExitStatus, Status, OCI_VERSION};
pub use stats::{OomCounter, Stats};
