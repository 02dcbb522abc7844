//! The hull shim under a real containerd 1.6 (`ctr`), no mocks: output and exit
//! statuses, the task verbs, real-time signals, a tty, a pod sharing one shim, a
//! containerd restart, a SIGKILLed shim, the runtime options, and the bad-input cases.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{hull_root, Containerd, HULL, IMAGE};

#[test]
fn run_rm_prints_output_and_returns_exit_status() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("runrm");
    let r = c.run(
        &["--rm"],
        "r1",
        &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
    );
    assert_eq!(r.code, 3, "stderr: {}", r.err);
    assert_eq!(r.out, "hello\n");
    assert!(r.err.contains("oops"), "stderr: {}", r.err);
    // Killed by a signal from outside: 128 + 9. (A pid-namespace init cannot
    // SIGKILL itself, so the kill comes through `ctr task kill`.)
    let mut fg = Command::new("timeout")
        .args(["-s", "KILL", "30", "ctr", "-a"])
        .arg(&c.sock)
        .args([
            "-n",
            &c.ns,
            "run",
            "--rm",
            "--runtime",
            HULL,
            IMAGE,
            "r2",
            "sleep",
            "1000",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    c.wait_status("r2", "RUNNING");
    let r = c.ctr(&["task", "kill", "-s", "KILL", "r2"]);
    assert_eq!(r.code, 0, "kill: {}", r.err);
    assert_eq!(fg.wait().unwrap().code(), Some(137));
    // stdin reaches the process, and its EOF too.
    let mut cat = Command::new("timeout")
        .args(["-s", "KILL", "30", "ctr", "-a"])
        .arg(&c.sock)
        .args([
            "-n",
            &c.ns,
            "run",
            "--rm",
            "--runtime",
            HULL,
            IMAGE,
            "r4",
            "cat",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = cat.stdin.take().unwrap();
        stdin.write_all(b"piped-data\n").unwrap();
    }
    let out = cat.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped-data\n");
    let r = c.run(&["--rm"], "r3", &["true"]);
    assert_eq!(r.code, 0, "stderr: {}", r.err);
    c.assert_clean();
}

#[test]
fn detached_task_verbs() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("verbs");
    let r = c.run(&["-d"], "d1", &["sh", "-c", "while true; do sleep 1; done"]);
    assert_eq!(r.code, 0, "run -d: {}", r.err);
    c.wait_status("d1", "RUNNING");

    let r = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "d1",
        "sh",
        "-c",
        "echo in-exec; exit 5",
    ]);
    assert_eq!(
        (r.code, r.out.as_str()),
        (5, "in-exec\n"),
        "exec: {}",
        r.err
    );

    assert_eq!(c.ctr(&["task", "pause", "d1"]).code, 0);
    c.wait_status("d1", "PAUSED");
    assert_eq!(c.ctr(&["task", "resume", "d1"]).code, 0);
    c.wait_status("d1", "RUNNING");

    let r = c.ctr(&["task", "metrics", "d1"]);
    assert_eq!(r.code, 0, "metrics: {}", r.err);
    for metric in ["memory.usage_in_bytes", "cpuacct.usage", "pids.current"] {
        assert!(r.out.contains(metric), "metrics lack {metric}:\n{}", r.out);
    }

    let r = c.ctr(&["task", "ps", "d1"]);
    let init = c.pid("d1");
    assert!(r.out.contains(&init.to_string()), "ps:\n{}", r.out);

    // A running exec shows in `ps` with its exec id, and dies by signal: 128 + 15.
    let mut bg = Command::new("timeout")
        .args(["-s", "KILL", "30", "ctr", "-a"])
        .arg(&c.sock)
        .args([
            "-n",
            &c.ns,
            "task",
            "exec",
            "--exec-id",
            "bg",
            "d1",
            "sleep",
            "1000",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !c.ctr(&["task", "ps", "d1"]).out.contains("ExecID:bg") {
        assert!(Instant::now() < deadline, "exec bg not in ps");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = c.ctr(&["task", "kill", "--exec-id", "bg", "-s", "TERM", "d1"]);
    assert_eq!(r.code, 0, "kill exec: {}", r.err);
    assert_eq!(bg.wait().unwrap().code(), Some(143));

    // An exec killed by a signal reports 128 + signal.
    let r = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "d1",
        "sh",
        "-c",
        "kill -TERM $$",
    ]);
    assert_eq!(r.code, 143, "exec: {}", r.err);

    // Update (ctr 1.6 has no `task update`): ask the shim itself over its ttrpc
    // socket, as containerd's Update would; the limit lands in the container's cgroup.
    update_memory_limit(&c, "d1", 67108864);
    let r = c.ctr(&["task", "metrics", "d1"]);
    assert!(
        r.out.contains("67108864"),
        "memory limit not applied:\n{}",
        r.out
    );

    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "d1"]).code, 0);
    c.wait_status("d1", "STOPPED");
    let r = c.ctr(&["task", "delete", "d1"]);
    assert_eq!(r.code, 0, "delete: {}", r.err);
    assert_eq!(c.ctr(&["container", "rm", "d1"]).code, 0);
    c.assert_clean();
}

#[test]
fn real_time_signals_reach_the_task_and_systemds_stop_signal_stops_it() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("rtsig");
    let r = c.run(
        &["-d"],
        "rt1",
        &[
            "sh",
            "-c",
            "trap 'echo 40 >> /tmp/got' 40; trap 'exit 0' 37; while true; do sleep 0.05; done",
        ],
    );
    assert_eq!(r.code, 0, "run -d: {}", r.err);
    c.wait_status("rt1", "RUNNING");
    let got = || {
        c.ctr(&["task", "exec", "--exec-id", "cat", "rt1", "cat", "/tmp/got"])
            .out
    };
    // ctr sends the number (40), then SIGRTMIN+3 as 37: what Docker's STOPSIGNAL sends.
    let r = c.ctr(&["task", "kill", "-s", "40", "rt1"]);
    assert_eq!(r.code, 0, "kill 40: {}", r.err);
    let deadline = Instant::now() + Duration::from_secs(10);
    while got() != "40\n" {
        assert!(
            Instant::now() < deadline,
            "signal 40 not trapped: {:?}",
            got()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = c.ctr(&["task", "kill", "-s", "SIGRTMIN+3", "rt1"]);
    assert_eq!(r.code, 0, "kill SIGRTMIN+3: {}", r.err);
    c.wait_status("rt1", "STOPPED");
    let r = c.ctr(&["task", "delete", "rt1"]);
    assert_eq!(r.code, 0, "delete: {}", r.err);
    assert_eq!(c.ctr(&["container", "rm", "rt1"]).code, 0);
    c.assert_clean();
}

#[test]
fn tty_container() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("tty");
    let r = c.ctr_tty(&[
        "run",
        "-t",
        "--rm",
        "--runtime",
        HULL,
        IMAGE,
        "t1",
        "sh",
        "-c",
        "tty; echo cols=$COLUMNS; exit 4",
    ]);
    assert!(
        r.out.contains("/dev/pts/"),
        "no pty in the container:\n{}",
        r.out
    );
    assert_eq!(r.code, 4, "output:\n{}", r.out);

    // An exec with a terminal (ctr resizes its pty too) in a detached container.
    assert_eq!(c.run(&["-d"], "t2", &["sleep", "1000"]).code, 0);
    let r = c.ctr_tty(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        "e1",
        "t2",
        "sh",
        "-c",
        "tty; exit 6",
    ]);
    assert!(
        r.out.contains("/dev/pts/"),
        "no pty in the exec:\n{}",
        r.out
    );
    assert!(!r.out.contains("resize"), "resize failed:\n{}", r.out);
    assert_eq!(r.code, 6, "output:\n{}", r.out);
    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "t2"]).code, 0);
    c.wait_status("t2", "STOPPED");
    assert_eq!(c.ctr(&["task", "delete", "t2"]).code, 0);
    assert_eq!(c.ctr(&["container", "rm", "t2"]).code, 0);
    c.assert_clean();
}

#[test]
fn pod_containers_share_one_shim() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("pod");
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=pod1"];
    assert_eq!(
        c.run(
            &[&["-d"][..], &pod[..]].concat(),
            "pod1",
            &["sleep", "1000"]
        )
        .code,
        0
    );
    assert_eq!(
        c.run(
            &[&["-d"][..], &pod[..]].concat(),
            "app1",
            &["sleep", "1000"]
        )
        .code,
        0
    );
    // A container of another pod gets its own shim.
    assert_eq!(c.run(&["-d"], "other", &["sleep", "1000"]).code, 0);
    let addr = |id: &str| std::fs::read_to_string(c.bundle(id).join("address")).unwrap();
    assert_eq!(
        addr("pod1"),
        addr("app1"),
        "containers of one pod must share a shim"
    );
    assert_ne!(addr("pod1"), addr("other"));
    let shims = c.shims();
    let cmdlines: Vec<String> = shims
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default())
        .collect();
    assert_eq!(shims.len(), 2, "one shim per pod: {cmdlines:?}");

    // Stopping one container of the pod leaves the other served.
    let r = c.ctr(&["task", "kill", "-s", "KILL", "app1"]);
    assert_eq!(r.code, 0, "kill app1: {}", r.err);
    c.wait_status("app1", "STOPPED");
    assert_eq!(c.ctr(&["task", "delete", "app1"]).code, 0);
    let r = c.ctr(&["task", "exec", "--exec-id", "x", "pod1", "echo", "still"]);
    assert_eq!((r.code, r.out.as_str()), (0, "still\n"), "{}", r.err);
    for id in ["pod1", "other"] {
        assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", id]).code, 0);
        c.wait_status(id, "STOPPED");
        assert_eq!(c.ctr(&["task", "delete", id]).code, 0);
    }
    for id in ["pod1", "app1", "other"] {
        assert_eq!(c.ctr(&["container", "rm", id]).code, 0);
    }
    c.assert_clean();
}

#[test]
fn survives_containerd_restart() {
    if !common::usable() {
        return;
    }
    let mut c = Containerd::start("restart");
    assert_eq!(c.run(&["-d"], "s1", &["sleep", "1000"]).code, 0);
    c.wait_status("s1", "RUNNING");
    let pid = c.pid("s1");
    c.kill_daemon();
    c.boot();
    assert_eq!(c.status("s1"), "RUNNING");
    assert_eq!(c.pid("s1"), pid);
    let r = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "after",
        "s1",
        "echo",
        "after-restart",
    ]);
    assert_eq!(
        (r.code, r.out.as_str()),
        (0, "after-restart\n"),
        "{}",
        r.err
    );
    // The exit event reaches the new containerd: the shim's publisher reconnected.
    let events = Command::new("timeout")
        .args(["-s", "KILL", "4", "ctr", "-a"])
        .arg(&c.sock)
        .args(["-n", &c.ns, "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "s1"]).code, 0);
    c.wait_status("s1", "STOPPED");
    let seen = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        seen.lines()
            .any(|l| l.contains("/tasks/exit") && l.contains("\"exit_status\":137")),
        "no exit event after the restart:\n{seen}"
    );
    assert_eq!(c.ctr(&["task", "delete", "s1"]).code, 0);
    assert_eq!(c.ctr(&["container", "rm", "s1"]).code, 0);
    c.assert_clean();
}

/// `ctr task exec` (the shim's spawn helper) gets the container's seccomp profile, as runc's
/// shim does: containerd's default profile refuses a user namespace to a process without
/// CAP_SYS_ADMIN, in the init and in an exec alike.
#[test]
fn exec_gets_the_containers_seccomp_profile() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("seccexec");
    let r = c.run(&["-d", "--seccomp"], "s1", &["sleep", "1000"]);
    assert_eq!(r.code, 0, "run -d: {}", r.err);
    c.wait_status("s1", "RUNNING");
    let probe = "grep Seccomp: /proc/self/status; unshare -U -r id -u || echo refused";
    let r = c.ctr(&["task", "exec", "--exec-id", "e1", "s1", "sh", "-c", probe]);
    assert_eq!(r.code, 0, "exec: {}", r.err);
    assert_eq!(r.out, "Seccomp:\t2\nrefused\n", "exec: {}", r.err);
    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "s1"]).code, 0);
    c.wait_status("s1", "STOPPED");
    assert_eq!(c.ctr(&["task", "delete", "s1"]).code, 0);
    assert_eq!(c.ctr(&["container", "rm", "s1"]).code, 0);
    c.assert_clean();
}

#[test]
fn sigkilled_shim_is_cleaned_up_by_delete() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("shimkill");
    assert_eq!(c.run(&["-d"], "k1", &["sleep", "1000"]).code, 0);
    c.wait_status("k1", "RUNNING");
    let init = c.pid("k1");
    let shims = c.shims();
    assert_eq!(shims.len(), 1);
    assert!(Command::new("kill")
        .args(["-9", &shims[0].to_string()])
        .status()
        .unwrap()
        .success());
    // containerd notices, runs `containerd-shim-hull-v2 delete`, which kills the container.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !c.status("k1").is_empty() || alive(init) {
        assert!(
            Instant::now() < deadline,
            "container of the dead shim still there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.ctr(&["container", "rm", "k1"]).code, 0);
    c.assert_clean();
}

/// Send the shim of `id` a task Update with a memory limit.
fn update_memory_limit(c: &Containerd, id: &str, bytes: u64) {
    use containerd_shim::api::UpdateTaskRequest;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::ttrpc::{context, Client};
    use containerd_shim::protos::TaskClient;

    let addr = std::fs::read_to_string(c.bundle(id).join("address")).unwrap();
    let client = TaskClient::new(Client::connect(addr.trim()).expect("connect to the shim"));
    let resources = format!("{{\"memory\":{{\"limit\":{bytes}}}}}");
    let req = UpdateTaskRequest {
        id: id.into(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: resources.into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    client
        .update(context::with_timeout(10_000_000_000), &req)
        .expect("task update");
}

/// Whether `pid` runs (a zombie waiting for its new parent counts as gone).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or_default()
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn runtime_config_path_is_read() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("config");
    let root = c.dir.join("hull-root");
    let cfg = c.dir.join("hull.toml");
    std::fs::write(
        &cfg,
        format!(
            "isolation = \"host\"\n[shim]\nroot = \"{}\"\n",
            root.display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let r = c.run(
        &["-d", "--runtime-config-path", cfg],
        "c1",
        &["sleep", "1000"],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        root.join(&c.ns).join("c1").join("state.json").exists(),
        "the config's state root was not used"
    );
    let r = c.ctr(&["task", "kill", "-s", "KILL", "c1"]);
    assert_eq!(r.code, 0, "kill c1: {}", r.err);
    c.wait_status("c1", "STOPPED");
    assert_eq!(c.ctr(&["task", "delete", "c1"]).code, 0);
    assert_eq!(c.ctr(&["container", "rm", "c1"]).code, 0);
    assert!(!root.join(&c.ns).join("c1").exists());
    c.assert_clean();
}

#[test]
fn bad_input_gives_one_clear_error_and_keeps_serving() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("bad");
    assert_eq!(c.run(&["-d"], "good", &["sleep", "1000"]).code, 0);

    // A config file named by ConfigPath that does not exist.
    let r = c.run(
        &["--rm", "--runtime-config-path", "/nonexistent/hull.toml"],
        "b1",
        &["true"],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("/nonexistent/hull.toml") && r.err.contains("no such file"),
        "unclear error: {}",
        r.err
    );

    // A bundle the runtime rejects: a namespace path that does not exist.
    let r = c.run(
        &["--rm", "--with-ns", "pid:/nonexistent/ns/pid"],
        "b2",
        &["true"],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("create container b2"),
        "unclear error: {}",
        r.err
    );

    // An isolation that does not exist (vm's faults: containerd_vm.rs).
    let r = c.run(
        &["--rm", "--annotation", "io.hull.isolation=bogus"],
        "b4",
        &["true"],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("isolation \"bogus\""),
        "unclear error: {}",
        r.err
    );

    // Exec into a stopped task.
    assert_eq!(c.run(&["-d"], "stopped", &["true"]).code, 0);
    c.wait_status("stopped", "STOPPED");
    let r = c.ctr(&["task", "exec", "--exec-id", "x", "stopped", "true"]);
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("container stopped is stopped: cannot exec"),
        "{}",
        r.err
    );

    // Kill of an unknown exec id.
    let r = c.ctr(&["task", "kill", "--exec-id", "nope", "good"]);
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("exec nope not found in container good"),
        "{}",
        r.err
    );

    // Checkpoint says it is not supported.
    let r = c.ctr(&["task", "checkpoint", "good"]);
    assert_ne!(r.code, 0);
    assert!(r.err.contains("not supported"), "{}", r.err);

    // The shim still serves its other containers.
    let r = c.ctr(&["task", "exec", "--exec-id", "ok", "good", "echo", "alive"]);
    assert_eq!((r.code, r.out.as_str()), (0, "alive\n"), "{}", r.err);

    for id in ["b1", "b2", "b4"] {
        let r = c.ctr(&["container", "info", id]);
        assert_ne!(r.code, 0, "container {id} left behind");
    }
    assert_eq!(c.ctr(&["task", "delete", "stopped"]).code, 0);
    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "good"]).code, 0);
    c.wait_status("good", "STOPPED");
    assert_eq!(c.ctr(&["task", "delete", "good"]).code, 0);
    for id in ["stopped", "good"] {
        assert_eq!(c.ctr(&["container", "rm", id]).code, 0);
    }
    assert!(!hull_root(&c.ns).join("b2").exists());
    c.assert_clean();
}

#[test]
fn concurrent_containers_and_execs_in_one_pod() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("concurrent");
    let pod = ["-d", "--annotation", "io.kubernetes.cri.sandbox-id=busy"];
    assert_eq!(c.run(&pod, "busy", &["sleep", "1000"]).code, 0);
    // Creates, execs and exits racing in one shim (its threads start and end meanwhile).
    std::thread::scope(|s| {
        let c = &c;
        let mut handles = Vec::new();
        for i in 0..6 {
            handles.push(s.spawn(move || {
                let id = format!("w{i}");
                let script = format!("echo out-{i}; exit {i}");
                let r = c.run(
                    &["--rm", "--annotation", "io.kubernetes.cri.sandbox-id=busy"],
                    &id,
                    &["sh", "-c", &script],
                );
                assert_eq!(
                    (r.code, r.out.trim()),
                    (i, format!("out-{i}").as_str()),
                    "{}",
                    r.err
                );
            }));
            handles.push(s.spawn(move || {
                let exec = format!("x{i}");
                let r = c.ctr(&[
                    "task",
                    "exec",
                    "--exec-id",
                    &exec,
                    "busy",
                    "sh",
                    "-c",
                    "exit 7",
                ]);
                assert_eq!(r.code, 7, "exec {exec}: {}", r.err);
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
    });
    assert_eq!(c.shims().len(), 1);
    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "busy"]).code, 0);
    c.wait_status("busy", "STOPPED");
    assert_eq!(c.ctr(&["task", "delete", "busy"]).code, 0);
    assert_eq!(c.ctr(&["container", "rm", "busy"]).code, 0);
    c.assert_clean();
}

#[test]
fn oom_kill_is_published_as_task_oom() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("oom");
    // `ctr events` prints every event containerd receives, one per line.
    let log = c.dir.join("events.log");
    let mut events = Command::new("timeout")
        .args(["-s", "KILL", "60", "ctr", "-a"])
        .arg(&c.sock)
        .arg("events")
        .stdout(std::fs::File::create(&log).unwrap())
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // dd's 64 MiB buffer cannot fit a 16 MiB container: the OOM killer ends it.
    let r = c.run(
        &["--rm", "--memory-limit", "16777216"],
        "oom1",
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1"],
    );
    assert_eq!(r.code, 137, "stderr: {}", r.err);
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("/tasks/oom") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = events.kill();
    let _ = events.wait();
    let oom = text.lines().find(|l| l.contains("/tasks/oom"));
    assert!(
        oom.is_some_and(|l| l.contains("oom1")),
        "no TaskOOM for oom1 in:\n{text}"
    );
    // The OOM event comes before the task's exit.
    let pos = |topic: &str| {
        text.lines()
            .position(|l| l.contains(topic) && l.contains("oom1"))
    };
    assert!(pos("/tasks/oom") < pos("/tasks/exit"), "{text}");
    c.assert_clean();
}
