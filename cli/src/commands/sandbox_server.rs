//! `hull sandbox-server` (hidden): started by a detached `create` of a vm container, it owns
//! the container's VM and serves the later verbs (see `crate::server`).

use std::os::fd::RawFd;
use std::path::PathBuf;

use hull_runtime::config::Config;

use super::Globals;
use crate::error::Result;
use crate::server;

/// `hull sandbox-server`: never returns (the server exits when its container is deleted).
pub fn run(
    g: &Globals,
    id: String,
    bundle: PathBuf,
    console_socket: Option<PathBuf>,
    ready_fd: RawFd,
    restore: Option<PathBuf>,
) -> Result<i32> {
    let (cfg, _) = Config::load_or_default(g.config.as_deref())?;
    server::serve_main(server::ServerArgs {
        root: g.root.clone(),
        id,
        bundle,
        console_socket,
        vm: cfg.vm,
        ready_fd,
        restore,
    })
}
