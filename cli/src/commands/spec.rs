//! `hull spec`: a starting config.json in the bundle.

use std::path::Path;

use crate::error::{Error, Result};

/// `hull spec`.
pub fn run(rootless: bool, bundle: &Path) -> Result<i32> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(Error::InvalidInput(format!(
            "{} exists already: remove it first",
            path.display()
        )));
    }
    let text = serde_json::to_string_pretty(&crate::spec::default_spec(rootless))
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(0)
}
