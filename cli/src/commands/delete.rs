//! `hull delete`: remove a stopped container (any, with `--force`, killing it first).

use super::{Globals, Target};
use crate::error::Result;

/// `hull delete`.
pub fn run(g: &Globals, id: &str, force: bool) -> Result<i32> {
    Target::of(g, id).containers().delete(id, force)?;
    Ok(0)
}
