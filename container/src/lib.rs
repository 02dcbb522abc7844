//! hull-container: one container driver for hull's two places that run containers, the host
//! pod (on the host kernel) and hull-agent (in a pod's VM). Its one job is driving
//! libcontainer: bundles and ids, the containers under a state root, the single-threaded
//! helper process that creates and execs, console sockets, signals, the lenient hooks,
//! cgroup stats and OOM counts.

#![warn(missing_docs)]

pub mod bundle;
pub mod checkpoint;
pub mod console;
pub mod error;
pub mod hooks;
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

/// The `tracing` target of warnings meant for the person who ran the command (a failing
/// poststart or poststop hook): a front shows them even where it logs nothing else.
pub const USER_WARNING: &str = "hull_user_warning";

pub use bundle::load_bundle_spec;
pub use error::{chain, Error, ErrorKind, Result};
pub use id::validate_id;
pub use options::{CreateOptions, ExecOptions, Stdio};
pub use root::ContainerRoot;
pub use signal::Sig;
pub use state::{ContainerState, ExitStatus, Status, OCI_VERSION};
pub use stats::{OomCounter, Stats};
