//! `hull features`: the OCI runtime-features document.

use crate::error::Result;

/// `hull features`.
pub fn run() -> Result<i32> {
    println!(
        "{}",
        serde_json::to_string_pretty(&crate::spec::features()).unwrap_or_default()
    );
    Ok(0)
}
