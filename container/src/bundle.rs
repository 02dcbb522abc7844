//! OCI bundles: a directory holding config.json and (usually) the root filesystem.

use std::fs;
use std::path::Path;

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

/// Read and check a bundle's config.json without side effects.
pub fn load_bundle_spec(bundle: &Path) -> Result<Spec> {
    if !bundle.is_dir() {
        return Err(Error::BundleMissing(bundle.to_path_buf()));
    }
    let path = bundle.join("config.json");
    let text = fs::read(&path).map_err(|e| Error::InvalidConfig {
        bundle: bundle.to_path_buf(),
        reason: e.to_string(),
    })?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|e| Error::InvalidConfig {
        bundle: bundle.to_path_buf(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| Error::InvalidConfig {
        bundle: bundle.to_path_buf(),
        reason,
    };
    if !spec.version().starts_with("1.") {
        return Err(invalid(format!(
            "ociVersion {:?} is not supported (1.x only)",
            spec.version()
        )));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("no root".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(invalid(format!(
            "root.path {} is not a directory",
            rootfs.display()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("no process".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args must not be empty".into()));
    }
    if spec.linux().is_none() {
        return Err(invalid("no linux section".into()));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_bundle_and_bad_config() {
        let d = std::env::temp_dir().join(format!("hull-ut-{}", std::process::id()));
        assert!(matches!(load_bundle_spec(&d), Err(Error::BundleMissing(_))));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("config.json"), b"{not json").unwrap();
        let e = load_bundle_spec(&d).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
