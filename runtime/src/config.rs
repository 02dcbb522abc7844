//! hull's config file (`/etc/hull/config.toml`, or the file a runtime class names): the
//! isolation a pod gets, for vm isolation how its VM is made (`[vm]`), and the shim's own
//! settings (`[shim]`). One typed [`Config`], checked when it is loaded: a bad value is an
//! error naming the file and the key (`config F: vm.hypervisor: unknown variant ...`).
//! Unknown top-level keys and tables are left to other readers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_hypervisor::{Accel, BackendChoice, VmConfig};
use serde::Deserialize;

/// The config file read when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/hull/config.toml";
/// OCI annotation choosing the isolation of one container's pod.
pub const ISOLATION_ANNOTATION: &str = "io.hull.isolation";
/// Where `make install-guest` puts the guest kernel and initrd.
pub const DEFAULT_GUEST_DIR: &str = "/var/lib/hull";
/// Where VM templates are kept by default (a cache: removing it costs one boot per config).
pub const DEFAULT_TEMPLATE_DIR: &str = "/var/cache/hull/vm-templates";

/// The state root of the shim's containers when the config names none (the containerd
/// namespace is appended).
pub const DEFAULT_SHIM_ROOT: &str = "/run/hull/containerd";

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key has a bad value, or the file is not TOML.
    #[error("config {path}: {key}{message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key (`vm.hypervisor: `), empty when the file itself does not parse.
        key: String,
        /// What is wrong, one line.
        message: String,
    },
    /// An `io.hull.isolation` annotation with a value that is not an isolation.
    #[error("annotation {ISOLATION_ANNOTATION}: isolation {0:?} is not one of \"host\", \"vm\"")]
    Annotation(String),
}

/// The isolation a pod runs with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Host kernel (namespaces, cgroups).
    #[default]
    Host,
    /// A VM per pod.
    Vm,
}

impl Isolation {
    /// Parse `host` / `vm` (an annotation's value).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "host" => Ok(Isolation::Host),
            "vm" => Ok(Isolation::Vm),
            other => Err(ConfigError::Annotation(other.to_string())),
        }
    }
}

/// Where a vm pod's containers' root filesystems are in its guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsMode {
    /// The host's rootfs directories, shared into the guest over virtio-9p: writes land in
    /// the host's rootfs; QEMU cannot checkpoint the VM while the share is mounted.
    #[default]
    Share,
    /// An ext4 image per container, built from its rootfs (and its bind sources, copied) at
    /// create, a disk of the VM: writes stay in the image; the VM can be checkpointed and a
    /// backend without a shared filesystem (builtin) can run it.
    Disk,
}

impl RootfsMode {
    /// Parse `share` / `disk` (the `io.hull.rootfs` annotation's value).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "share" => Ok(RootfsMode::Share),
            "disk" => Ok(RootfsMode::Disk),
            other => Err(format!(
                "io.hull.rootfs: {other:?} is neither \"share\" nor \"disk\""
            )),
        }
    }
}

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The isolation of pods whose sandbox container has no `io.hull.isolation` annotation.
    pub isolation: Isolation,
    /// How vm-isolated pods get their VM.
    pub vm: VmSection,
    /// The containerd shim's settings.
    pub shim: ShimSection,
}

/// `[shim]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShimSection {
    /// Container state root; the containerd namespace is appended.
    pub root: Option<PathBuf>,
    /// Let systemd manage the containers' cgroups.
    pub systemd_cgroup: bool,
}

/// `[vm]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSection {
    /// Which program runs the VM (`auto`, `qemu`, `builtin`).
    pub hypervisor: BackendChoice,
    /// How guest code runs (`auto`, `kvm`, `tcg`).
    pub accel: Accel,
    /// Guest kernel: an ELF vmlinux or a bzImage (default: hull's, installed by `make guest`).
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
    /// Empty disk slots every VM boots with, for host block devices of containers created
    /// after the VM started (CRI's app containers, a second container of a pod): QEMU's
    /// microvm has no hotplug, a slot is filled while the VM runs.
    pub disk_slots: usize,
    /// `hull console`: a root shell in a pod's guest, outside its containers (busybox from
    /// the host, shared into the guest when first asked for). On by default: only root on
    /// the host reaches a pod's agent, and root there can read the guest's memory anyway;
    /// `false` refuses it.
    pub debug_console: bool,
    /// QEMU TCG's translation buffer per VM, in MiB (TCG only): the largest part of an idle
    /// pod's memory, filled as guest code is first run.
    pub tcg_tb_mib: u32,
    /// Where containers' root filesystems are in the guest (`share` or `disk`); a pod's first
    /// container may choose with the `io.hull.rootfs` annotation.
    pub rootfs: RootfsMode,
}

impl Default for VmSection {
    fn default() -> Self {
        VmSection {
            hypervisor: BackendChoice::Auto,
            accel: Accel::Auto,
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
            disk_slots: 2,
            debug_console: true,
            tcg_tb_mib: hull_hypervisor::DEFAULT_TCG_TB_MIB,
            rootfs: RootfsMode::Share,
        }
    }
}

impl Config {
    /// Read a config file; a missing or malformed file, or a bad value, is an error naming the
    /// file (and the key).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse a config file's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message: message.lines().next().unwrap_or_default().to_string(),
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid(String::new(), e.message().to_string()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                String::new()
            } else {
                format!("{key}: ")
            };
            invalid(key, e.into_inner().message().to_string())
        })
    }

    /// The named file (it must exist), else the default file when it exists, else defaults.
    pub fn load_or_default(named: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
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
    /// `isolation` (host by default).
    pub fn isolation_for(&self, annotation: Option<&str>) -> Result<Isolation, ConfigError> {
        match annotation {
            Some(v) => Isolation::parse(v),
            None => Ok(self.isolation),
        }
    }

    /// The state root of the shim's containers in containerd namespace `namespace`.
    pub fn shim_root(&self, namespace: &str) -> PathBuf {
        self.shim
            .root
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SHIM_ROOT))
            .join(namespace)
    }
}

impl VmSection {
    /// The guest kernel and initrd, and whether they are the Debian fallback: from the
    /// config, else the installed hull kernel, else Debian's kernel with its initrd
    /// (`make guest` installs both pairs under /var/lib/hull).
    pub fn guest(&self) -> crate::Result<(PathBuf, PathBuf, bool)> {
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
    pub fn guest_files(&self) -> crate::Result<(PathBuf, PathBuf)> {
        let pick = |given: &Option<PathBuf>, name: &str, key: &str| -> crate::Result<PathBuf> {
            let p = given
                .clone()
                .unwrap_or_else(|| Path::new(DEFAULT_GUEST_DIR).join(name));
            if p.is_file() {
                Ok(p)
            } else {
                Err(hull_container::Error::Unsupported(format!(
                    "vm isolation needs a guest {key}: {} does not exist (build it with \
                     `make guest`, or set [vm] {key} in the config)",
                    p.display()
                ))
                .into())
            }
        };
        Ok((
            pick(&self.kernel, "vmlinux", "kernel")?,
            pick(&self.initrd, "initrd.img", "initrd")?,
        ))
    }

    /// A VM config for a sandbox whose backend state lives in `state_dir`.
    pub fn vm_config(&self, state_dir: &Path) -> crate::Result<VmConfig> {
        let (kernel, initrd, debian) = self.guest()?;
        let mut c = VmConfig::new(kernel, initrd, state_dir);
        c.acpi = self.acpi.unwrap_or(debian);
        c.accel = self.accel;
        c.memory_mib = self.memory_mib.max(64);
        c.vcpus = self.vcpus.max(1);
        c.boot_timeout = Duration::from_secs(self.boot_timeout_s.max(1));
        c.agent_call_timeout = Duration::from_secs(self.agent_timeout_s.max(1));
        c.extra_cmdline = self.kernel_params.clone();
        c.template_dir = self.template.then(|| self.template_dir.clone());
        c.disk_slots = self.disk_slots;
        c.tcg_tb_mib = self.tcg_tb_mib.max(1);
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/hull/test.toml"))
    }

    #[test]
    fn reads_isolation_vm_and_shim_keys_and_ignores_other_tables() {
        let c = parse(
            "isolation = \"vm\"\nother = 1\n[shim]\nroot = \"/x\"\n[vm]\nhypervisor = \"qemu\"\nmemory_mib = 512\n[elsewhere]\nk = 2\n",
        )
        .unwrap();
        assert_eq!(c.isolation_for(None).unwrap(), Isolation::Vm);
        assert_eq!(c.isolation_for(Some("host")).unwrap(), Isolation::Host);
        assert_eq!(c.vm.hypervisor, BackendChoice::Qemu);
        assert_eq!(c.vm.memory_mib, 512);
        assert_eq!(c.vm.vcpus, 1);
        assert_eq!(c.shim_root("ns"), PathBuf::from("/x/ns"));
        assert_eq!(
            Config::default().shim_root("k8s.io"),
            PathBuf::from("/run/hull/containerd/k8s.io")
        );
    }

    #[test]
    fn a_bad_value_is_an_error_at_load_naming_the_file_and_the_key() {
        let e = parse("[vm]\nhypervisor = \"qmeu\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config /etc/hull/test.toml: vm.hypervisor: "),
            "{e}"
        );
        assert!(
            e.contains("qmeu") && e.contains("qemu") && !e.contains('\n'),
            "{e}"
        );
        let e = parse("[vm]\naccel = \"hvf\"\n").unwrap_err().to_string();
        assert!(e.contains("vm.accel: ") && e.contains("hvf"), "{e}");
        let e = parse("isolation = \"kata\"\n").unwrap_err().to_string();
        assert!(e.contains(": isolation: ") && e.contains("kata"), "{e}");
        let e = parse("[vm]\nmemory = 1\n").unwrap_err().to_string();
        assert!(e.contains("vm") && e.contains("memory"), "{e}");
        let e = parse("[shim]\nsystemd_cgroup = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shim.systemd_cgroup: "), "{e}");
        let e = parse("isolation = \n").unwrap_err().to_string();
        assert!(
            e.starts_with("config /etc/hull/test.toml: ") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let c = Config::default();
        let e = c.isolation_for(Some("kata")).unwrap_err().to_string();
        assert!(e.contains("io.hull.isolation") && e.contains("kata"), "{e}");
        let vm = VmSection {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..Default::default()
        };
        let e = vm.guest_files().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/vmlinux"), "{e}");
    }
}
