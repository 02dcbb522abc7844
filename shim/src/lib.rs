//! `containerd-shim-hull-v2`: containerd's task API (shim v2) for hull.
//!
//! The shim is the pod's sandbox server: one shim process per pod serves the task API
//! for every container of the pod through the `Sandbox` seam of `hull-runtime`.

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
pub mod spawn;

/// The runtime name containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.hull.v2";
