//! Resolution of host-supplied paths inside the guest's allowed roots.
//!
//! A path from the host is accepted only if it names something under one of the roots, both
//! lexically (no `..` component at all) and after symlinks are resolved.

use std::path::{Component, Path, PathBuf};

use crate::error::{AgentError, Result};

/// The directories under which the host may name paths.
#[derive(Debug, Clone)]
pub struct AllowedRoots {
    roots: Vec<PathBuf>,
}

impl AllowedRoots {
    /// Roots as given; each is canonicalized if it exists (created otherwise).
    pub fn new(roots: Vec<PathBuf>) -> Result<Self> {
        let mut out = Vec::with_capacity(roots.len());
        for root in roots {
            std::fs::create_dir_all(&root)
                .map_err(|e| AgentError::io(format!("create allowed root {root:?}"), e))?;
            let canon = root
                .canonicalize()
                .map_err(|e| AgentError::io(format!("canonicalize allowed root {root:?}"), e))?;
            out.push(canon);
        }
        if out.is_empty() {
            return Err(AgentError::InvalidArgument("no allowed root".into()));
        }
        Ok(AllowedRoots { roots: out })
    }

    /// The canonical roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn outside(&self, path: &str) -> AgentError {
        AgentError::PathOutsideRoots {
            path: path.to_string(),
            roots: self.roots.clone(),
        }
    }

    /// Lexical check: the absolute path the host means, before touching the filesystem.
    fn lexical(&self, path: &str) -> Result<(PathBuf, &Path)> {
        if path.is_empty() || path.contains('\0') {
            return Err(AgentError::InvalidArgument(format!("bad path {path:?}")));
        }
        let p = Path::new(path);
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(self.outside(path));
        }
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.roots[0].join(p)
        };
        let root = self
            .roots
            .iter()
            .find(|r| abs.starts_with(r))
            .ok_or_else(|| self.outside(path))?;
        Ok((abs, root.as_path()))
    }

    /// Resolves an existing path; symlinks must not lead out of its root.
    pub fn resolve_existing(&self, path: &str) -> Result<PathBuf> {
        let (abs, root) = self.lexical(path)?;
        let canon = abs
            .canonicalize()
            .map_err(|e| AgentError::io(format!("resolve {path:?}"), e))?;
        if !canon.starts_with(root) {
            return Err(self.outside(path));
        }
        Ok(canon)
    }

    /// Resolves a directory, creating what is missing; the existing part must stay inside the
    /// root after symlinks are resolved (the created part has no symlinks by construction).
    pub fn resolve_dir_create(&self, path: &str) -> Result<PathBuf> {
        let (abs, root) = self.lexical(path)?;
        let mut existing = abs.as_path();
        let mut missing = Vec::new();
        while !existing.exists() {
            missing.push(existing.file_name().map(|n| n.to_os_string()));
            existing = existing.parent().ok_or_else(|| self.outside(path))?;
        }
        let mut canon = existing
            .canonicalize()
            .map_err(|e| AgentError::io(format!("resolve {path:?}"), e))?;
        if !canon.starts_with(root) {
            return Err(self.outside(path));
        }
        for name in missing.into_iter().rev().flatten() {
            canon.push(name);
            match std::fs::create_dir(&canon) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(AgentError::io(format!("create {canon:?}"), e)),
            }
        }
        let canon = canon
            .canonicalize()
            .map_err(|e| AgentError::io(format!("resolve {path:?}"), e))?;
        if !canon.starts_with(root) || !canon.is_dir() {
            return Err(self.outside(path));
        }
        Ok(canon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_dotdot_and_symlink_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("evil")).unwrap();
        let roots = AllowedRoots::new(vec![root.clone()]).unwrap();
        let canon_root = root.canonicalize().unwrap();

        assert_eq!(roots.resolve_existing("a").unwrap(), canon_root.join("a"));
        let abs = canon_root.join("a");
        assert_eq!(roots.resolve_existing(abs.to_str().unwrap()).unwrap(), abs);
        assert!(matches!(
            roots.resolve_existing("../etc"),
            Err(AgentError::PathOutsideRoots { .. })
        ));
        assert!(matches!(
            roots.resolve_existing("a/../../etc"),
            Err(AgentError::PathOutsideRoots { .. })
        ));
        assert!(matches!(
            roots.resolve_existing("/etc"),
            Err(AgentError::PathOutsideRoots { .. })
        ));
        assert!(matches!(
            roots.resolve_existing("evil"),
            Err(AgentError::PathOutsideRoots { .. })
        ));
        assert!(matches!(
            roots.resolve_dir_create("evil/sub"),
            Err(AgentError::PathOutsideRoots { .. })
        ));
        let made = roots.resolve_dir_create("x/y/z").unwrap();
        assert!(made.is_dir() && made.starts_with(&canon_root));
    }
}
