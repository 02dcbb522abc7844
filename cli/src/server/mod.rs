//! The CLI's sandbox server: what keeps a vm container's VM alive between the one-shot verbs
//! of Docker and Podman (`create`, `start`, `exec`, `kill`, `delete`, ...).
//!
//! `hull create` of a vm container starts `hull sandbox-server` detached. The server owns the
//! pod (a [`hull_runtime::pod::VmPod`]), creates the container with the stdio `create` was
//! given, and serves the later verbs on a unix socket by the container's state dir until the
//! container is deleted. Where each part lives:
//!
//! - `wire.rs`: the typed calls, answers and failures, and how they cross the socket;
//! - `client.rs`: [`ServedContainer`], the verbs' side, one container as the pod seam's
//!   `Containers` (so the verbs are written once for host and vm);
//! - `serve.rs`: the server, from start-up (reported to `create` on a pipe) to delete;
//! - `mirror.rs`: the host processes that stand for guest processes, so that the callers'
//!   subreapers have a pid to wait for;
//! - `record.rs`: what the container keeps on disk, and the clean-up after a dead server.

mod client;
mod mirror;
mod record;
mod serve;
mod wire;

pub use client::ServedContainer;
pub use record::is_vm_container;
pub use serve::{serve_main, ServerArgs};
pub use wire::Mirrored;
