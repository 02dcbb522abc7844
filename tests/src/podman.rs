//! Podman 4.3 for the end-to-end tests: its own storage, run root and containers.conf,
//! `--runtime` this workspace's hull, and a busybox image.

use std::process::Command;
use std::time::Duration;

use crate::*;

/// A podman with its own storage, run root and containers.conf, calling hull.
pub struct Podman {
    /// Its containers.conf, storage and run root.
    pub dir: tempfile::TempDir,
    /// `--runtime-flag` values (podman passes each to hull as `--FLAG`).
    pub flags: Vec<String>,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    /// One without networking (`netns = "none"`).
    pub fn new() -> Self {
        Self::with_conf("none", "")
    }

    /// One whose containers join the CNI network `net` (podman's default network here,
    /// `netns = "bridge"`), its network list in a config dir of this podman's own.
    pub fn on_network(net: &crate::net::Subnet) -> Self {
        let p = Self::with_conf(
            "bridge",
            &format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{:?}]\n\
                 network_config_dir = \"{{dir}}/cni\"\ndefault_network = {:?}\n",
                crate::net::CNI_PLUGIN_DIR,
                net.network()
            ),
        );
        let cni = p.dir.path().join("cni");
        std::fs::create_dir_all(&cni).unwrap();
        std::fs::write(
            cni.join(format!("{}.conflist", net.network())),
            net.cni_conflist(&p.dir.path().join("cni-ipam")),
        )
        .unwrap();
        p
    }

    /// `netns` as containers.conf's default; `tables` appended (`{dir}`: this podman's dir).
    fn with_conf(netns: &str, tables: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hull-podman-")
            .tempdir()
            .unwrap();
        // This host's root lacks CAP_SYS_RESOURCE: podman's default ulimits fail here.
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 netns = {netns:?}\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n{}",
                tables.replace("{dir}", &dir.path().display().to_string())
            ),
        )
        .unwrap();
        Self {
            dir,
            flags: Vec::new(),
        }
    }

    /// `podman ARGS` with hull as the runtime, bounded to 120 s.
    pub fn podman(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .arg("--root")
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs", "--runtime"])
            .arg(bin("hull"));
        for f in &self.flags {
            c.arg("--runtime-flag").arg(f);
        }
        c.args(args).stdin(std::process::Stdio::null());
        output_with_timeout(c, Duration::from_secs(120))
    }

    /// `podman ARGS` that must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", "-a"]);
        unmount_under(self.dir.path());
    }
}

/// Import a busybox rootfs as `hull-busybox:test`.
pub fn import_busybox(p: &Podman) {
    let rootfs = tempfile::tempdir().unwrap();
    busybox_rootfs(rootfs.path());
    let tar = p.dir.path().join("rootfs.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(rootfs.path())
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    p.ok(&["import", tar.to_str().unwrap(), "hull-busybox:test"]);
}
