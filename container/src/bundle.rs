//! OCI bundles: a directory holding config.json and (usually) the root filesystem.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec, User};

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
    if spec.root().is_none() {
        return Err(invalid("no root".into()));
    }
    let rootfs = rootfs_of(bundle, &spec);
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
    check_user(process.user()).map_err(invalid)?;
    if spec.linux().is_none() {
        return Err(invalid("no linux section".into()));
    }
    Ok(spec)
}

/// What must be there before libcontainer builds the container from `spec` (of `bundle`),
/// done or checked here so that a failure names its cause: the process's cwd is made in the
/// rootfs when missing (as runc does), and every bind mount's source must exist.
pub(crate) fn prepare_paths(bundle: &Path, spec: &Spec) -> Result<()> {
    let invalid = |reason: String| Error::InvalidConfig {
        bundle: bundle.to_path_buf(),
        reason,
    };
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if let (true, Some(src)) = (bind, m.source()) {
            let src = if src.is_relative() {
                bundle.join(src)
            } else {
                src.clone()
            };
            if fs::symlink_metadata(&src).is_err() {
                return Err(invalid(format!(
                    "mounts[{i}] {}: bind source {} does not exist",
                    m.destination().display(),
                    src.display()
                )));
            }
        }
    }
    let Some(cwd) = spec.process().as_ref().map(|p| p.cwd().clone()) else {
        return Ok(());
    };
    if !cwd.is_absolute() {
        return Err(invalid(format!(
            "process.cwd {} is not an absolute path",
            cwd.display()
        )));
    }
    let rootfs = rootfs_of(bundle, spec);
    make_cwd(&rootfs, &cwd).map_err(invalid)
}

/// The rootfs directory of `spec` (of `bundle`): `root.path`, relative to the bundle unless
/// absolute (`rootfs` when the spec names none).
pub(crate) fn rootfs_of(bundle: &Path, spec: &Spec) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

/// Makes directory `cwd` (absolute, in the container) under `rootfs`, component by
/// component, never through a symlink (one in the way is left for the container's own
/// resolution at chdir) nor out of the rootfs.
fn make_cwd(rootfs: &Path, cwd: &Path) -> std::result::Result<(), String> {
    use std::path::Component;
    let mut at = rootfs.to_path_buf();
    for c in cwd.components() {
        match c {
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("process.cwd {} leaves the rootfs", cwd.display()))
            }
            Component::Normal(name) => at.push(name),
        }
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => return Ok(()),
            Ok(_) => {
                return Err(format!(
                    "process.cwd {}: {} is not a directory",
                    cwd.display(),
                    at.display()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&at)
                    .map_err(|e| format!("process.cwd {}: create it: {e}", cwd.display()))?;
            }
            Err(e) => return Err(format!("process.cwd {}: {e}", cwd.display())),
        }
    }
    Ok(())
}

/// Errors naming the cwd when an exec'd `process` asks for one that is not a directory in
/// the container (seen through its init `pid`'s root, mounts included; runc: "chdir to cwd
/// ... failed"). Nothing is checked when the init is gone.
pub(crate) fn check_exec_cwd(id: &str, pid: Option<i32>, process: &Process) -> Result<()> {
    let Some(pid) = pid.filter(|p| *p > 0) else {
        return Ok(());
    };
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    if !root.exists() {
        return Ok(());
    }
    let cwd = process.cwd();
    let at = root.join(cwd.strip_prefix("/").unwrap_or(cwd));
    match fs::metadata(&at) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::InvalidInput(format!(
            "exec in container {id}: cwd {} is not a directory in the container",
            cwd.display()
        ))),
        Err(e) => Err(Error::InvalidInput(format!(
            "exec in container {id}: cwd {}: {e}",
            cwd.display()
        ))),
    }
}

/// The largest uid or gid a process may have: the kernel keeps ids as signed 32-bit numbers,
/// and `setresuid(-1)` (4294967295) means "leave unchanged", which would run the process as
/// the runtime's own user (root). runc refuses the same range.
pub const MAX_ID: u32 = i32::MAX as u32;

/// Check `process.user`'s uid, gid and additionalGids against 0..=[`MAX_ID`]; the error
/// names the field and the value.
pub(crate) fn check_user(user: &User) -> std::result::Result<(), String> {
    let ids = [("uid", user.uid()), ("gid", user.gid())]
        .into_iter()
        .chain(
            user.additional_gids()
                .iter()
                .flatten()
                .map(|g| ("additionalGids", *g)),
        );
    for (field, id) in ids {
        if id > MAX_ID {
            return Err(format!(
                "process.user.{field} {id} is out of range (0 to {MAX_ID})"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_past_i32_are_refused() {
        let user = |uid: u32, gid: u32, extra: Vec<u32>| {
            oci_spec::runtime::UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .additional_gids(extra)
                .build()
                .unwrap()
        };
        assert!(check_user(&user(0, 0, vec![])).is_ok());
        assert!(check_user(&user(MAX_ID, MAX_ID, vec![MAX_ID])).is_ok());
        assert_eq!(
            check_user(&user(u32::MAX, 0, vec![])).unwrap_err(),
            "process.user.uid 4294967295 is out of range (0 to 2147483647)"
        );
        assert!(check_user(&user(0, MAX_ID + 1, vec![]))
            .unwrap_err()
            .starts_with("process.user.gid 2147483648 "));
        assert!(check_user(&user(0, 0, vec![5, u32::MAX]))
            .unwrap_err()
            .starts_with("process.user.additionalGids 4294967295 "));
    }

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
