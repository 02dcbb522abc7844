//! The whole container lifecycle through the agent, driven by the runtime's agent client.

mod common;

use std::time::{Duration, Instant};

use common::{cap_mask, process_json, TestAgent};
use hull_agent_client::{AgentClient, AgentClientError};
use hull_protocols::ttrpc::Code;

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_AUDIT_WRITE",
];
const WAIT: Duration = Duration::from_secs(20);

fn read_stdout_until(c: &AgentClient, id: &str, exec: &str, needle: &str) -> String {
    let start = Instant::now();
    let mut out = String::new();
    while !out.contains(needle) {
        assert!(start.elapsed() < WAIT, "no {needle:?} in {out:?}");
        let chunk = c.read_stdout(id, exec, 4096).unwrap();
        if chunk.eof {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&chunk.data));
    }
    assert!(out.contains(needle), "no {needle:?} in {out:?}");
    out
}

fn exec(c: &AgentClient, id: &str, exec_id: &str, args: &[&str]) -> (String, String, i32) {
    let p = serde_json::to_vec(&process_json(args, false, CAPS)).unwrap();
    c.exec_process(id, exec_id, &p).unwrap();
    c.close_stdin(id, exec_id).unwrap();
    let out = c.read_stdout_to_end(id, exec_id).unwrap();
    let mut err = Vec::new();
    loop {
        let ch = c.read_stderr(id, exec_id, 4096).unwrap();
        if ch.eof {
            break;
        }
        err.extend(ch.data);
    }
    let code = c.wait_process(id, exec_id, WAIT).unwrap();
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        code,
    )
}

/// The container's stats: hull-container's `Stats`, sent as JSON.
fn stats_of(c: &AgentClient, id: &str) -> hull_container::Stats {
    serde_json::from_slice(&c.stats_container(id).unwrap().stats_json).unwrap()
}

fn code_of(e: AgentClientError) -> Code {
    e.code().unwrap_or_else(|| panic!("not an rpc status: {e}"))
}

#[test]
fn busybox_container_lifecycle() {
    let agent = TestAgent::start();
    let c = agent.client();
    let id = "bb1";
    let rootfs = agent.busybox_rootfs(id);
    let spec = agent.spec(
        id,
        &["/bin/sh", "-c", "read line; echo got:$line; exec sleep 600"],
        false,
        CAPS,
    );

    // create + start, then talk to init through stdin/stdout
    let pid = c.create_container(id, &spec, &rootfs, vec![]).unwrap();
    assert!(pid > 1);
    c.start_container(id).unwrap();
    assert_eq!(c.write_stdin(id, "", b"hello\n").unwrap(), 6);
    read_stdout_until(&c, id, "", "got:hello");

    // the container's processes and their metrics
    let pids = c.list_processes(id).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks init {pid}");
    let stats = stats_of(&c, id);
    assert!(stats.pids.current >= 1, "{stats:?}");
    assert!(stats.memory.memory.usage > 0, "{stats:?}");

    // exec: output, error stream and exit code
    let (out, err, code) = exec(
        &c,
        id,
        "e1",
        &["/bin/sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 7));
    // once its status and output are collected, the exec is forgotten
    assert_eq!(
        code_of(c.wait_process(id, "e1", WAIT).unwrap_err()),
        Code::NOT_FOUND
    );

    // exec gets the spec's capabilities, not the agent's (the agent has them all)
    let (status, _, code) = exec(&c, id, "caps", &["/bin/cat", "/proc/self/status"]);
    assert_eq!(code, 0);
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(cap_eff, cap_mask(CAPS), "CapEff {cap_eff:x}");

    // stdin of an exec
    let p = serde_json::to_vec(&process_json(&["/bin/cat"], false, CAPS)).unwrap();
    c.exec_process(id, "cat", &p).unwrap();
    c.write_stdin(id, "cat", b"xyz").unwrap();
    c.close_stdin(id, "cat").unwrap();
    assert_eq!(c.read_stdout_to_end(id, "cat").unwrap(), b"xyz");
    assert_eq!(c.wait_process(id, "cat", WAIT).unwrap(), 0);

    // a terminal: window size reaches the process
    let p = serde_json::to_vec(&process_json(
        &["/bin/sh", "-c", "read x; stty size; exit 0"],
        true,
        CAPS,
    ))
    .unwrap();
    c.exec_process(id, "tty", &p).unwrap();
    c.tty_win_resize(id, "tty", 41, 101).unwrap();
    c.write_stdin(id, "tty", b"go\n").unwrap();
    read_stdout_until(&c, id, "tty", "41 101");
    assert_eq!(c.wait_process(id, "tty", WAIT).unwrap(), 0);
    let p = serde_json::to_vec(&process_json(&["/bin/sleep", "600"], false, CAPS)).unwrap();
    c.exec_process(id, "notty", &p).unwrap();
    assert_eq!(
        code_of(c.tty_win_resize(id, "notty", 1, 1).unwrap_err()),
        Code::FAILED_PRECONDITION
    );

    // signal one exec
    let p = serde_json::to_vec(&process_json(&["/bin/sleep", "600"], false, CAPS)).unwrap();
    c.exec_process(id, "sl", &p).unwrap();
    assert!(matches!(
        c.wait_process(id, "sl", Duration::from_millis(200)),
        Err(AgentClientError::Timeout { .. })
    ));
    // a read on a silent process answers "nothing yet" within the caller's timeout
    let short = AgentClient::connect_unix(&agent.socket, WAIT, Duration::from_secs(1)).unwrap();
    let t = Instant::now();
    let chunk = short.read_stdout(id, "sl", 4096).unwrap();
    assert!(chunk.data.is_empty() && !chunk.eof, "{chunk:?}");
    assert!(t.elapsed() < Duration::from_secs(1));
    c.signal_process(id, "sl", libc::SIGTERM as u32, false)
        .unwrap();
    assert_eq!(c.wait_process(id, "sl", WAIT).unwrap(), 128 + libc::SIGTERM);

    // pause / resume: after the thaw the container runs processes again
    c.pause_container(id).unwrap();
    let p = serde_json::to_vec(&process_json(&["/bin/true"], false, CAPS)).unwrap();
    assert!(
        c.exec_process(id, "frozen", &p).is_err(),
        "exec into a paused container"
    );
    c.resume_container(id).unwrap();
    let (out, _, code) = exec(&c, id, "after", &["/bin/echo", "thawed"]);
    assert_eq!((out.as_str(), code), ("thawed\n", 0));

    // update the memory limit
    c.update_container(id, br#"{"memory": {"limit": 67108864}}"#)
        .unwrap();
    assert_eq!(stats_of(&c, id).memory.memory.limit, 64 << 20);

    // duplicate ids are refused
    assert_eq!(
        code_of(c.create_container(id, &spec, &rootfs, vec![]).unwrap_err()),
        Code::ALREADY_EXISTS
    );

    // kill the init, reap it, remove the container
    c.signal_process(id, "", libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(c.wait_process(id, "", WAIT).unwrap(), 128 + libc::SIGKILL);
    c.remove_container(id).unwrap();
    assert_eq!(code_of(c.list_processes(id).unwrap_err()), Code::NOT_FOUND);
    assert!(c.check().unwrap());
}

#[test]
fn init_on_a_terminal_and_exit_status() {
    let agent = TestAgent::start();
    let c = agent.client();
    let id = "tty1";
    let rootfs = agent.busybox_rootfs(id);
    let spec = agent.spec(
        id,
        &["/bin/sh", "-c", "read x; echo tty:$x; exit 3"],
        true,
        CAPS,
    );
    c.create_container(id, &spec, &rootfs, vec![]).unwrap();
    c.start_container(id).unwrap();
    c.write_stdin(id, "", b"yes\n").unwrap();
    read_stdout_until(&c, id, "", "tty:yes");
    assert_eq!(c.wait_process(id, "", WAIT).unwrap(), 3);
    c.remove_container(id).unwrap();
}

#[test]
fn chroot_fallback_when_pivot_root_is_impossible() {
    // In a guest whose root is the initramfs the agent creates containers with move-mount +
    // chroot; force that path here.
    let agent = TestAgent::start_with(None, &["--no-pivot"]);
    let c = agent.client();
    let id = "np1";
    let rootfs = agent.busybox_rootfs(id);
    let spec = agent.spec(
        id,
        &["/bin/sh", "-c", "ls /bin/busybox; echo rooted"],
        false,
        CAPS,
    );
    c.create_container(id, &spec, &rootfs, vec![]).unwrap();
    c.start_container(id).unwrap();
    let out = c.read_stdout_to_end(id, "").unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "/bin/busybox\nrooted\n");
    assert_eq!(c.wait_process(id, "", WAIT).unwrap(), 0);
    c.remove_container(id).unwrap();
}

#[test]
fn remove_a_paused_container() {
    let agent = TestAgent::start();
    let c = agent.client();
    let id = "paused";
    let rootfs = agent.busybox_rootfs(id);
    let spec = agent.spec(id, &["/bin/sleep", "600"], false, CAPS);
    c.create_container(id, &spec, &rootfs, vec![]).unwrap();
    c.start_container(id).unwrap();
    c.pause_container(id).unwrap();
    let t = Instant::now();
    c.remove_container(id).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(c.check().unwrap());
}

#[test]
fn concurrent_execs_while_other_requests_flow() {
    // libcontainer clones children from a multi-threaded agent; run creations concurrently with
    // threads that start and end for other requests, and check nothing hangs.
    let agent = TestAgent::start();
    let c = agent.client();
    let id = "busy";
    let rootfs = agent.busybox_rootfs(id);
    let spec = agent.spec(id, &["/bin/sleep", "600"], false, CAPS);
    c.create_container(id, &spec, &rootfs, vec![]).unwrap();
    c.start_container(id).unwrap();
    let p = serde_json::to_vec(&process_json(&["/bin/true"], false, CAPS)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let c = agent.client();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(c.check().unwrap());
                n += 1;
            }
            n
        })
    };
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let c = agent.client();
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let exec_id = format!("w{w}-{i}");
                    c.exec_process(id, &exec_id, &p).unwrap();
                    assert_eq!(c.wait_process(id, &exec_id, WAIT).unwrap(), 0);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(checker.join().unwrap() > 0);
    c.remove_container(id).unwrap();
}
