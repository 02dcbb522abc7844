//! Test harness: a real `hull-agent` as PID 1 of fresh mount, pid, uts and net namespaces on
//! the host, a busybox rootfs, and OCI specs for it.

#![allow(dead_code)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hull_agent_client::AgentClient;

/// A running agent in its own namespaces; killed (with everything in its pid namespace) on drop.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub shared: PathBuf,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    child: Child,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn busybox() -> &'static Path {
    let p = Path::new("/bin/busybox");
    assert!(
        p.exists(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    p
}

impl TestAgent {
    pub fn start() -> TestAgent {
        Self::start_listen(None)
    }

    /// An agent listening on `listen` (default: a unix socket in the test's directory).
    pub fn start_listen(listen: Option<&str>) -> TestAgent {
        Self::start_with(listen, &[])
    }

    /// An agent with extra command-line arguments.
    pub fn start_with(listen: Option<&str>, extra: &[&str]) -> TestAgent {
        Self::start_in(Path::new("/tmp"), listen, extra)
    }

    /// An agent whose files live under `base` (outside /tmp when the agent mounts its own).
    pub fn start_in(base: &Path, listen: Option<&str>, extra: &[&str]) -> TestAgent {
        let dir = tempfile::Builder::new()
            .prefix("hull-agent-test")
            .tempdir_in(base)
            .unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let socket = dir.path().join("agent.sock");
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let cgroup_parent = format!("hull-agent-test-{}-{n}", std::process::id());
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--uts",
                "--net",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
            ])
            .arg(env!("CARGO_BIN_EXE_hull-agent"))
            .arg(match listen {
                Some(l) => format!("--listen={l}"),
                None => format!("--listen=unix://{}", socket.display()),
            })
            .arg(format!("--allowed-root={}", shared.display()))
            .arg(format!(
                "--state-dir={}",
                dir.path().join("state").display()
            ))
            .arg(format!(
                "--resolv-conf={}",
                dir.path().join("resolv.conf").display()
            ))
            .args(
                (!extra.iter().any(|a| a.starts_with("--guest-init")))
                    .then_some("--guest-init=off"),
            )
            .args(extra)
            .env("HULL_AGENT_LOG", "hull_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn unshare + hull-agent");
        TestAgent {
            dir,
            shared,
            socket,
            cgroup_parent,
            child,
        }
    }

    pub fn client(&self) -> AgentClient {
        AgentClient::connect_unix(
            &self.socket,
            Duration::from_secs(10),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("connect: {e}\nagent log:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Pid (host view) of the agent itself: the child of `unshare`.
    pub fn agent_pid(&self) -> Option<u32> {
        let p = format!(
            "/proc/{}/task/{}/children",
            self.child.id(),
            self.child.id()
        );
        std::fs::read_to_string(p)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Whether the agent (its namespace) has ended, waiting up to `timeout`.
    pub fn exited_within(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A busybox rootfs under the shared root; returns its path relative to the root.
    pub fn busybox_rootfs(&self, name: &str) -> String {
        let rel = format!("{name}/rootfs");
        let root = self.shared.join(&rel);
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
        let list = Command::new(busybox()).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                let _ = symlink("busybox", root.join("bin").join(applet));
            }
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        rel
    }

    /// An OCI spec for a busybox container running `args`.
    pub fn spec(&self, id: &str, args: &[&str], terminal: bool, caps: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "ociVersion": "1.0.2",
            "process": process_json(args, terminal, caps),
            "root": {"path": "rootfs", "readonly": false},
            "hostname": id,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {
                "cgroupsPath": format!("/{}/{id}", self.cgroup_parent),
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
                ],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
            }
        }))
        .unwrap()
    }
}

/// An OCI `process` object.
pub fn process_json(args: &[&str], terminal: bool, caps: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin", "TERM=xterm", "HOME=/root"],
        "cwd": "/",
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps
        },
        "noNewPrivileges": true
    })
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // Killing unshare kills the agent (--kill-child); as PID 1 of its namespace its death
        // kills every container process, and the private mounts go with the namespace.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Container cgroups left by a failed test.
        let start = Instant::now();
        for root in cgroup_roots() {
            let dir = root.join(&self.cgroup_parent);
            while dir.exists() && start.elapsed() < Duration::from_secs(5) {
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.flatten() {
                        if e.path().is_dir() {
                            let _ = std::fs::remove_dir(e.path());
                        }
                    }
                }
                if std::fs::remove_dir(&dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn cgroup_roots() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            if e.path().is_dir() && !e.path().is_symlink() {
                v.push(e.path());
            }
        }
    }
    v
}

/// The capability bit mask of a list of capability names.
pub fn cap_mask(caps: &[&str]) -> u64 {
    let table = [
        ("CAP_CHOWN", 0),
        ("CAP_DAC_OVERRIDE", 1),
        ("CAP_FOWNER", 3),
        ("CAP_KILL", 5),
        ("CAP_SETGID", 6),
        ("CAP_SETUID", 7),
        ("CAP_NET_BIND_SERVICE", 10),
        ("CAP_SYS_ADMIN", 21),
        ("CAP_AUDIT_WRITE", 29),
    ];
    caps.iter()
        .map(|c| 1u64 << table.iter().find(|(n, _)| n == c).expect("known cap").1)
        .fold(0, |a, b| a | b)
}
