//! `containerd-shim-hull-v2`: containerd's task API (shim v2) for hull.
//!
//! Its one job is translating: one shim process per pod serves containerd's task API for
//! every container of the pod through the pod seam of `hull-runtime` (`Pod`, `Containers`),
//! host and vm isolation alike.

#![warn(missing_docs)]

pub mod any;
pub mod config;
pub mod error;
pub mod events;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod reaper;
pub mod rootfs;
pub mod service;
pub mod shim;

/// The runtime name containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.hull.v2";
