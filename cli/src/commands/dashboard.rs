//! `hull dashboard`: runs `hull-dashboard` (its own binary, next to `hull`, so that hull
//! itself stays lean) with the state root and the arguments given.

use std::os::unix::process::CommandExt;

use super::Globals;
use crate::error::{Error, Result};

/// `hull dashboard ARGS...`: exec `hull-dashboard --root ROOT ARGS...`.
pub fn run(g: &Globals, args: &[String]) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::io("/proc/self/exe", e))?;
    let dashboard = exe.with_file_name("hull-dashboard");
    if !dashboard.is_file() {
        return Err(Error::InvalidInput(format!(
            "dashboard: {} not found (build it: cargo build -p hull-dashboard)",
            dashboard.display()
        )));
    }
    let e = std::process::Command::new(&dashboard)
        .arg("--root")
        .arg(&g.root)
        .args(args)
        .exec();
    Err(Error::io(dashboard, e))
}
