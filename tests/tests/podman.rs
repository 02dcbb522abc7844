//! Podman 4.3 with `--runtime /path/to/hull` (through conmon, no `--root`): run, exec, stop.

use hull_tests::podman::*;
use hull_tests::*;

#[test]
fn podman_run_exec_stop_with_runtime_hull() {
    let p = Podman::new();
    import_busybox(&p);

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

/// Podman with `--runtime-flag config=vm.toml`: each container in its own microVM, kept
/// alive between conmon's one-shot calls by hull's sandbox server.
#[test]
fn podman_vm_isolation_through_the_sandbox_server() {
    let Some(a) = guest_artefacts() else { return };
    let mut p = Podman::new();
    let cfg = p.dir.path().join("vm.toml");
    std::fs::write(&cfg, vm_config_text("vm", &a.kernel, &a.initrd)).unwrap();
    p.flags.push(format!("config={}", cfg.display()));
    import_busybox(&p);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();

    let out = p.podman(&[
        "run",
        "--rm",
        "hull-busybox:test",
        "sh",
        "-c",
        "uname -r; exit 4",
    ]);
    let guest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!guest.is_empty() && guest != host.trim(), "{guest:?}");

    let name = unique_id("hull-pvm");
    p.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "hull-busybox:test",
        "sleep",
        "1000",
    ]);
    assert_eq!(p.ok(&["exec", &name, "uname", "-r"]).trim(), guest);
    let out = p.podman(&["exec", &name, "sh", "-c", "exit 6"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(p.ok(&["exec", "-t", &name, "tty"]).starts_with("/dev/pts/"));
    p.ok(&["stop", "-t", "1", &name]);
    p.ok(&["rm", &name]);
    let id_dirs: Vec<_> = std::fs::read_dir("/run/hull")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("sandbox.json").exists())
                .collect()
        })
        .unwrap_or_default();
    assert!(id_dirs.is_empty(), "vm container state left: {id_dirs:?}");
    assert!(
        processes_mentioning(cfg.to_str().unwrap()).is_empty(),
        "sandbox servers left"
    );
}

/// `podman run --device HOST:CONTAINER`: in host isolation the container writes the host's
/// device itself; in vm isolation it is a disk of the container's VM; either way the bytes
/// are on the host device afterwards.
fn podman_device(vm: bool) {
    let mut p = Podman::new();
    if vm {
        let a = guest_artefacts()
            .expect("vm containers need qemu-system-x86_64 and the guest kernel (make guest)");
        let cfg = p.dir.path().join("vm.toml");
        std::fs::write(&cfg, vm_config_text("vm", &a.kernel, &a.initrd)).unwrap();
        p.flags.push(format!("config={}", cfg.display()));
    }
    import_busybox(&p);
    let disk = Loop::new();
    let device = format!("{}:/dev/xdisk", disk.dev);
    let out = p.podman(&[
        "run",
        "--rm",
        "--device",
        &device,
        "hull-busybox:test",
        "sh",
        "-c",
        "echo hull-podman-blk | dd of=/dev/xdisk bs=512 count=1 conv=sync,fsync",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(disk.head(15), b"hull-podman-blk");
}

#[test]
fn podman_device_with_runtime_hull() {
    podman_device(false);
}

#[test]
fn podman_device_in_a_vm() {
    podman_device(true);
}

/// `podman container checkpoint` / `restore` of a vm container (its pod's rootfs on a disk):
/// checkpointed, it stops; restored, its counter goes on from the number it had, not from 1.
#[test]
fn podman_checkpoint_and_restore_a_vm_container() {
    let Some(a) = guest_artefacts() else { return };
    let mut p = Podman::new();
    let cfg = p.dir.path().join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}rootfs = \"disk\"\n",
            vm_config_text("vm", &a.kernel, &a.initrd)
        ),
    )
    .unwrap();
    p.flags.push(format!("config={}", cfg.display()));
    import_busybox(&p);
    let name = unique_id("hull-pck");
    p.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "hull-busybox:test",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.1; done",
    ]);
    let count = |p: &Podman| -> u64 {
        let o = p.ok(&["exec", &name, "cat", "/count"]);
        o.trim().parse().unwrap_or_else(|_| panic!("/count: {o:?}"))
    };
    // Until the counter's first write, /count is not there: that counts as 0.
    let first_count = |p: &Podman| -> u64 {
        let o = p.podman(&["exec", &name, "cat", "/count"]);
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    assert!(wait_until(
        std::time::Duration::from_secs(60),
        || first_count(&p) >= 10
    ));
    let before = count(&p);
    p.ok(&["container", "checkpoint", &name]);
    assert_eq!(
        p.ok(&["inspect", "-f", "{{.State.Status}}", &name]).trim(),
        "exited",
        "a checkpointed container stops"
    );
    p.ok(&["container", "restore", &name]);
    assert_eq!(
        p.ok(&["inspect", "-f", "{{.State.Status}}", &name]).trim(),
        "running"
    );
    let restored = count(&p);
    assert!(
        restored >= before && restored < before + 100,
        "restored at {restored}, checkpointed after {before}"
    );
    assert!(
        wait_until(std::time::Duration::from_secs(30), || count(&p)
            > restored + 3),
        "the restored container counts on"
    );
    p.ok(&["stop", "-t", "1", &name]);
    p.ok(&["rm", &name]);
    assert!(
        processes_mentioning(cfg.to_str().unwrap()).is_empty(),
        "sandbox servers left"
    );
}
