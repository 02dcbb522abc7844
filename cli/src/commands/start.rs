//! `hull start`: let a created container's init run the user process.

use super::{Globals, Target};
use crate::error::Result;

/// `hull start`.
pub fn run(g: &Globals, id: &str) -> Result<i32> {
    Target::of(g, id).containers().start(id)?;
    Ok(0)
}
