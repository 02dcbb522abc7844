//! Which hull config a container runs with: containerd's runtime options
//! (`ConfigPath`, as Kata reads it), else `/etc/hull/config.toml`, else defaults.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use serde::Deserialize;

use crate::error::{Error, Result};

pub use hull_runtime::config::{DEFAULT_CONFIG, ISOLATION_ANNOTATION};

/// The state root when the config names none (the namespace is appended).
pub const DEFAULT_ROOT: &str = "/run/hull/containerd";

/// The parts of hull's config file the shim uses: the runtime's (isolation, `[vm]`) and
/// its own `[shim]` table; other keys are left to other readers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HullConfig {
    /// `isolation` and `[vm]`, as the runtime library reads them.
    #[serde(flatten)]
    pub runtime: hull_runtime::config::HullConfig,
    /// Shim settings.
    pub shim: ShimSection,
}

/// `[shim]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ShimSection {
    /// Container state root; the containerd namespace is appended.
    pub root: Option<PathBuf>,
    /// Let systemd manage the containers' cgroups.
    pub systemd_cgroup: bool,
}

impl HullConfig {
    /// Read a config file; a missing or malformed file is an error naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "no such file (named by the runtime option ConfigPath)".to_string()
            } else {
                e.to_string()
            },
        })?;
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string().lines().next().unwrap_or_default().to_string(),
        })
    }

    /// The config for a task: `ConfigPath` from the runtime options when given
    /// (it must exist), else the default file when it exists, else built-in defaults.
    pub fn for_task(options: Option<&Any>) -> Result<(Self, Option<PathBuf>)> {
        if let Some(path) = options.and_then(config_path) {
            return Ok((Self::load(&path)?, Some(path)));
        }
        let default = Path::new(DEFAULT_CONFIG);
        if default.exists() {
            return Ok((Self::load(default)?, Some(default.to_path_buf())));
        }
        Ok((Self::default(), None))
    }

    /// The state root for containers of `namespace`.
    pub fn root(&self, namespace: &str) -> PathBuf {
        self.shim
            .root
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
            .join(namespace)
    }
}

/// `ConfigPath` out of containerd's runtime options: `runtimeoptions.v1.Options`
/// (`type_url = 1; config_path = 2; config_body = 3`), which both `ctr
/// --runtime-config-path` and the CRI plugin's per-handler `options` produce.
pub fn config_path(any: &Any) -> Option<PathBuf> {
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut found = None;
    for (field, value) in proto_fields(&any.value) {
        if field == 2 {
            if let Ok(s) = std::str::from_utf8(value) {
                if !s.is_empty() {
                    found = Some(PathBuf::from(s));
                }
            }
        }
    }
    found
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The length-delimited fields of a protobuf message, as (field number, bytes);
/// other wire types are skipped. Stops at the first malformed byte.
fn proto_fields(buf: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let Some(tag) = varint(buf, &mut pos) else {
            break;
        };
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                if varint(buf, &mut pos).is_none() {
                    break;
                }
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let Some(len) = varint(buf, &mut pos) else {
                    break;
                };
                let end = pos.saturating_add(len as usize);
                if end > buf.len() {
                    break;
                }
                out.push((field, &buf[pos..end]));
                pos = end;
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(path: &str) -> Any {
        // type_url = 1 ("x"), config_path = 2.
        let mut value = vec![0x0a, 1, b'x', 0x12, path.len() as u8];
        value.extend_from_slice(path.as_bytes());
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn reads_config_path() {
        assert_eq!(
            config_path(&options("/etc/hull/vm.toml")),
            Some(PathBuf::from("/etc/hull/vm.toml"))
        );
        let mut other = options("/x");
        other.type_url = "containerd.runc.v1.Options".into();
        assert_eq!(config_path(&other), None);
    }

    #[test]
    fn missing_config_is_named() {
        let e = HullConfig::for_task(Some(&options("/nonexistent/hull.toml"))).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/hull.toml") && msg.contains("ConfigPath"),
            "{msg}"
        );
    }

    #[test]
    fn parses_sections() {
        let c: HullConfig =
            toml::from_str("isolation = \"host\"\nother = 1\n[shim]\nroot = \"/r\"\n").unwrap();
        assert_eq!(c.runtime.isolation.as_deref(), Some("host"));
        assert_eq!(c.root("ns"), PathBuf::from("/r/ns"));
    }
}
