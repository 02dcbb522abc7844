//! Podman 4.3 with `--runtime /path/to/hull` (through conmon, no `--root`): run, exec, stop.

use std::process::Command;
use std::time::Duration;

use hull_tests::*;

struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hull-podman-")
            .tempdir()
            .unwrap();
        // This host's root lacks CAP_SYS_RESOURCE: podman's default ulimits fail here.
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             netns = \"none\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Self { dir }
    }

    fn podman(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .arg("--root")
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs", "--runtime"])
            .arg(bin("hull"))
            .args(args)
            .stdin(std::process::Stdio::null());
        output_with_timeout(c, Duration::from_secs(120))
    }

    fn ok(&self, args: &[&str]) -> String {
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

#[test]
fn podman_run_exec_stop_with_runtime_hull() {
    let p = Podman::new();
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

    let out = p.podman(&[
        "run",
        "--rm",
        "hull-busybox:test",
        "sh",
        "-c",
        "echo hi from podman; exit 4",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi from podman\n");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let name = unique_id("hull-p");
    p.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "hull-busybox:test",
        "sleep",
        "1000",
    ]);
    // Podman calls hull without --root: the container's state is under /run/hull.
    let id = p
        .ok(&["inspect", "-f", "{{.Id}}", &name])
        .trim()
        .to_string();
    assert!(std::path::Path::new("/run/hull").join(&id).exists());
    assert_eq!(
        p.ok(&["exec", &name, "sh", "-c", "echo exec-ok"]),
        "exec-ok\n"
    );
    assert!(p.ok(&["exec", "-t", &name, "tty"]).starts_with("/dev/pts/"));
    p.ok(&["pause", &name]);
    assert_eq!(
        p.ok(&["inspect", "-f", "{{.State.Status}}", &name]).trim(),
        "paused"
    );
    p.ok(&["unpause", &name]);
    p.ok(&["stop", "-t", "1", &name]);
    p.ok(&["rm", &name]);
    assert!(
        !std::path::Path::new("/run/hull").join(&id).exists(),
        "hull state left behind"
    );
}
