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

/// The hull-vmm to run: `HULL_VMM`, else next to the running executable, else on PATH.
pub(crate) fn find_vmm_binary() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("HULL_VMM").filter(|b| !b.is_empty()) {
        return Some(b.into());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(VMM_BINARY)))
        .filter(|p| p.is_file());
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    beside.or_else(|| find_in_path(VMM_BINARY, &path_var))
}

#[cfg(test)]
mod tests {
    use super::*;

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
