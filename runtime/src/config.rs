//! hull's config file (`/etc/hull/config.toml`, or the file a runtime class names): the
//! isolation a pod gets and, for vm isolation, how its VM is made. The shim reads the same
//! file and adds its own `[shim]` table; unknown keys are left to other readers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::hypervisor::{Accel, Backend, VmConfig};

/// The config file read when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/hull/config.toml";
/// OCI annotation choosing the isolation of one container's pod.
pub const ISOLATION_ANNOTATION: &str = "io.hull.isolation";
/// Where `make install-guest` puts the guest kernel and initrd.
pub const DEFAULT_GUEST_DIR: &str = "/var/lib/hull";
/// Where VM templates are kept by default (a cache: removing it costs one boot per config).
pub const DEFAULT_TEMPLATE_DIR: &str = "/var/cache/hull/vm-templates";

/// The isolation a pod runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Host kernel (namespaces, cgroups).
    Host,
    /// A VM per pod.
    Vm,
}

impl Isolation {
    /// Parse `host` / `vm`; `what` names where the value came from.
    pub fn parse(s: &str, what: &str) -> Result<Self> {
        match s {
            "host" => Ok(Isolation::Host),
            "vm" => Ok(Isolation::Vm),
            other => Err(Error::InvalidInput(format!(
                "{what}: isolation {other:?} is not one of \"host\", \"vm\""
            ))),
        }
    }
}

/// The keys the runtime reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HullConfig {
    /// `host` or `vm`.
    pub isolation: Option<String>,
    /// How vm-isolated pods get their VM.
    pub vm: VmSection,
}

/// `[vm]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSection {
    /// `auto`, `qemu` or `builtin`.
    pub hypervisor: String,
    /// `auto`, `kvm` or `tcg` (qemu backend).
    pub accel: String,
    /// Guest kernel (uncompressed vmlinux with a PVH entry).
    pub kernel: Option<PathBuf>,
    /// Initrd whose /init is hull-agent.
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB when the pod sets no memory limit.
    pub memory_mib: u32,
    /// Guest vCPUs when the pod sets no CPU limit.
    pub vcpus: u32,
    /// How long a boot may take until the agent answers, in seconds.
    pub boot_timeout_s: u64,
    /// Bound of each call to the agent, in seconds.
    pub agent_timeout_s: u64,
    /// Appended to the guest kernel's command line.
    pub kernel_params: String,
    /// Describe devices through ACPI (a distribution kernel); `None`: only for the Debian
    /// kernel fallback.
    pub acpi: Option<bool>,
    /// Start VMs from a saved template of a booted guest instead of booting the kernel
    /// (QEMU backend); the first VM of each configuration makes the template.
    pub template: bool,
    /// Where templates are kept (each holds its guest's touched RAM).
    pub template_dir: PathBuf,
}

impl Default for VmSection {
    fn default() -> Self {
        VmSection {
            hypervisor: "auto".into(),
            accel: "auto".into(),
            kernel: None,
            initrd: None,
            memory_mib: 256,
            vcpus: 1,
            boot_timeout_s: 30,
            agent_timeout_s: 30,
            kernel_params: String::new(),
            acpi: None,
            template: true,
            template_dir: PathBuf::from(DEFAULT_TEMPLATE_DIR),
        }
    }
}

impl HullConfig {
    /// Read a config file; a missing or malformed file is an error naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| {
            Error::InvalidInput(format!(
                "config {}: {}",
                path.display(),
                e.to_string().lines().next().unwrap_or_default()
            ))
        })
    }

    /// The named file (it must exist), else the default file when it exists, else defaults.
    pub fn load_or_default(named: Option<&Path>) -> Result<(Self, Option<PathBuf>)> {
        if let Some(path) = named {
            return Ok((Self::load(path)?, Some(path.to_path_buf())));
        }
        let default = Path::new(DEFAULT_CONFIG);
        if default.exists() {
            return Ok((Self::load(default)?, Some(default.to_path_buf())));
        }
        Ok((Self::default(), None))
    }

    /// The isolation of a container: its `io.hull.isolation` annotation, else this config's
    /// `isolation`, else host.
    pub fn isolation_for(&self, annotation: Option<&str>) -> Result<Isolation> {
        match annotation {
            Some(v) => Isolation::parse(v, &format!("annotation {ISOLATION_ANNOTATION}")),
            None => match &self.isolation {
                Some(v) => Isolation::parse(v, "config"),
                None => Ok(Isolation::Host),
            },
        }
    }
}

impl VmSection {
    /// The hypervisor backend named by `hypervisor`.
    pub fn backend(&self) -> Result<Backend> {
        Backend::parse(&self.hypervisor).map_err(|e| Error::InvalidInput(e.to_string()))
    }

    /// The accelerator named by `accel`.
    pub fn accel(&self) -> Result<Accel> {
        match self.accel.as_str() {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(Error::InvalidInput(format!(
                "config: accel {other:?} is not one of \"auto\", \"kvm\", \"tcg\""
            ))),
        }
    }

    /// The guest kernel and initrd, and whether they are the Debian fallback: from the
    /// config, else the installed hull kernel, else Debian's kernel with its initrd
    /// (`make guest` installs both pairs under /var/lib/hull).
    pub fn guest(&self) -> Result<(PathBuf, PathBuf, bool)> {
        let dir = Path::new(DEFAULT_GUEST_DIR);
        if self.kernel.is_none()
            && self.initrd.is_none()
            && !dir.join("vmlinux").is_file()
            && dir.join("debian/vmlinuz").is_file()
            && dir.join("debian/initrd.img").is_file()
        {
            tracing::info!("no hull guest kernel installed: using Debian's kernel");
            return Ok((
                dir.join("debian/vmlinuz"),
                dir.join("debian/initrd.img"),
                true,
            ));
        }
        let (k, i) = self.guest_files()?;
        Ok((k, i, false))
    }

    /// The guest kernel and initrd: from the config, else the installed ones; each must exist.
    pub fn guest_files(&self) -> Result<(PathBuf, PathBuf)> {
        let pick = |given: &Option<PathBuf>, name: &str, key: &str| -> Result<PathBuf> {
            let p = given
                .clone()
                .unwrap_or_else(|| Path::new(DEFAULT_GUEST_DIR).join(name));
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::Unsupported(format!(
                    "vm isolation needs a guest {key}: {} does not exist (build it with \
                     `make guest`, or set [vm] {key} in the config)",
                    p.display()
                )))
            }
        };
        Ok((
            pick(&self.kernel, "vmlinux", "kernel")?,
            pick(&self.initrd, "initrd.img", "initrd")?,
        ))
    }

    /// A VM config for a sandbox whose backend state lives in `state_dir`.
    pub fn vm_config(&self, state_dir: &Path) -> Result<VmConfig> {
        let (kernel, initrd, debian) = self.guest()?;
        let mut c = VmConfig::new(kernel, initrd, state_dir);
        c.acpi = self.acpi.unwrap_or(debian);
        c.accel = self.accel()?;
        c.memory_mib = self.memory_mib.max(64);
        c.vcpus = self.vcpus.max(1);
        c.boot_timeout = Duration::from_secs(self.boot_timeout_s.max(1));
        c.agent_call_timeout = Duration::from_secs(self.agent_timeout_s.max(1));
        c.extra_cmdline = self.kernel_params.clone();
        c.template_dir = self.template.then(|| self.template_dir.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_isolation_and_vm_keys_and_ignores_other_tables() {
        let c: HullConfig = toml::from_str(
            "isolation = \"vm\"\n[shim]\nroot = \"/x\"\n[vm]\nhypervisor = \"qemu\"\nmemory_mib = 512\n",
        )
        .unwrap();
        assert_eq!(c.isolation_for(None).unwrap(), Isolation::Vm);
        assert_eq!(c.isolation_for(Some("host")).unwrap(), Isolation::Host);
        assert_eq!(c.vm.backend().unwrap(), Backend::Qemu);
        assert_eq!(c.vm.memory_mib, 512);
        assert_eq!(c.vm.vcpus, 1);
    }

    #[test]
    fn bad_values_are_named() {
        let c = HullConfig::default();
        let e = c.isolation_for(Some("kata")).unwrap_err().to_string();
        assert!(e.contains("io.hull.isolation") && e.contains("kata"), "{e}");
        let bad: std::result::Result<HullConfig, _> = toml::from_str("[vm]\nmemory = 1\n");
        assert!(bad.is_err());
        let vm = VmSection {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..Default::default()
        };
        let e = vm.guest_files().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/vmlinux"), "{e}");
    }
}
