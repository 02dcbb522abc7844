//! Docker 20.10 calls hull the runc way (`--runtime hull`): a private dockerd on its own
//! socket and directories, a busybox image made by `docker import`, run/exec/stop.

use std::process::Command;
use std::time::Duration;

use hull_tests::docker::*;
use hull_tests::*;

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

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// `--runtime hull-vm` (runtimeArgs `--config vm.toml`): each container in its own microVM,
/// kept alive between Docker's one-shot calls by hull's sandbox server.
#[test]
fn docker_runtime_hull_vm_runs_containers_in_microvms() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let Some(cfg) = vm_config(cfg_dir.path()) else {
        return;
    };
    let d = Dockerd::start(serde_json::json!({
        "hull-vm": {"path": hull_path(), "runtimeArgs": ["--config", cfg.to_str().unwrap()]}
    }));
    import_busybox(&d, "hull-busybox:test");
    let exec_root = d.dir.path().join("exec");
    // Sandbox servers and mirrors name the exec root; QEMU's VM dir is under it or, for
    // Docker's long state dirs, under /run/hull/vm.
    let vm_processes = || {
        let mut p = processes_mentioning(exec_root.to_str().unwrap());
        p.extend(processes_mentioning("/run/hull/vm/"));
        // Not dockerd's own containerd and shims, which name the exec root too.
        p.retain(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("qemu") || c.starts_with("hull"))
        });
        p
    };

    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        "hull-vm",
        "hull-busybox:test",
        "sh",
        "-c",
        "uname -r; exit 3",
    ]);
    let guest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !guest.is_empty() && guest != host_release(),
        "not the guest's kernel: {guest:?}"
    );

    // A terminal: `docker run -it` under a pty of its own.
    let out = tty_output(
        &d,
        &["run", "-it", "--rm", "--runtime", "hull-vm"],
        &["hull-busybox:test", "sh", "-c", "tty; exit 5"],
    );
    assert!(
        out.1.contains("/dev/pts/"),
        "no tty in the guest: {:?}",
        out.1
    );
    assert_eq!(out.0, Some(5), "{:?}", out.1);

    d.ok(&[
        "run",
        "-d",
        "--name",
        "hull-d1",
        "--runtime",
        "hull-vm",
        "hull-busybox:test",
        "sleep",
        "1000",
    ]);
    assert_eq!(d.ok(&["exec", "hull-d1", "uname", "-r"]).trim(), guest);
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

    // docker kill.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "hull-d2",
        "--runtime",
        "hull-vm",
        "hull-busybox:test",
        "sleep",
        "1000",
    ]);
    d.ok(&["kill", "hull-d2"]);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "hull-d2"
        ])
        .trim(),
        "exited 137"
    );
    d.ok(&["rm", "hull-d2"]);
    assert!(
        wait_until(Duration::from_secs(10), || vm_processes().is_empty()),
        "VMs left: {:?}",
        vm_processes()
    );

    // The sandbox server dies under a running container: Docker sees it exit, rm cleans up.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "hull-d3",
        "--runtime",
        "hull-vm",
        "hull-busybox:test",
        "sleep",
        "1000",
    ]);
    let id = d
        .ok(&["inspect", "-f", "{{.Id}}", "hull-d3"])
        .trim()
        .to_string();
    let servers: Vec<i32> = processes_mentioning(&format!("sandbox-server --id {id}"))
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| !c.starts_with("hull-mirror"))
        })
        .collect();
    assert_eq!(servers.len(), 1, "one sandbox server: {servers:?}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(servers[0]),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        wait_until(Duration::from_secs(30), || d
            .ok(&["inspect", "-f", "{{.State.Status}}", "hull-d3"])
            .trim()
            == "exited"),
        "docker did not see the container exit"
    );
    assert_ne!(
        d.ok(&["inspect", "-f", "{{.State.ExitCode}}", "hull-d3"])
            .trim(),
        "0"
    );
    d.ok(&["rm", "hull-d3"]);
    let state = exec_root.join("runtime-runc/moby").join(&id);
    assert!(!state.exists(), "state left in {}", state.display());
    assert!(
        wait_until(Duration::from_secs(10), || vm_processes().is_empty()),
        "VMs left: {:?}",
        vm_processes()
    );
    assert!(
        mounts_mentioning(&id).is_empty(),
        "mounts left: {:?}",
        mounts_mentioning(&id)
    );
}

/// `docker ARGS IMAGE_ARGS` with a pty of its own as stdin/stdout (what `-t` wants):
/// exit code and all it printed.
fn tty_output(d: &Dockerd, args: &[&str], image_args: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new("timeout");
    c.args(["-s", "KILL", "120", "/usr/bin/docker", "-H"])
        .arg(format!(
            "unix://{}",
            d.dir.path().join("docker.sock").display()
        ))
        .args(args)
        .args(image_args);
    let (status, out) = output_on_pty(c);
    (status.code(), out)
}

/// `docker run --device HOST:CONTAINER[:r]` with hull-vm: the host block device is a disk of
/// the container's VM; what it writes is on the host device afterwards; `:r` refuses writes.
#[test]
fn docker_device_with_runtime_hull_vm_is_a_disk_of_the_vm() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = vm_config(cfg_dir.path())
        .expect("vm containers need qemu-system-x86_64 and the guest kernel (make guest)");
    let d = Dockerd::start(serde_json::json!({
        "hull-vm": {"path": hull_path(), "runtimeArgs": ["--config", cfg.to_str().unwrap()]}
    }));
    import_busybox(&d, "hull-busybox:test");
    let disk = Loop::new();
    let device = format!("{}:/dev/xdisk", disk.dev);
    let out = d.ok(&[
        "run",
        "--rm",
        "--runtime",
        "hull-vm",
        "--device",
        &device,
        "hull-busybox:test",
        "sh",
        "-c",
        "uname -r; echo hull-docker-blk | dd of=/dev/xdisk bs=512 count=1 conv=sync,fsync",
    ]);
    assert!(out.starts_with("6.1."), "not the guest kernel: {out}");
    assert_eq!(disk.head(15), b"hull-docker-blk");

    let device_ro = format!("{device}:r");
    let text = d.ok(&[
        "run",
        "--rm",
        "--runtime",
        "hull-vm",
        "--device",
        &device_ro,
        "hull-busybox:test",
        "sh",
        "-c",
        "head -c 15 /dev/xdisk; echo; echo x | dd of=/dev/xdisk 2>/dev/null && echo wrote || echo refused",
    ]);
    assert!(
        text.contains("hull-docker-blk") && text.contains("refused"),
        "{text}"
    );
}

/// `docker run --device` in host isolation: the container writes the host's device.
#[test]
fn docker_device_with_runtime_hull() {
    let d = Dockerd::start(serde_json::json!({"hull": {"path": hull_path()}}));
    import_busybox(&d, "hull-busybox:test");
    let disk = Loop::new();
    let device = format!("{}:/dev/xdisk", disk.dev);
    d.ok(&[
        "run",
        "--rm",
        "--runtime",
        "hull",
        "--device",
        &device,
        "hull-busybox:test",
        "sh",
        "-c",
        "echo hull-docker-hst | dd of=/dev/xdisk bs=512 count=1 conv=sync,fsync",
    ]);
    assert_eq!(disk.head(15), b"hull-docker-hst");
}
