//! `hull kill`: a signal to the container's init, or with `--all` to every process of it.

use super::{Globals, Target};
use crate::error::Result;

/// `hull kill`.
pub fn run(g: &Globals, id: &str, signal: &str, all: bool) -> Result<i32> {
    let sig = hull_container::signal::parse(signal)?;
    Target::of(g, id).containers().kill(id, sig, all)?;
    Ok(0)
}
