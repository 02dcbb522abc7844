//! Docker 20.10 calls hull the runc way (`--runtime hull`): a private dockerd on its own
//! socket and directories, a busybox image made by `docker import`, run/exec/stop.

use std::process::{Child, Command};
use std::time::Duration;

use hull_tests::*;

/// A private dockerd, stopped and cleaned up on drop.
struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Dockerd {
    fn start(runtimes: serde_json::Value) -> Self {
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

    fn docker(&self, args: &[&str]) -> std::process::Output {
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

    fn ok(&self, args: &[&str]) -> String {
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
        let _ = self.docker(&["rm", "-f", "hull-d1"]);
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
fn import_busybox(d: &Dockerd, name: &str) {
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

fn hull_path() -> String {
    bin("hull").to_string_lossy().into_owned()
}

#[test]
fn docker_run_exec_stop_with_runtime_hull() {
    let d = Dockerd::start(serde_json::json!({"hull": {"path": hull_path()}}));
    import_busybox(&d, "hull-busybox:test");

    // Output and exit status of `docker run`.
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        "hull",
        "hull-busybox:test",
        "sh",
        "-c",
        "echo hi from docker; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi from docker\n");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A detached container: exec (plain and tty), pause/unpause, stop.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "hull-d1",
        "--runtime",
        "hull",
        "hull-busybox:test",
        "sleep",
        "1000",
    ]);
    // Docker 20.10's runc shim keeps runtime state under <exec-root>/runtime-runc/moby;
    // hull's record there (libcontainer's youki_config.json) proves Docker called hull.
    let id = d
        .ok(&["inspect", "-f", "{{.Id}}", "hull-d1"])
        .trim()
        .to_string();
    let state_dir = d.dir.path().join("exec/runtime-runc/moby").join(&id);
    assert!(
        state_dir.join("youki_config.json").exists(),
        "docker did not call hull (no hull state in {})",
        state_dir.display()
    );
    assert_eq!(
        d.ok(&["exec", "hull-d1", "sh", "-c", "echo exec-ok"]),
        "exec-ok\n"
    );
    let out = d.docker(&["exec", "hull-d1", "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9));
    assert!(d
        .ok(&["exec", "-t", "hull-d1", "tty"])
        .starts_with("/dev/pts/"));
    d.ok(&["pause", "hull-d1"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "hull-d1"])
            .trim(),
        "paused"
    );
    d.ok(&["unpause", "hull-d1"]);
    d.ok(&["stop", "-t", "1", "hull-d1"]);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", "hull-d1"])
            .trim(),
        "137"
    );
    d.ok(&["rm", "hull-d1"]);
    // hull's state for the container is gone with it.
    assert!(
        !state_dir.exists(),
        "hull state left in {}",
        state_dir.display()
    );
}
