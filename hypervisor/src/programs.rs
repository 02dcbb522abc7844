//! Where the VMM programs are found: QEMU (`HULL_QEMU`, else on PATH) for the qemu backend and
//! `hull check`, and the PATH search both backends use.

use std::path::PathBuf;

use crate::error::{HypervisorError, Result};

/// The QEMU binary (overridable with `HULL_QEMU`).
pub(crate) const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The QEMU binary to run: `HULL_QEMU`, else [`QEMU_BINARY`] (looked up on PATH).
pub(crate) fn qemu_binary() -> String {
    std::env::var("HULL_QEMU").unwrap_or_else(|_| QEMU_BINARY.to_string())
}

/// Where the QEMU binary to run is: `HULL_QEMU` when it is a path, else the name on PATH.
pub(crate) fn find_qemu() -> Result<PathBuf> {
    let binary = qemu_binary();
    let found = if binary.contains('/') {
        Some(PathBuf::from(&binary)).filter(|p| p.is_file())
    } else {
        find_in_path(&binary, &std::env::var_os("PATH").unwrap_or_default())
    };
    found.ok_or_else(|| HypervisorError::Spawn {
        binary,
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Finds an executable `name` in a PATH-style list.
pub(crate) fn find_in_path(name: &str, path_var: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The VMM binary of the builtin backend (found through `HULL_VMM`, next to the running
/// executable, then on PATH).
pub const VMM_BINARY: &str = "hull-vmm";

/// Where hull was started from when its binary guard re-exec'd it from a read-only copy
/// (under `/run/hull-exe`, where no hull-vmm lies beside it); set by the guard.
pub const STARTED_AS_ENV: &str = "HULL_STARTED_AS";

/// The hull-vmm to run: `HULL_VMM`, else next to the executable hull was started as (see
/// [`STARTED_AS_ENV`]) or, without it, the running one, else on PATH.
pub(crate) fn find_vmm_binary() -> Option<PathBuf> {
    let exe = std::env::var_os(STARTED_AS_ENV)
        .filter(|e| !e.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok());
    vmm_binary_among(
        std::env::var_os("HULL_VMM"),
        exe.as_deref(),
        &std::env::var_os("PATH").unwrap_or_default(),
    )
}

/// [`find_vmm_binary`] from its inputs: `HULL_VMM`'s value, the executable, PATH.
fn vmm_binary_among(
    hull_vmm: Option<std::ffi::OsString>,
    exe: Option<&std::path::Path>,
    path_var: &std::ffi::OsStr,
) -> Option<PathBuf> {
    if let Some(b) = hull_vmm.filter(|b| !b.is_empty()) {
        return Some(b.into());
    }
    let beside = exe
        .and_then(|e| e.parent().map(|d| d.join(VMM_BINARY)))
        .filter(|p| p.is_file());
    beside.or_else(|| find_in_path(VMM_BINARY, path_var))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_vmm_is_found_by_env_then_beside_the_executable_then_on_path() {
        use std::os::unix::fs::PermissionsExt;
        let (bin, on_path) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let path = std::env::join_paths([on_path.path()]).unwrap();
        let hull = bin.path().join("hull");
        for d in [bin.path(), on_path.path()] {
            let f = d.join(VMM_BINARY);
            std::fs::write(&f, "").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(
            vmm_binary_among(Some("/x/vmm".into()), Some(&hull), &path),
            Some(PathBuf::from("/x/vmm"))
        );
        assert_eq!(
            vmm_binary_among(None, Some(&hull), &path),
            Some(bin.path().join(VMM_BINARY))
        );
        // Started from the guard's copy (nothing beside it): PATH.
        let sealed = on_path.path().join("nothing-here").join("hull-fe00-1");
        assert_eq!(
            vmm_binary_among(Some("".into()), Some(&sealed), &path),
            Some(on_path.path().join(VMM_BINARY))
        );
    }

    #[test]
    fn path_search_needs_an_executable_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("qemu-system-x86_64");
        std::fs::write(&f, "").unwrap();
        let path = std::env::join_paths(["/nonexistent".as_ref(), d.path()]).unwrap();
        assert_eq!(find_in_path("qemu-system-x86_64", &path), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in_path("qemu-system-x86_64", &path), Some(f));
    }
}
