//! `hull pause`: freeze every process of the container.

use super::{Globals, Target};
use crate::error::Result;

/// `hull pause`.
pub fn run(g: &Globals, id: &str) -> Result<i32> {
    Target::of(g, id).containers().pause(id)?;
    Ok(0)
}
