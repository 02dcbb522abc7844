//! The `hull` CLI on real busybox bundles: the runc verbs a runtime caller uses.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::Duration;

use hull_tests::*;
use serde_json::{json, Value};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_prints_output_and_returns_the_exit_status() {
    let h = Hull::new();
    let b = Bundle::new(&["sh", "-c", "echo hello from hull; exit 7"]);
    let id = unique_id("run");
    let out = h.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(stdout(&out), "hello from hull\n");
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert!(!h.has_state(&id), "run without --keep removes the state");
}

#[test]
fn run_reports_a_signal_death_as_128_plus_signal() {
    let h = Hull::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("sig");
    let child = h
        .cmd(&["run", "--bundle", b.path().to_str().unwrap(), &id])
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        h.has_state(&id) && h.state(&id)["status"] == "running"
    }));
    h.ok(&["kill", &id, "KILL"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137));
    assert!(!h.has_state(&id));
}

#[test]
fn run_detached_then_kill_and_delete() {
    let h = Hull::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("det");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(h.state(&id)["status"], "running");
    h.ok(&["kill", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(5), || h.state(&id)
        ["status"]
        == "stopped"));
    h.ok(&["delete", &id]);
    assert!(!h.has_state(&id));
}

#[test]
fn create_start_state_kill_delete_lifecycle() {
    let h = Hull::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("life");
    let pid_file = b.path().join("init.pid");
    h.ok(&[
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    let st = h.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    // The spec version hull implements: the one `features` names as its newest.
    let features: serde_json::Value = serde_json::from_str(&h.ok(&["features"])).unwrap();
    assert_eq!(st["ociVersion"], features["ociVersionMax"]);
    assert_eq!(st["ociVersion"], "1.2.0");
    assert_eq!(
        st["bundle"],
        b.path().canonicalize().unwrap().to_str().unwrap()
    );
    let pid: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(st["pid"], pid);
    // The init waits for start: it is not yet the user's process.
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmd).contains("sleep"));

    h.ok(&["start", &id]);
    assert_eq!(h.state(&id)["status"], "running");
    assert!(wait_until(Duration::from_secs(5), || {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .contains("sleep")
    }));

    // A second start is refused, and the container keeps running.
    let again = h.run(&["start", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(stderr(&again).lines().count(), 1, "{}", stderr(&again));
    assert!(stderr(&again).contains("running"), "{}", stderr(&again));

    // A running container cannot be deleted without --force.
    let del = h.run(&["delete", &id]);
    assert_eq!(del.status.code(), Some(1));
    assert!(h.has_state(&id));

    // sleep is the pid namespace's init: only SIGKILL ends it, as with runc.
    h.ok(&["kill", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(5), || h.state(&id)
        ["status"]
        == "stopped"));
    assert_eq!(h.state(&id)["pid"], 0);
    h.ok(&["delete", &id]);
    assert!(!h.has_state(&id));
    assert!(
        cgroups_named(&id).is_empty(),
        "cgroup left: {:?}",
        cgroups_named(&id)
    );
}

#[test]
fn kill_takes_signal_names_and_numbers() {
    let h = Hull::new();
    // The shell traps USR1 and reports it through a file, then exits on TERM (15).
    let b = Bundle::new(&[
        "sh",
        "-c",
        "trap 'echo usr1 > /tmp/got' USR1; trap 'exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    let id = unique_id("kill");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    std::thread::sleep(Duration::from_millis(300));
    h.ok(&["kill", &id, "SIGUSR1"]);
    let got = b.path().join("rootfs/tmp/got");
    assert!(wait_until(Duration::from_secs(5), || got.exists()));
    assert_eq!(h.state(&id)["status"], "running", "USR1 does not stop it");
    h.ok(&["kill", &id, "15"]);
    assert!(wait_until(Duration::from_secs(5), || h.state(&id)
        ["status"]
        == "stopped"));
    h.ok(&["delete", &id]);
}

#[test]
fn exec_argv_and_process_file_and_detached() {
    let h = Hull::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("exec");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);

    let out = h.run(&[
        "exec",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        "--user",
        "65534:65534",
        &id,
        "sh",
        "-c",
        "echo $FOO $(pwd) $(id -u):$(id -g); exit 5",
    ]);
    assert_eq!(stdout(&out), "bar /tmp 65534:65534\n");
    assert_eq!(out.status.code(), Some(5));

    let process = json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", "echo from-process-file"],
        "env": ["PATH=/bin"],
        "cwd": "/"
    });
    let pf = b.path().join("process.json");
    std::fs::write(&pf, process.to_string()).unwrap();
    let out = h.run(&["exec", "--process", pf.to_str().unwrap(), &id]);
    assert_eq!(stdout(&out), "from-process-file\n", "{}", stderr(&out));
    assert!(out.status.success());

    let pid_file = b.path().join("exec.pid");
    h.ok(&[
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sleep",
        "999",
    ]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pids: Vec<i32> = serde_json::from_str(&h.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&pid), "{pid} not in {pids:?}");
    assert_eq!(pids.len(), 2, "{pids:?}");
    let table = h.ok(&["ps", &id]);
    assert!(table.lines().next().unwrap().contains("PID"));
    assert!(table.contains("sleep 999"), "{table}");

    // Exec into a stopped container is refused.
    h.ok(&["kill", "--all", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(5), || h.state(&id)
        ["status"]
        == "stopped"));
    let out = h.run(&["exec", &id, "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    h.ok(&["delete", &id]);
}

/// A host container gets a cgroup of its own in every cgroup v1 hierarchy of a controller
/// this host mounts (each controller's mount point and the container's path under it, as
/// hull's patched libcgroups finds them from one read of mountinfo), and `delete` removes
/// every one.
#[test]
fn a_host_container_has_its_cgroup_in_every_v1_hierarchy_and_delete_removes_them() {
    const TEST: &str = "a_host_container_has_its_cgroup_in_every_v1_hierarchy";
    // (mount point, controllers) of each v1 hierarchy with a controller libcgroups drives.
    let driven = [
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "hugetlb",
        "memory",
        "pids",
        "perf_event",
        "blkio",
        "net_prio",
        "net_cls",
        "freezer",
    ];
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v1: Vec<(String, Vec<String>)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split(' ');
            (r.next()? == "cgroup").then_some(())?;
            let ctrls: Vec<String> = r
                .nth(1)?
                .split(',')
                .filter(|o| driven.contains(o))
                .map(String::from)
                .collect();
            (!ctrls.is_empty()).then(|| (left.split(' ').nth(4).unwrap().to_string(), ctrls))
        })
        .collect();
    if v1.is_empty() {
        skip(
            TEST,
            "this host mounts no cgroup v1 controller (cgroup_v2.rs covers v2)",
        );
        return;
    }
    let h = Hull::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("cgv1");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let pid = h.state(&id)["pid"].as_i64().unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for (mount, ctrls) in &v1 {
        let path = cg
            .lines()
            .find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, c, path) = (p.next()?, p.next()?, p.next()?);
                ctrls
                    .iter()
                    .all(|x| c.split(',').any(|y| y == x))
                    .then(|| path.to_string())
            })
            .unwrap_or_else(|| panic!("no line for {mount} in /proc/{pid}/cgroup:\n{cg}"));
        assert!(
            path.contains(&id),
            "{mount}: the container is in {path}, not a cgroup of its own"
        );
        let procs = std::fs::read_to_string(format!("{mount}{path}/cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == pid.to_string()),
            "{mount}{path}/cgroup.procs lacks the init {pid}: {procs}"
        );
    }
    h.ok(&["kill", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(5), || h.state(&id)
        ["status"]
        == "stopped"));
    h.ok(&["delete", &id]);
    assert_eq!(cgroups_named(&id), Vec::<std::path::PathBuf>::new());
}

#[test]
fn list_pause_resume_update_events() {
    let h = Hull::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("misc");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);

    let list: Value = serde_json::from_str(&h.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(h.ok(&["list", "-q"]).trim(), id);
    assert!(h.ok(&["list"]).contains("running"));

    h.ok(&["pause", &id]);
    assert_eq!(h.state(&id)["status"], "paused");
    let pid = h.state(&id)["pid"].as_i64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_paren = stat.rsplit(')').next().unwrap();
    assert!(after_paren.trim_start().starts_with('D') || after_paren.trim_start().starts_with('S'));
    h.ok(&["resume", &id]);
    assert_eq!(h.state(&id)["status"], "running");

    // update: memory limit and pids limit land in the container's cgroup.
    let mut child = h
        .cmd(&["update", "-r", "-", &id])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"memory":{"limit":67108864},"pids":{"limit":77}}"#)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mem_path = cg
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            if ctrl.split(',').any(|c| c == "memory") {
                Some(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
            } else if ctrl.is_empty() && !std::path::Path::new("/sys/fs/cgroup/memory").exists() {
                Some(format!("/sys/fs/cgroup{path}/memory.max"))
            } else {
                None
            }
        })
        .expect("memory cgroup of the container");
    assert_eq!(
        std::fs::read_to_string(&mem_path).unwrap().trim(),
        "67108864"
    );
    // Without -r and without flags the resources come on stdin.
    let mut child = h
        .cmd(&["update", &id])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"pids":{"limit":88}}"#)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let ev: Value = serde_json::from_str(h.ok(&["events", "--stats", &id]).trim()).unwrap();
    assert_eq!(ev["data"]["pids"]["limit"], 88);
    h.ok(&["update", "--pids-limit", "99", &id]);

    let ev: Value = serde_json::from_str(h.ok(&["events", "--stats", &id]).trim()).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], id.as_str());
    assert!(ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 67108864);
    assert_eq!(ev["data"]["pids"]["limit"], 99);
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1);

    h.ok(&["delete", "--force", &id]);
    assert!(!h.has_state(&id));
    assert!(cgroups_named(&id).is_empty());
}

#[test]
fn spec_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let h = Hull::new();
    h.ok(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"], json!(["sh"]));
    assert!(spec["linux"]["namespaces"].as_array().unwrap().len() >= 4);
    // A second spec does not overwrite.
    let again = h.run(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));

    let rl = tempfile::tempdir().unwrap();
    h.ok(&[
        "spec",
        "--rootless",
        "--bundle",
        rl.path().to_str().unwrap(),
    ]);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(rl.path().join("config.json")).unwrap()).unwrap();
    assert!(spec["linux"]["uidMappings"].is_array());

    let f: Value = serde_json::from_str(&h.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("pid")));
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
}

#[test]
fn run_with_stdout_on_dev_null_still_lets_the_container_write() {
    let h = Hull::new();
    let b = Bundle::new(&["sh", "-c", "echo to-null && echo ok > /tmp/wrote"]);
    let id = unique_id("null");
    let st = h
        .cmd(&["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(b.path().join("rootfs/tmp/wrote").exists());
}

#[test]
fn container_processes_cannot_write_the_hull_binary() {
    use std::os::fd::AsRawFd;
    let h = Hull::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("guard");
    h.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    // The waiting init is a hull process inside the container: what CVE-2019-5736
    // attacks reach through /proc/<pid>/exe.
    let pid = h.state(&id)["pid"].as_i64().unwrap();
    let exe = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(format!("/proc/{pid}/exe"))
        .unwrap();
    h.ok(&["delete", "--force", &id]);
    // The binary behind that fd sits on a read-only mount: once no hull runs from it
    // (other tests may be running hull right now: ETXTBSY), writing gives EROFS.
    let vfs = nix::sys::statvfs::fstatvfs(&exe).unwrap();
    assert!(vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", exe.as_raw_fd()))
        .unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::ETXTBSY)),
        "{err}"
    );
}

#[test]
fn foreground_run_with_a_terminal_proxies_the_pty() {
    let h = Hull::new();
    let b = Bundle::with(&["sh", "-c", "tty; read line; echo got:$line"], |v| {
        v["process"]["terminal"] = true.into()
    });
    let id = unique_id("fgtty");
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = h
        .cmd(&["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut text = String::new();
    let mut buf = [0u8; 512];
    let start = std::time::Instant::now();
    while !text.contains("/dev/pts/") && start.elapsed() < Duration::from_secs(10) {
        let n = std::io::Read::read(&mut master, &mut buf).unwrap();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    master.write_all(b"hello\r").unwrap();
    while !text.contains("got:hello") && start.elapsed() < Duration::from_secs(10) {
        let n = std::io::Read::read(&mut master, &mut buf).unwrap();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains("got:hello"), "{text:?}");
    assert!(child.wait().unwrap().success());
    assert!(!h.has_state(&id));
}

#[test]
fn events_report_an_oom_kill() {
    let h = Hull::new();
    // dd's 64 MiB buffer cannot fit a 16 MiB cgroup: the OOM killer ends dd, sh lives on.
    let b = Bundle::with(
        &[
            "sh",
            "-c",
            "sleep 0.5; dd if=/dev/zero of=/dev/null bs=64M count=1; sleep 1000",
        ],
        |v| {
            v["linux"]["resources"]["memory"] =
                serde_json::json!({"limit": 16777216, "swap": 16777216});
        },
    );
    let id = unique_id("oom");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let mut cmd = h.cmd(&["events", "--interval", "100ms", &id]);
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut saw_oom = false;
    while std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["type"] == "oom" {
                assert_eq!(v["id"], id.as_str());
                saw_oom = true;
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    h.ok(&["delete", "--force", &id]);
    assert!(saw_oom, "no oom event within 20 s");
}

#[test]
fn check_reports_every_capability_and_the_auto_choice() {
    let h = Hull::new();
    let out = h.ok(&["check"]);
    for name in [
        "host isolation",
        "/dev/kvm",
        "KVM hardware-backed",
        "vhost-vsock",
        "block passthrough",
        "VFIO / IOMMU",
        "vfio-pci devices",
        "qemu",
        "virtiofsd",
        "guest kernel",
        "guest initrd",
        "vm hypervisor (auto)",
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} line in:\n{out}"));
        assert!(line.len() > name.len() + 8, "{name} has no reason: {line}");
    }
    let host = out.lines().find(|l| l.contains("host isolation")).unwrap();
    assert!(host.contains(" yes "), "{host}");
    // No usable /dev/kvm means KVM cannot be hardware-backed, and auto never picks builtin.
    if !std::path::Path::new("/dev/kvm").exists() {
        let hw = out
            .lines()
            .find(|l| l.contains("KVM hardware-backed"))
            .unwrap();
        assert!(hw.contains(" no "), "{hw}");
        assert!(!out.contains("builtin (hull-vmm)"), "{out}");
    }
    // A CPU without vmx/svm has no hardware virtualization: a /dev/kvm there (this project's
    // machines have an emulating one) must be found not hardware-backed, and auto must pick
    // QEMU's TCG.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw_virt {
        let hw = out
            .lines()
            .find(|l| l.contains("KVM hardware-backed"))
            .unwrap();
        assert!(hw.contains(" no "), "{hw}");
        let auto = out
            .lines()
            .find(|l| l.contains("vm hypervisor (auto)"))
            .unwrap();
        assert!(auto.contains("qemu (tcg)"), "{auto}");
    }
}
