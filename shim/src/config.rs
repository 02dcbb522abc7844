//! Which hull config a container runs with: containerd's runtime options
//! (`ConfigPath`, as Kata reads it), else `/etc/hull/config.toml`, else defaults. The file is
//! hull's one typed config (`hull_runtime::config`), whose `[shim]` table is the shim's.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use hull_runtime::config::{Config, ConfigError};

use crate::error::{Error, Result};

pub use hull_runtime::config::{DEFAULT_SHIM_ROOT, ISOLATION_ANNOTATION};

/// The config for a task: `ConfigPath` from the runtime options when given (it must exist),
/// else the default file when it exists, else built-in defaults.
pub fn for_task(options: Option<&Any>) -> Result<(Config, Option<PathBuf>)> {
    let named = options.and_then(config_path);
    Config::load_or_default(named.as_deref()).map_err(|e| match e {
        ConfigError::Read { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::Config {
                path,
                reason: "no such file (named by the runtime option ConfigPath)".into(),
            }
        }
        other => Error::Pod(other.into()),
    })
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

/// What a checkpoint request's options ask (`containerd.runc.v1.CheckpointOptions`, or the
/// older `containerd.linux.runc.CheckpointOptions`: same fields).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Stop the task after the checkpoint (`exit = 1`); else it runs on, containerd's default.
    pub exit: bool,
    /// Where to write it (`image_path = 8`), instead of the request's path.
    pub image_path: Option<PathBuf>,
}

/// The checkpoint options in `any` (none, or another type: the defaults).
pub fn checkpoint_options(any: Option<&Any>) -> CheckpointOptions {
    let mut out = CheckpointOptions::default();
    let Some(any) = any.filter(|a| a.type_url.ends_with("CheckpointOptions")) else {
        return out;
    };
    let buf = &any.value;
    let mut pos = 0;
    while pos < buf.len() {
        let Some(tag) = varint(buf, &mut pos) else {
            break;
        };
        match (tag >> 3, tag & 7) {
            (1, 0) => match varint(buf, &mut pos) {
                Some(v) => out.exit = v != 0,
                None => break,
            },
            (_, 0) => {
                if varint(buf, &mut pos).is_none() {
                    break;
                }
            }
            (field, 2) => {
                let Some(len) = varint(buf, &mut pos) else {
                    break;
                };
                let end = pos.saturating_add(len as usize);
                let Some(value) = buf.get(pos..end) else {
                    break;
                };
                if field == 8 && !value.is_empty() {
                    out.image_path = std::str::from_utf8(value).ok().map(PathBuf::from);
                }
                pos = end;
            }
            _ => break,
        }
    }
    out
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
        let e = for_task(Some(&options("/nonexistent/hull.toml"))).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/hull.toml") && msg.contains("ConfigPath"),
            "{msg}"
        );
    }

    #[test]
    fn checkpoint_options_say_exit_and_image_path() {
        // exit = true (field 1, varint), open_tcp (2), image_path (8) = "/ck".
        let value = vec![0x08, 0x01, 0x10, 0x01, 0x42, 0x03, b'/', b'c', b'k'];
        let any = Any {
            type_url: "containerd.runc.v1.CheckpointOptions".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            checkpoint_options(Some(&any)),
            CheckpointOptions {
                exit: true,
                image_path: Some("/ck".into())
            }
        );
        assert_eq!(checkpoint_options(None), CheckpointOptions::default());
        let other = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x08, 0x01],
            ..Default::default()
        };
        assert!(!checkpoint_options(Some(&other)).exit);
    }
}
