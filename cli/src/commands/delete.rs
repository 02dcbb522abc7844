//! `hull delete`: remove a stopped or created container (any, with `--force`, killing it
//! first; as runc, `--force` of a container that does not exist is no error).

use hull_runtime::error::ErrorKind;

use super::{Globals, Target};
use crate::error::Result;

/// `hull delete`.
pub fn run(g: &Globals, id: &str, force: bool) -> Result<i32> {
    match Target::of(g, id).containers().delete(id, force) {
        Err(e) if force && e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(0),
    }
}
