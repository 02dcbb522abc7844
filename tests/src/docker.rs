//! A private Docker 20.10 daemon for the end-to-end tests (its own socket, data and exec
//! roots, no iptables, no default bridge) with hull among its runtimes, and a busybox image.

use std::process::{Child, Command};
use std::time::Duration;

use crate::*;

/// A private dockerd, stopped and cleaned up on drop.
pub struct Dockerd {
    /// Its config, sockets, data and exec roots.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Dockerd {
    /// Start one with `runtimes` as daemon.json's `runtimes`.
    pub fn start(runtimes: serde_json::Value) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hull-docker-")
            .tempdir()
            .unwrap();
        let cfg = dir.path().join("daemon.json");
        std::fs::write(
            &cfg,
            serde_json::json!({"runtimes": runtimes, "storage-driver": "overlay2"}).to_string(),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(&cfg)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("-H")
            .arg(format!(
                "unix://{}",
                dir.path().join("docker.sock").display()
            ))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (apt-get install docker.io)");
        let d = Self { dir, child };
        assert!(
            wait_until(Duration::from_secs(60), || d
                .docker(&["version"])
                .status
                .success()),
            "dockerd did not come up: {}",
            std::fs::read_to_string(d.dir.path().join("dockerd.log")).unwrap_or_default()
        );
        d
    }

    /// `docker ARGS` on this daemon, bounded to 120 s.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("/usr/bin/docker");
        c.arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args)
            .stdin(std::process::Stdio::null());
        output_with_timeout(c, Duration::from_secs(120))
    }

    /// `docker ARGS` that must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Every container (a failed test's), then the networks a test made.
        let all = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&all.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = self.docker(&["network", "prune", "-f"]);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // dockerd leaves its overlay mounts to the next start: unmount them ourselves.
        unmount_under(self.dir.path());
    }
}

/// `docker import` a busybox rootfs as `NAME`.
pub fn import_busybox(d: &Dockerd, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    busybox_rootfs(tmp.path());
    let tar = tmp.path().join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(tmp.path())
        .arg("-cf")
        .arg(&tar)
        .args(["bin", "etc", "tmp", "root", "proc", "sys", "dev"])
        .status()
        .unwrap();
    assert!(st.success());
    d.ok(&["import", tar.to_str().unwrap(), name]);
}

/// This workspace's `hull`, for daemon.json.
pub fn hull_path() -> String {
    bin("hull").to_string_lossy().into_owned()
}

/// A hull config choosing vm isolation with this machine's guest files; `None` only where a
/// person opted out with HULL_SKIP_VM_TESTS (refused in CI; see `guest_artefacts`).
pub fn vm_config(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let a = guest_artefacts()?;
    let path = dir.join("vm.toml");
    std::fs::write(&path, vm_config_text("vm", &a.kernel, &a.initrd)).unwrap();
    Some(path)
}
