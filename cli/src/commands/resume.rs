//! `hull resume`: thaw a paused container.

use super::{Globals, Target};
use crate::error::Result;

/// `hull resume`.
pub fn run(g: &Globals, id: &str) -> Result<i32> {
    Target::of(g, id).containers().resume(id)?;
    Ok(0)
}
