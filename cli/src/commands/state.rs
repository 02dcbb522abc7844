//! `hull state`: the container's state as OCI state JSON.

use super::{Globals, Target};
use crate::error::Result;

/// `hull state`.
pub fn run(g: &Globals, id: &str) -> Result<i32> {
    let st = Target::of(g, id).containers().state(id)?;
    println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
    Ok(0)
}
