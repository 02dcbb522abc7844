//! OCI config features a container caller relies on: namespaces joined by path,
//! terminal through a console socket, hooks, rlimits, capabilities, seccomp,
//! masked and read-only paths, devices.

use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use hull_tests::*;
use serde_json::{json, Value};

fn run_out(h: &Hull, b: &Bundle) -> (i32, String, String) {
    let id = unique_id("feat");
    let out = h.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn joins_namespaces_by_path() {
    let h = Hull::new();
    let a = Bundle::with(&["sleep", "1000"], |v| v["hostname"] = "pod-a".into());
    let a_id = unique_id("nsa");
    h.ok(&["run", "-d", "--bundle", a.path().to_str().unwrap(), &a_id]);
    let pid = h.state(&a_id)["pid"].as_i64().unwrap();
    // The second container joins A's uts, ipc and net namespaces as CRI does.
    let b = Bundle::with(&["sh", "-c", "hostname; readlink /proc/self/ns/net"], |v| {
        let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| !matches!(n["type"].as_str(), Some("uts" | "ipc" | "network")));
        for (t, f) in [("uts", "uts"), ("ipc", "ipc"), ("network", "net")] {
            ns.push(json!({"type": t, "path": format!("/proc/{pid}/ns/{f}")}));
        }
        v.as_object_mut().unwrap().remove("hostname");
    });
    let (code, out, err) = run_out(&h, &b);
    assert_eq!(code, 0, "{err}");
    let want_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("pod-a"));
    assert_eq!(lines.next(), Some(want_net.to_str().unwrap()));
    h.ok(&["delete", "--force", &a_id]);
}

#[test]
fn terminal_through_a_console_socket() {
    let h = Hull::new();
    let b = Bundle::with(&["sh", "-c", "tty; echo on-the-pty"], |v| {
        v["process"]["terminal"] = true.into()
    });
    let sock = b.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let id = unique_id("tty");
    h.ok(&[
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
    ]);
    let (stream, _) = listener.accept().unwrap();
    let mut buf = [0u8; 1024];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("pty master over the console socket");
    // SAFETY: SCM_RIGHTS just gave us this fd; we own it.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    h.ok(&["start", &id]);
    let mut f = std::fs::File::from(master);
    let mut text = String::new();
    let mut chunk = [0u8; 512];
    while !text.contains("on-the-pty") {
        match f.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("on-the-pty"), "{text:?}");
    assert!(wait_until(Duration::from_secs(5), || h.state(&id)
        ["status"]
        == "stopped"));
    h.ok(&["delete", &id]);

    // terminal without a console socket on create is refused.
    let id2 = unique_id("tty2");
    let out = h.run(&["create", "--bundle", b.path().to_str().unwrap(), &id2]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!h.has_state(&id2));
}

#[test]
fn hooks_run_with_the_state_on_stdin() {
    let h = Hull::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat >> {}; echo ' {name}' >> {}", log.display(), log.display())]});
    let b = Bundle::with(&["true"], |v| {
        v["hooks"] = json!({
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    let (code, _, err) = run_out(&h, &b);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    for name in ["createRuntime", "poststart", "poststop"] {
        assert!(text.contains(name), "{name} hook did not run: {text}");
    }
    assert!(
        text.contains("\"ociVersion\""),
        "hooks get the state JSON: {text}"
    );
}

#[test]
fn rlimits_and_capabilities() {
    let h = Hull::new();
    let b = Bundle::with(
        &["sh", "-c", "ulimit -n; grep CapEff /proc/self/status"],
        |v| {
            v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
            v["process"]["capabilities"] = json!({
                "bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]
            });
        },
    );
    let (code, out, err) = run_out(&h, &b);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("256"));
    // CAP_CHOWN is bit 0.
    assert_eq!(
        lines.next().unwrap().split_whitespace().nth(1),
        Some("0000000000000001")
    );
}

#[test]
fn seccomp_denies_a_syscall() {
    let h = Hull::new();
    let b = Bundle::with(
        &["sh", "-c", "mkdir /tmp/x && echo made || echo denied"],
        |v| {
            v["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            });
        },
    );
    let (code, out, err) = run_out(&h, &b);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "denied");
}

#[test]
fn masked_and_readonly_paths() {
    let h = Hull::new();
    let b = Bundle::with(
        &["sh", "-c", "wc -c < /proc/timer_list; echo 1 > /proc/sys/kernel/domainname && echo wrote || echo ro"],
        |v| {
            v["linux"]["maskedPaths"] = json!(["/proc/timer_list"]);
            v["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
        },
    );
    let (code, out, err) = run_out(&h, &b);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next().map(str::trim), Some("0"));
    assert_eq!(lines.next(), Some("ro"));
}

#[test]
fn devices_from_the_spec() {
    let h = Hull::new();
    let b = Bundle::with(
        &[
            "sh",
            "-c",
            "stat -c '%t:%T %a' /dev/hullnull; echo x > /dev/hullnull && echo ok",
        ],
        |v| {
            v["linux"]["devices"] = json!([{
                "path": "/dev/hullnull", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0
            }]);
            let res = v["linux"]["resources"].as_object_mut().unwrap();
            let devs = res.entry("devices").or_insert_with(|| json!([]));
            devs.as_array_mut()
                .unwrap()
                .push(json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}));
        },
    );
    let (code, out, err) = run_out(&h, &b);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1:3 666\nok\n");
}

#[test]
fn environment_cwd_and_user_from_the_spec() {
    let h = Hull::new();
    let b = Bundle::with(&["sh", "-c", "echo $GREETING $(pwd) $(id -u)"], |v| {
        v["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push("GREETING=hi".into());
        v["process"]["cwd"] = "/tmp".into();
        v["process"]["user"] = json!({"uid": 65534, "gid": 65534});
    });
    let (code, out, err) = run_out(&h, &b);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hi /tmp 65534\n");
    let _: Value = json!(null);
}
