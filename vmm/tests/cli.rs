//! The `hull-vmm` binary: serial console on stdout, exit status, one-line errors, and the
//! JSON-lines API socket (pause, resume, snapshot, status) with a restore from the snapshot.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_hull-vmm");

/// Waits for `child` at most `limit`, killing it if it is still running then.
fn wait_bounded(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "hull-vmm did not exit within {limit:?}; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn boots_tiny_guest_prints_to_stdout_and_exits_zero_on_reset() {
    if !kvm_available("boots_tiny_guest_prints_to_stdout_and_exits_zero_on_reset") {
        return;
    }
    let (_d, kernel) = write_temp("serial.elf", &elf(SERIAL64, false));
    let out = wait_bounded(
        spawn(&["--kernel", kernel.to_str().unwrap(), "--memory", "64"]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HU\n");
}

#[test]
fn missing_kernel_is_one_clear_error_line() {
    let out = wait_bounded(
        spawn(&["--kernel", "/nonexistent/vmlinux"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    // Without /dev/kvm the VM cannot even be created: that error comes first.
    assert!(
        err.starts_with("hull-vmm: cannot open kernel /nonexistent/vmlinux")
            || err.starts_with("hull-vmm: cannot open /dev/kvm"),
        "{err}"
    );
}

#[test]
fn unusable_kvm_is_one_clear_error_line() {
    // /dev/kvm replaced by /dev/null in a private mount namespace.
    if Command::new("unshare").arg("--version").output().is_err() {
        common::skip(
            "unusable_kvm_is_one_clear_error_line",
            "unshare(1) is not installed",
        );
        return;
    }
    let (_d, kernel) = write_temp("serial.elf", &elf(SERIAL64, false));
    let script = format!(
        "touch /tmp/hull-vmm-nokvm && mount --bind /tmp/hull-vmm-nokvm /dev/kvm && exec {BIN} --kernel {}",
        kernel.display()
    );
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("unshare failed") || err.contains("mount:") {
        common::skip(
            "unusable_kvm_is_one_clear_error_line",
            &format!("cannot make a mount namespace here: {err}"),
        );
        return;
    }
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("hull-vmm: "), "{err}");
    assert!(err.contains("KVM"), "{err}");
}

fn api(path: &std::path::Path, req: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "API socket never came up: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn api_socket_pauses_resumes_snapshots_and_restore_runs() {
    if !kvm_available("api_socket_pauses_resumes_snapshots_and_restore_runs") {
        return;
    }
    let (dir, kernel) = write_temp("irq.elf", &elf(&irq64(), false));
    let sock = dir.as_path().join("api.sock");
    let snap = dir.as_path().join("snap");
    let k = kernel.to_str().unwrap();
    let child = spawn(&[
        "--kernel",
        k,
        "--memory",
        "16",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let mut child = child;
    let mut stdout = child.stdout.take().unwrap();
    let guard = KillOnDrop(Some(child));
    // Snapshot only once the guest has printed 'R' (it then waits, halted, for IRQ3).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(stdout.read_exact(&mut b).map(|_| b[0]));
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("guest printed nothing in 30 s")
        .unwrap();
    assert_eq!(first, b'R');

    assert_eq!(
        api(&sock, r#"{"cmd":"status"}"#).trim(),
        r#"{"ok":true,"state":"running"}"#
    );
    assert_eq!(
        api(&sock, r#"{"cmd":"pause"}"#).trim(),
        r#"{"ok":true,"state":"paused"}"#
    );
    let snap_req = format!(r#"{{"cmd":"snapshot","dir":"{}"}}"#, snap.display());
    assert_eq!(
        api(&sock, &snap_req).trim(),
        r#"{"ok":true,"state":"paused"}"#
    );
    assert!(snap.join("vm.json").exists());
    assert_eq!(
        api(&sock, r#"{"cmd":"resume"}"#).trim(),
        r#"{"ok":true,"state":"running"}"#
    );
    let resp = api(&sock, r#"{"cmd":"snapshot","dir":"/tmp/x"}"#);
    assert!(
        resp.contains(r#""ok":false"#) && resp.contains("pause the VM"),
        "{resp}"
    );
    assert!(api(&sock, "garbage").contains("bad request"));
    let out = guard.kill_and_collect();
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "{out:?}");

    // Restore in a new process: it comes up with the snapshot's state and answers its API.
    let sock2 = dir.as_path().join("api2.sock");
    let child = spawn(&[
        "--kernel",
        k,
        "--restore",
        snap.to_str().unwrap(),
        "--api-sock",
        sock2.to_str().unwrap(),
    ]);
    let guard = KillOnDrop(Some(child));
    assert_eq!(
        api(&sock2, r#"{"cmd":"status"}"#).trim(),
        r#"{"ok":true,"state":"running"}"#
    );
    let out = guard.kill_and_collect();
    // The restored guest continues halted after 'R' (it did not start over, at least up to
    // the status answer; tests/kvm_guests.rs proves the continuation with an interrupt).
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "{out:?}");
}

/// Kills the child (by its own handle) if the test fails half-way.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn kill_and_collect(mut self) -> std::process::Output {
        let mut c = self.0.take().unwrap();
        let _ = c.kill();
        c.wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn missing_block_image_is_one_clear_error_line() {
    if !kvm_available("missing_block_image_is_one_clear_error_line") {
        return;
    }
    let (_d, kernel) = write_temp("serial.elf", &elf(SERIAL64, false));
    let out = wait_bounded(
        spawn(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--block",
            "/nonexistent/disk.img,ro",
        ]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("hull-vmm: cannot open block image /nonexistent/disk.img"),
        "{err}"
    );
}

#[test]
fn a_net_fd_not_inherited_is_one_clear_error_line() {
    if !kvm_available("a_net_fd_not_inherited_is_one_clear_error_line") {
        return;
    }
    let (_d, kernel) = write_temp("serial.elf", &elf(SERIAL64, false));
    let out = wait_bounded(
        spawn(&["--kernel", kernel.to_str().unwrap(), "--net-fd", "999"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("hull-vmm: cannot open inherited net fd 999: Bad file descriptor"),
        "{err}"
    );
}

#[test]
fn boots_with_every_device_configured() {
    if !kvm_available("boots_with_every_device_configured") {
        return;
    }
    let (dir, kernel) = write_temp("serial.elf", &elf(SERIAL64, false));
    let disk = dir.as_path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let uds = dir.as_path().join("vsock.sock");
    let block = format!("{},ro", disk.display());
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "64",
        "--vcpus",
        "2",
        "--block",
        &block,
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--id",
        "sandbox-test",
    ];
    if std::path::Path::new("/dev/net/tun").exists() {
        args.extend(["--tap", "hullvmmcli0"]);
    } else {
        eprintln!("boots_with_every_device_configured: /dev/net/tun absent, no --tap");
    }
    // A second net device on an inherited fd (a SEQPACKET socket standing in for a tap; not
    // close-on-exec, so hull-vmm inherits it as hull passes a pod's tap).
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two fds into the array of two.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, pair.as_mut_ptr()) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    let _pair = unsafe {
        use std::os::fd::{FromRawFd, OwnedFd};
        (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1]))
    };
    let net_fd = format!("{},mac=02:68:75:6c:00:00", pair[0]);
    args.extend(["--net-fd", &net_fd]);
    let out = wait_bounded(spawn(&args), Duration::from_secs(60));
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HU\n");
    // The vsock device removes its socket when the VMM ends.
    assert!(!uds.exists());
}

#[test]
fn stdin_reaches_the_guest_through_the_serial_port() {
    if !kvm_available("stdin_reaches_the_guest_through_the_serial_port") {
        return;
    }
    let (_d, kernel) = write_temp("echo.elf", &elf(ECHO64, false));
    let mut child = Command::new(BIN)
        .args(["--kernel", kernel.to_str().unwrap(), "--memory", "16"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"x").unwrap();
    let out = wait_bounded(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x");
}
