//! vm isolation through the real `hull` binary: `hull --config vm.toml run` boots the pod's
//! microVM (QEMU microvm under TCG, hull's guest kernel, hull-agent as /init) and runs the
//! container there for the run's lifetime.
//!
//! Skipped (with a printed note) where qemu-system-x86_64 or linux-source-6.1 is missing, or
//! with HULL_SKIP_VM_TESTS set. A cold kernel cache builds the guest kernel first (~6.5 min).
//! Each boot costs ~2-3 s of CPU under TCG; nothing here asserts a time.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use hull_tests::*;

/// Bound of one `hull` call that boots a VM: the configured boot timeout (120 s) plus slack.
const VM_CALL: Duration = Duration::from_secs(180);

/// Config files for one test: vm isolation, host isolation (both naming the guest
/// artefacts), in a directory of their own.
struct Configs {
    dir: tempfile::TempDir,
    vm: PathBuf,
    host: PathBuf,
}

impl Configs {
    /// `None` where vm tests are skipped.
    fn new() -> Option<Self> {
        let a = guest_artefacts()?;
        let dir = tempfile::Builder::new()
            .prefix("hull-vmcfg-")
            .tempdir()
            .unwrap();
        let vm = dir.path().join("vm.toml");
        let host = dir.path().join("host.toml");
        std::fs::write(&vm, vm_config_text("vm", &a.kernel, &a.initrd)).unwrap();
        std::fs::write(&host, vm_config_text("host", &a.kernel, &a.initrd)).unwrap();
        Some(Self { dir, vm, host })
    }

    /// A vm config whose VMs start from templates kept in this test's own directory (so the
    /// first start makes one): the config's path, and the templates' directory.
    fn with_templates(&self) -> (PathBuf, PathBuf) {
        let a = guest_artefacts().expect("guest artefacts");
        let tdir = self.dir.path().join("templates");
        let cfg = self.write(
            "template.toml",
            &format!(
                "{}template = true\ntemplate_dir = {:?}\n",
                vm_config_text("vm", &a.kernel, &a.initrd),
                tdir.to_str().unwrap()
            ),
        );
        (cfg, tdir)
    }

    /// Another config file in this test's directory.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// `hull --root ROOT --config CFG VERB...` with stdin from /dev/null.
fn hull_cmd(h: &Hull, cfg: &Path, verb: &[&str]) -> Command {
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(verb);
    h.cmd(&args)
}

/// `hull --config CFG run --bundle B ID`, bounded, output captured.
fn run(h: &Hull, cfg: &Path, b: &Bundle, id: &str) -> Output {
    let cmd = hull_cmd(h, cfg, &["run", "--bundle", b.path().to_str().unwrap(), id]);
    output_with_timeout(cmd, VM_CALL)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// Wait for `child` up to `limit`; past it, kill it and fail.
fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hull did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `Hull` with a private root, and its cleanup guard.
fn hull() -> (Hull, Cleanup) {
    hull_with_cleanup()
}

/// Every path under `dir`, relative, for a failure message.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && out.len() < 40 {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Nothing of the runs under `h` remains: no state under its root, no mount and no (QEMU)
/// process mentioning the root.
fn nothing_left(h: &Hull) {
    let root = h.root.path();
    let entries = tree(root);
    assert!(
        entries.is_empty(),
        "state left under {}: {entries:?}",
        root.display()
    );
    let r = root.to_string_lossy();
    assert!(
        mounts_mentioning(&r).is_empty(),
        "mounts left: {:?}",
        mounts_mentioning(&r)
    );
    // hull waits for QEMU to exit before it returns; allow a moment for the reaping anyway.
    let gone = wait_until(Duration::from_secs(5), || {
        processes_mentioning(&r).is_empty()
    });
    assert!(gone, "processes left: {:?}", processes_mentioning(&r));
}

/// A failed call: exit 1 and exactly one stderr line, starting `hull: `, that contains
/// every one of `needles`.
fn fails_with(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "want one error line, got: {err}");
    assert!(err.starts_with("hull: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
}

#[test]
fn vm_run_prints_the_guest_kernel_and_returns_the_exit_status() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let b = Bundle::new(&["sh", "-c", "uname -r; exit 3"]);
    let out = run(&h, &c.vm, &b, &unique_id("vmrun"));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let guest = stdout(&out).trim().to_string();
    // hull's guest kernel is built from Debian's linux-source-6.1.
    assert!(guest.starts_with("6.1."), "guest uname -r: {guest:?}");
    assert_ne!(
        guest,
        host_release(),
        "the container ran on the host kernel"
    );
    nothing_left(&h);
}

#[test]
fn a_vm_container_gets_a_new_network_namespace_like_runc_gives() {
    // A vm pod's containers share the guest's network namespace; a pod without a network
    // (a new namespace asked for, nothing in it) has there what unshare would give: only
    // `lo`, and down.
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let b = Bundle::new(&[
        "sh",
        "-c",
        "ls /sys/class/net; cat /sys/class/net/lo/operstate; cat /sys/class/net/lo/flags",
    ]);
    for id in ["netns-a", "netns-b"] {
        let out = run(&h, &c.vm, &b, &unique_id(id));
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        // lo's flags 0x8 = IFF_LOOPBACK only: not up.
        assert_eq!(lines, ["lo", "down", "0x8"], "{text}");
    }
    nothing_left(&h);
}

/// A named network namespace with a veth pair: `eth0` inside (the pod's side, as CNI leaves
/// it) and `hvh<N>` on the host; removed on drop.
struct PodNetns {
    name: String,
    host_if: String,
}

impl PodNetns {
    /// Pod `10.201.N.2/24` + `fd00:201:N::2/64`, MTU 1400, default routes via the host's `.1`.
    fn new(n: u8) -> Self {
        let name = format!("hullvm-{}-{n}", std::process::id());
        let host_if = format!("hvh{}{n}", std::process::id() % 10000);
        let sh = |cmd: String| {
            let out = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
            assert!(out.status.success(), "{cmd}: {out:?}");
        };
        sh(format!("ip netns add {name}"));
        let ns = PodNetns { name, host_if };
        let (name, host_if) = (&ns.name, &ns.host_if);
        sh(format!(
            "ip link add {host_if} mtu 1400 type veth peer name eth0 mtu 1400 netns {name} && \
             ip addr add 10.201.{n}.1/24 dev {host_if} && \
             ip addr add fd00:201:{n}::1/64 dev {host_if} nodad && ip link set {host_if} up && \
             ip -n {name} addr add 10.201.{n}.2/24 dev eth0 && \
             ip -n {name} addr add fd00:201:{n}::2/64 dev eth0 nodad && \
             ip -n {name} link set eth0 up && ip -n {name} link set lo up && \
             ip -n {name} route add default via 10.201.{n}.1 && \
             ip -n {name} -6 route add default via fd00:201:{n}::1"
        ));
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS` (or `tc`), its stdout.
    fn run(&self, tool: &str, args: &str) -> String {
        let out = Command::new(tool)
            .args(["-n", &self.name])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn a_vm_pod_gets_the_network_of_its_namespace_and_leaves_no_tap() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let net = PodNetns::new(1);
    // The host listens on its side of the veth; the container answers through it.
    let listener = std::net::TcpListener::bind("10.201.1.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener6 = std::net::TcpListener::bind("[fd00:201:1::1]:0").unwrap();
    let port6 = listener6.local_addr().unwrap().port();
    let script = format!(
        "cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address; ip -o addr show eth0; \
         ip route; echo from-the-vm | nc 10.201.1.1 {port}; echo v6 | nc fd00:201:1::1 {port6}"
    );
    let path = net.path();
    let b = netns_bundle(&["sh", "-c", &script], path);
    let accepted = std::thread::spawn(move || {
        let mut got = Vec::new();
        for l in [listener, listener6] {
            let (mut s, _) = l.accept().unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            got.push(text.trim().to_string());
        }
        got
    });
    let mac = net.run("ip", "-o link show eth0");
    let text = run_ok(&h, &c.vm, &b, &unique_id("podnet"));
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines[0], "1400", "the veth's MTU: {text}");
    assert!(mac.contains(lines[1]), "the veth's MAC {}: {mac}", lines[1]);
    assert!(
        text.contains("10.201.1.2/24") && text.contains("fd00:201:1::2/64"),
        "{text}"
    );
    assert!(text.contains("default via 10.201.1.1 dev eth0"), "{text}");
    assert_eq!(accepted.join().unwrap(), ["from-the-vm", "v6"]);
    nothing_left(&h);
    // The tap went with the VM, the redirects with the pod.
    assert!(!net.run("ip", "-o link show").contains("hulltap"));
    assert!(!net.run("tc", "qdisc show dev eth0").contains("ingress"));
}

/// Docker's way: the spec asks for a new network namespace and a prestart hook moves the
/// endpoint in, finding the namespace through the state's pid (libnetwork-setkey). hull makes
/// the namespace and runs the hooks before the VM boots, so the VM has the interface.
#[test]
fn a_prestart_hook_fills_the_pods_new_namespace_before_the_vm_boots() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let host_if = format!("hvk{}", std::process::id() % 100000);
    let hook = c.write(
        "hook.sh",
        &format!(
            "#!/bin/sh\nset -e\npid=$(sed 's/.*\"pid\": *\\([0-9]*\\).*/\\1/')\n\
             ip link add {host_if} type veth peer name eth0 netns $pid\n\
             ip addr add 10.202.0.1/24 dev {host_if}\nip link set {host_if} up\n\
             nsenter -t $pid -n ip addr add 10.202.0.2/24 dev eth0\n\
             nsenter -t $pid -n ip link set eth0 up\n"
        ),
    );
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _gone = Gone(host_if.clone());
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hook_path = hook.to_string_lossy().into_owned();
    let script = format!("ip -o addr show eth0; echo hooked | nc 10.202.0.1 {port}");
    let b = Bundle::with(&["sh", "-c", &script], move |v| {
        v["hooks"] = serde_json::json!({"prestart": [{"path": hook_path, "args": ["hook.sh"]}]});
    });
    let accepted = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    });
    let text = run_ok(&h, &c.vm, &b, &unique_id("hooknet"));
    assert!(text.contains("10.202.0.2/24"), "{text}");
    assert_eq!(accepted.join().unwrap().trim(), "hooked");
    nothing_left(&h);
    // The namespace hull made went with the pod, and the veth with it.
    let gone = wait_until(Duration::from_secs(5), || {
        !Command::new("ip")
            .args(["link", "show", &host_if])
            .output()
            .unwrap()
            .status
            .success()
    });
    assert!(gone, "{host_if} outlived the pod's namespace");
}

/// A VM that ends while a call into it is under way (its guest panicked or reset, or QEMU
/// crashed) is named as the cause: `hull start` says the pod's vm ended during the call, how
/// QEMU ended, and where its console log is kept for a post-mortem (the pod's own directory
/// goes with the pod), not only that a pipe broke. QEMU is frozen with SIGSTOP so that the
/// call is in flight when it is killed.
#[test]
fn a_vm_that_ends_under_a_call_is_named_with_its_kept_console() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let b = Bundle::new(&["sleep", "100"]);
    let id = unique_id("ends");
    create_detached(&h, &c.vm, &b, &id);
    let qemus = qemus_mentioning(&id);
    assert_eq!(qemus.len(), 1, "the pod's qemu: {qemus:?}");
    let qemu = nix::unistd::Pid::from_raw(qemus[0].0);
    nix::sys::signal::kill(qemu, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut start = hull_cmd(&h, &c.vm, &["start", &id]);
    start
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let start = start.spawn().unwrap();
    // The request is in the frozen QEMU's socket when it dies.
    std::thread::sleep(Duration::from_secs(1));
    nix::sys::signal::kill(qemu, nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = start.wait_with_output().unwrap();
    let err = stderr(&out);
    println!("{err}");
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("start container") && err.contains("the pod's vm ended during the call"),
        "{err}"
    );
    assert!(err.contains("signal: 9"), "how qemu ended: {err}");
    let kept = err
        .split("console log: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no console log named: {err}"));
    assert!(kept.starts_with("/var/log/hull/failed-boots/"), "{err}");
    let console = std::fs::read_to_string(kept).unwrap();
    assert!(
        console.contains("hull-agent"),
        "the kept console: {console}"
    );
    let _ = std::fs::remove_dir_all(Path::new(kept).parent().unwrap());
    h.ok(&["delete", "--force", &id]);
    nothing_left(&h);
}

/// A SIGKILLed sandbox server takes its VM (and so the tap) with it; the redirect it put on the
/// pod's veth is what `hull delete` finds and removes.
#[test]
fn delete_after_a_killed_sandbox_server_removes_the_pods_redirects() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let net = PodNetns::new(3);
    let path = net.path();
    let b = netns_bundle(&["sleep", "100"], path);
    let id = unique_id("netkill");
    create_detached(&h, &c.vm, &b, &id);
    assert!(net.run("tc", "qdisc show dev eth0").contains("ingress"));
    let servers = processes_mentioning(&format!("sandbox-server --id {id}"));
    assert!(!servers.is_empty(), "no sandbox server for {id}");
    for pid in servers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || !net
            .run("ip", "-o link show")
            .contains("hulltap")),
        "the tap outlived its VM"
    );
    h.ok(&["delete", "--force", &id]);
    assert!(!net.run("tc", "qdisc show dev eth0").contains("ingress"));
    nothing_left(&h);
}

/// `hull --config CFG run` that must exit 0: its stdout.
fn run_ok(h: &Hull, cfg: &Path, b: &Bundle, id: &str) -> String {
    let out = run(h, cfg, b, id);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {text}\nstderr: {}",
        stderr(&out)
    );
    text
}

/// `hull create` of `b` as `id`, detached (a sandbox server owns the VM); must succeed.
fn create_detached(h: &Hull, cfg: &Path, b: &Bundle, id: &str) {
    let out = output_with_timeout(
        hull_cmd(
            h,
            cfg,
            &["create", "--bundle", b.path().to_str().unwrap(), id],
        ),
        VM_CALL,
    );
    assert_eq!(out.status.code(), Some(0), "create: {}", stderr(&out));
}

/// A bundle running `args` in the network namespace at `path`.
fn netns_bundle(args: &[&str], path: String) -> Bundle {
    Bundle::with(args, move |v| {
        let nss = v["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| n["type"] != "network");
        nss.push(serde_json::json!({"type": "network", "path": path}));
    })
}

/// A bundle running `script` with `disk` at /dev/xdisk, `access` its cgroup rule.
fn disk_bundle(disk: &Loop, script: &str, access: &'static str) -> Bundle {
    let (maj, min) = disk.number;
    Bundle::with(&["sh", "-c", script], move |v| {
        v["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/xdisk", "type": "b", "major": maj, "minor": min, "fileMode": 432}
        ]);
        let rules = v["linux"]["resources"]["devices"]
            .as_array_mut()
            .expect("the bundle's device rules");
        rules.push(serde_json::json!(
            {"allow": true, "type": "b", "major": maj, "minor": min, "access": access}
        ));
    })
}

#[test]
fn a_host_block_device_is_a_disk_of_the_vm_written_through_to_the_host() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let disk = Loop::new();
    let b = disk_bundle(&disk,
        "echo hull-blk-data | dd of=/dev/xdisk bs=512 count=1 conv=sync,fsync 2>/dev/null \
         && echo written; cat /sys/class/block/$(basename $(readlink -f /dev/xdisk))/dev 2>/dev/null; ls -l /dev/xdisk",
        "rwm",
    );
    let text = run_ok(&h, &c.vm, &b, &unique_id("blk"));
    assert!(text.contains("written"), "{text}");
    let mut head = [0u8; 13];
    std::fs::File::open(&disk.file)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head, b"hull-blk-data", "the host's file after the run");
    nothing_left(&h);

    // Read-only where the rule says "r": reads work, a write is refused.
    let b = disk_bundle(&disk,
        "head -c 13 /dev/xdisk; echo; echo x | dd of=/dev/xdisk 2>/dev/null && echo wrote || echo refused",
        "r",
    );
    let text = run_ok(&h, &c.vm, &b, &unique_id("blkro"));
    assert!(
        text.contains("hull-blk-data") && text.contains("refused"),
        "{text}"
    );
    nothing_left(&h);

    // Written and still open when the pod is deleted: on the host afterwards (flush on stop).
    let b = disk_bundle(
        &disk,
        "exec 3>/dev/xdisk; echo hull-flushed-ok >&3; echo open; exec sleep 100",
        "rwm",
    );
    let id = unique_id("blkflush");
    create_detached(&h, &c.vm, &b, &id);
    h.ok(&["start", &id]);
    std::thread::sleep(Duration::from_secs(1));
    h.ok(&["delete", "--force", &id]);
    let mut head = [0u8; 15];
    std::fs::File::open(&disk.file)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(
        &head, b"hull-flushed-ok",
        "the host's file after delete --force"
    );
    nothing_left(&h);
}

#[test]
fn devices_a_vm_pod_cannot_have_are_refused_and_leave_nothing() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    // No such block device on the host.
    let b = Bundle::with(&["true"], |v| {
        v["linux"]["devices"] =
            serde_json::json!([{"path": "/dev/nodisk", "type": "b", "major": 240, "minor": 4321}]);
    });
    fails_with(
        &run(&h, &c.vm, &b, &unique_id("nodev")),
        &["/dev/nodisk", "no such block device"],
    );
    nothing_left(&h);
    // A host character device the guest has no driver for.
    let b = Bundle::with(&["true"], |v| {
        v["linux"]["devices"] =
            serde_json::json!([{"path": "/dev/ttyS9", "type": "c", "major": 4, "minor": 73}]);
    });
    fails_with(
        &run(&h, &c.vm, &b, &unique_id("chardev")),
        &["/dev/ttyS9", "4:73"],
    );
    nothing_left(&h);
    // A VFIO group: this host has no IOMMU (a nested machine with one proves the pass-through:
    // tests/tests/vfio.rs).
    assert!(
        std::fs::read_dir("/sys/kernel/iommu_groups").map_or(true, |mut d| d.next().is_none()),
        "this test expects a host without an IOMMU"
    );
    let b = Bundle::with(&["true"], |v| {
        v["linux"]["devices"] =
            serde_json::json!([{"path": "/dev/vfio/3", "type": "c", "major": 511, "minor": 0}]);
    });
    fails_with(
        &run(&h, &c.vm, &b, &unique_id("vfio")),
        &["/dev/vfio/3", "needs an IOMMU", "this host has none"],
    );
    nothing_left(&h);
    let b = Bundle::with(&["true"], |v| {
        v["annotations"]["io.hull.vfio"] = "0000:00:03.0".into();
    });
    fails_with(
        &run(&h, &c.vm, &b, &unique_id("vfioann")),
        &["pci device 0000:00:03.0", "needs an IOMMU"],
    );
    nothing_left(&h);
    // A device another running pod holds.
    let disk = Loop::new();
    let holder = disk_bundle(&disk, "sleep 100", "rwm");
    let id = unique_id("blkhold");
    create_detached(&h, &c.vm, &holder, &id);
    let second = disk_bundle(&disk, "true", "rwm");
    fails_with(
        &run(&h, &c.vm, &second, &unique_id("blk2")),
        &["/dev/xdisk", "in use by another vm pod"],
    );
    h.ok(&["delete", "--force", &id]);
    nothing_left(&h);
}

#[test]
fn pods_that_mark_a_device_shared_hold_it_together_and_others_are_refused() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let disk = Loop::new();
    let shared = |script: &str| {
        let b = disk_bundle(&disk, script, "rwm");
        b.edit(|v| v["annotations"]["io.hull.shared-devices"] = "/dev/xdisk".into());
        b
    };
    let holder = shared("sleep 100");
    let id = unique_id("shr1");
    create_detached(&h, &c.vm, &holder, &id);
    // A second sharing pod writes the disk while the first holds it (QEMU shares it too).
    let text = run_ok(
        &h,
        &c.vm,
        &shared(
            "echo hull-shared | dd of=/dev/xdisk bs=512 count=1 conv=sync,fsync 2>/dev/null \
             && echo written",
        ),
        &unique_id("shr2"),
    );
    assert!(text.contains("written"), "{text}");
    assert_eq!(
        disk.head(11),
        b"hull-shared",
        "the host's file after the run"
    );
    // A pod that does not share it is refused while sharing pods hold it.
    fails_with(
        &run(
            &h,
            &c.vm,
            &disk_bundle(&disk, "true", "r"),
            &unique_id("shr3"),
        ),
        &[
            "/dev/xdisk",
            "in use by another vm pod",
            "io.hull.shared-devices",
        ],
    );
    h.ok(&["delete", "--force", &id]);
    nothing_left(&h);
}

#[test]
fn a_vm_pod_on_the_hosts_network_is_refused_and_leaves_nothing() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let b = Bundle::with(&["true"], |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network");
    });
    let out = run(&h, &c.vm, &b, &unique_id("hostnet"));
    fails_with(&out, &["host's network", "isolation"]);
    nothing_left(&h);
}

#[test]
fn the_annotation_overrides_the_config() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let annotated = |iso: &'static str| {
        Bundle::with(&["uname", "-r"], move |v| {
            v["annotations"]["io.hull.isolation"] = iso.into()
        })
    };

    // io.hull.isolation=vm with a config that says host: the guest kernel.
    let out = run(&h, &c.host, &annotated("vm"), &unique_id("annvm"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let kernel = stdout(&out).trim().to_string();
    assert!(
        kernel.starts_with("6.1.") && kernel != host_release(),
        "annotation vm ran on {kernel:?} (host: {})",
        host_release()
    );
    nothing_left(&h);

    // io.hull.isolation=host with a config that says vm: the host kernel.
    let out = run(&h, &c.vm, &annotated("host"), &unique_id("annhost"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), host_release(), "annotation host");
    nothing_left(&h);
}

#[test]
fn stdin_reaches_the_container_and_stdout_and_stderr_stay_apart() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let b = Bundle::new(&["sh", "-c", "cat; echo err >&2"]);
    let id = unique_id("vmstdio");
    // `echo data | hull run`: stdin is a pipe whose writer is gone once the data is in.
    let (r, w) = nix::unistd::pipe().unwrap();
    std::fs::File::from(w).write_all(b"data\nmore\n").unwrap();
    let mut cmd = hull_cmd(
        &h,
        &c.vm,
        &["run", "--bundle", b.path().to_str().unwrap(), &id],
    );
    cmd.stdin(Stdio::from(r));
    let out = output_with_timeout(cmd, VM_CALL);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "data\nmore\n");
    assert_eq!(stderr(&out), "err\n");
    nothing_left(&h);
}

#[test]
fn a_terminal_run_gets_a_pty_in_the_guest() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let b = Bundle::with(
        &["sh", "-c", "tty; read line; echo got:$line; exit 5"],
        |v| v["process"]["terminal"] = true.into(),
    );
    let id = unique_id("vmtty");
    // hull runs under a pty of ours, as from an interactive shell: its own session with the
    // pty as controlling terminal.
    let cmd = hull_cmd(
        &h,
        &c.vm,
        &["run", "--bundle", b.path().to_str().unwrap(), &id],
    );
    let (mut child, mut master) = spawn_on_pty(cmd);
    let mut writer = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into()).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + VM_CALL;
    while !text.contains("/dev/pts/") && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(s) => text.push_str(&s),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    assert!(
        text.contains("/dev/pts/"),
        "no /dev/pts tty in the guest: {text:?}"
    );
    writer.write_all(b"hello\r").unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    drop(writer);
    reader.join().unwrap();
    text.extend(rx.try_iter());
    assert!(text.contains("got:hello"), "{text:?}");
    assert_eq!(status.code(), Some(5), "{text:?}");
    nothing_left(&h);
}

#[test]
fn sigterm_to_hull_run_reaches_the_container() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    // The container's process is PID 1 of its PID namespace, which ignores an unhandled
    // SIGTERM (as under runc): it traps it, says so and exits 143.
    let b = Bundle::new(&[
        "sh",
        "-c",
        "trap 'echo got TERM; exit 143' TERM; echo ready; sleep 100 & wait",
    ]);
    let id = unique_id("vmsig");
    let err_f = tempfile::tempfile().unwrap();
    let mut child = hull_cmd(
        &h,
        &c.vm,
        &["run", "--bundle", b.path().to_str().unwrap(), &id],
    )
    .stdout(Stdio::piped())
    .stderr(err_f.try_clone().unwrap())
    .spawn()
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx.recv_timeout(VM_CALL);
    if ready.as_deref() != Ok("ready") {
        let _ = child.kill();
        let _ = child.wait();
        panic!("container did not start: {ready:?}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    let rest: Vec<String> = rx.iter().collect();
    let mut err = String::new();
    {
        use std::io::Seek;
        let mut f = err_f;
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut err).unwrap();
    }
    use std::os::unix::process::ExitStatusExt;
    assert_ne!(
        status.signal(),
        Some(libc::SIGTERM),
        "hull run itself died of the SIGTERM instead of forwarding it to the container \
         (stdout after ready: {rest:?}; stderr: {err:?})"
    );
    assert_eq!(
        status.code(),
        Some(143),
        "hull run: {status}; stdout after ready: {rest:?}; stderr: {err}"
    );
    assert_eq!(rest, vec!["got TERM".to_string()]);
    nothing_left(&h);
}

#[test]
fn a_missing_kernel_or_a_bad_isolation_fails_with_one_line_and_leaves_nothing() {
    let Some(c) = Configs::new() else { return };
    let a = guest_artefacts().unwrap();
    let b = Bundle::new(&["true"]);

    // A kernel that does not exist.
    let (h, _cleanup) = hull();
    let missing = c.write(
        "missing.toml",
        &vm_config_text("vm", Path::new("/nonexistent/vmlinux"), &a.initrd),
    );
    fails_with(
        &run(&h, &missing, &b, &unique_id("nokernel")),
        &["/nonexistent/vmlinux"],
    );
    nothing_left(&h);

    // An isolation that does not exist.
    let kata = c.write("kata.toml", &vm_config_text("kata", &a.kernel, &a.initrd));
    fails_with(&run(&h, &kata, &b, &unique_id("kata")), &["kata"]);
    nothing_left(&h);

    // ... nor in the annotation.
    let annotated = Bundle::with(&["true"], |v| {
        v["annotations"]["io.hull.isolation"] = "kata".into()
    });
    fails_with(
        &run(&h, &c.vm, &annotated, &unique_id("annkata")),
        &["io.hull.isolation", "kata"],
    );
    nothing_left(&h);
}

#[test]
fn a_kernel_that_is_not_a_kernel_fails_with_one_line_and_leaves_nothing() {
    let Some(c) = Configs::new() else { return };
    let a = guest_artefacts().unwrap();
    let b = Bundle::new(&["true"]);
    let (h, _cleanup) = hull();
    let text = c.write("vmlinux.txt", "this is not a kernel\n");
    let notkernel = c.write("notkernel.toml", &vm_config_text("vm", &text, &a.initrd));
    let out = run(&h, &notkernel, &b, &unique_id("txtkernel"));
    fails_with(&out, &["boot the pod's vm"]);
    nothing_left(&h);
}

#[test]
fn the_shipped_configs_parse_and_choose_their_isolation() {
    // No VM boots here: config/config.toml (every key at its default) runs a host container;
    // config/vm.toml, with a kernel that does not exist added to its [vm] table, chooses vm
    // and stops at the missing kernel.
    let (h, _cleanup) = hull();
    let b = Bundle::new(&["uname", "-r"]);
    let bundle = b.path().to_str().unwrap();
    let config = repo_dir().join("config/config.toml");
    let out = output_with_timeout(
        hull_cmd(&h, &config, &["run", "--bundle", bundle, &unique_id("cfg")]),
        VM_CALL,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), host_release());
    let shipped = std::fs::read_to_string(repo_dir().join("config/vm.toml")).unwrap();
    assert!(
        shipped
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| !l.starts_with('[')),
        "config/vm.toml should end inside its [vm] table"
    );
    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("vm.toml");
    std::fs::write(
        &vm,
        format!("{shipped}\nkernel = \"/nonexistent/shipped-vmlinux\"\n"),
    )
    .unwrap();
    let out = output_with_timeout(
        hull_cmd(&h, &vm, &["run", "--bundle", bundle, &unique_id("cfgvm")]),
        VM_CALL,
    );
    fails_with(&out, &["/nonexistent/shipped-vmlinux"]);
    nothing_left(&h);
}

#[test]
fn detached_verbs_in_vm_mode_run_the_container_and_leave_nothing() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let b = Bundle::new(&["sh", "-c", "uname -r; exec sleep 100"]);
    let bundle = b.path().to_str().unwrap();
    let id = unique_id("vmdetach");
    // runc-style: create returns once the container exists; its stdout is create's.
    let out = output_with_timeout(
        hull_cmd(&h, &c.vm, &["create", "--bundle", bundle, &id]),
        VM_CALL,
    );
    assert_eq!(out.status.code(), Some(0), "create: {}", stderr(&out));
    assert_eq!(h.state(&id)["status"], "created");
    h.ok(&["start", &id]);
    assert_eq!(h.state(&id)["status"], "running");
    // list shows it, from its sandbox server.
    let listed = h.ok(&["list", "--format", "json"]);
    assert!(
        listed.contains(&format!("\"id\":\"{id}\"")) && listed.contains("running"),
        "{listed}"
    );
    h.ok(&["kill", &id, "KILL"]);
    assert!(
        wait_until(Duration::from_secs(30), || h.state(&id)["status"]
            == "stopped"),
        "{id} did not stop: {}",
        h.state(&id)
    );
    h.ok(&["delete", &id]);
    nothing_left(&h);

    // run -d: the same through one verb. The container's stdout is a file of ours, read
    // once the container has stopped (it writes after hull returned).
    let b = Bundle::new(&["uname", "-r"]);
    let id = unique_id("vmrund");
    let out_f = tempfile::tempfile().unwrap();
    let mut cmd = hull_cmd(
        &h,
        &c.vm,
        &["run", "-d", "--bundle", b.path().to_str().unwrap(), &id],
    );
    cmd.stdout(out_f.try_clone().unwrap())
        .stderr(out_f.try_clone().unwrap());
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let status = wait_bounded(&mut child, VM_CALL);
    let read_out = || {
        use std::io::Seek;
        let mut f = out_f.try_clone().unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        text
    };
    assert_eq!(status.code(), Some(0), "run -d: {}", read_out());
    assert!(
        wait_until(Duration::from_secs(30), || h.state(&id)["status"]
            == "stopped"),
        "{id} did not stop: {}",
        h.state(&id)
    );
    let kernel = read_out().trim().to_string();
    assert!(
        kernel.starts_with("6.1.") && kernel != host_release(),
        "run -d ran on {kernel:?}"
    );
    h.ok(&["delete", &id]);
    nothing_left(&h);
}

/// The VM templates under `dir`: (key, holds memory and state).
fn templates(dir: &Path) -> Vec<(String, bool)> {
    let mut t: Vec<(String, bool)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let p = e.path();
            (
                e.file_name().to_string_lossy().into_owned(),
                p.join("memory").is_file() && p.join("state").is_file(),
            )
        })
        .collect();
    t.sort();
    t
}

/// The counter a container of [`counting`] writes, read from the host (its rootfs is the
/// bundle's).
fn count(b: &Bundle) -> u64 {
    let p = b.path().join("rootfs/tmp/count");
    std::fs::read_to_string(&p)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// A bundle whose process counts up in /tmp/count every 20 ms.
fn counting() -> Bundle {
    Bundle::new(&[
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; \
         sleep 0.02; done",
    ])
}

/// Waits (bounded) until `b`'s counter passes `above`; returns its value.
fn count_passes(b: &Bundle, above: u64) -> u64 {
    let deadline = Instant::now() + VM_CALL;
    loop {
        let n = count(b);
        if n > above {
            return n;
        }
        assert!(Instant::now() < deadline, "the counter stayed at {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_paused_container_stops_running_and_its_ps_and_stats_are_real_in_both_isolations() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    pause_ps_stats(&h, &c.vm);
    pause_ps_stats(&h, &c.host);
}

/// Pauses a counting container and checks that it stops counting, that ps lists one pid
/// more while an exec runs, and that its stats have figures.
fn pause_ps_stats(h: &Hull, cfg: &Path) {
    let b = counting();
    let id = unique_id("vmpause");
    create_detached(h, cfg, &b, &id);
    h.ok(&["start", &id]);
    count_passes(&b, 2);

    // Paused: the counter stands still (the guest's vCPUs and the container are frozen).
    h.ok(&["pause", &id]);
    assert_eq!(h.state(&id)["status"], "paused");
    let frozen = count(&b);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&b), frozen, "a paused container went on counting");
    h.ok(&["resume", &id]);
    assert_eq!(h.state(&id)["status"], "running");
    count_passes(&b, frozen);

    // ps: the guest's pids of the container; a process exec'd into it is one more.
    let ps =
        || -> Vec<i64> { serde_json::from_str(&h.ok(&["ps", "--format", "json", &id])).unwrap() };
    let before = ps();
    assert!(
        !before.is_empty() && before.iter().all(|p| *p > 1),
        "{before:?}"
    );
    let mut exec = hull_cmd(h, cfg, &["exec", &id, "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + VM_CALL;
    let with_exec = loop {
        let now = ps();
        if now.len() > before.len() || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = exec.kill();
    let _ = exec.wait();
    assert!(
        with_exec.len() > before.len(),
        "ps {before:?} then, with an exec running, {with_exec:?}"
    );
    // stats: the guest cgroup's figures.
    let ev: serde_json::Value =
        serde_json::from_str(h.ok(&["events", "--stats", &id]).trim()).unwrap();
    assert_eq!(ev["type"], "stats", "{ev}");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap_or(0) > 0,
        "memory usage: {ev}"
    );
    assert!(
        ev["data"]["pids"]["current"].as_u64().unwrap_or(0) >= 1,
        "pids: {ev}"
    );
    h.ok(&["delete", "--force", &id]);
    nothing_left(h);
}

/// The running QEMU processes whose arguments mention `needle`: pid and command line.
fn qemus_mentioning(needle: &str) -> Vec<(i32, String)> {
    command_lines_mentioning(needle)
        .into_iter()
        .filter(|(_, c)| c.starts_with("qemu-system") || c.contains("/qemu-system"))
        .collect()
}

#[test]
fn twenty_vm_pods_started_at_once_from_a_template_all_restore() {
    let Some(c) = Configs::new() else { return };
    let (cfg, tdir) = c.with_templates();
    let (h, _cleanup) = hull();
    // The first start makes the template.
    run_ok(&h, &cfg, &Bundle::new(&["true"]), &unique_id("par-first"));
    let b = Bundle::new(&["sleep", "100"]);
    let ids: Vec<String> = (0..20).map(|i| unique_id(&format!("par{i}"))).collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for id in &ids {
            let (h, cfg, b) = (&h, &cfg, &b);
            s.spawn(move || create_detached(h, cfg, b, id));
        }
    });
    eprintln!("20 vm pods created at once in {:?}", started.elapsed());
    // Each really restored (none fell back to a boot): its QEMU maps the template's memory
    // and took the template's device state as an incoming migration.
    let restored = qemus_mentioning(tdir.to_str().unwrap())
        .iter()
        .filter(|(_, c)| c.contains("-incoming defer"))
        .count();
    assert_eq!(restored, ids.len(), "vm pods restored from the template");
    for id in &ids {
        assert_eq!(h.state(id)["status"], "created", "{id}");
        h.ok(&["delete", "--force", id]);
    }
    assert!(qemus_mentioning(tdir.to_str().unwrap()).is_empty());
    nothing_left(&h);
}

#[test]
fn vms_restored_from_a_template_get_the_hosts_clock_and_their_own_randomness() {
    let Some(c) = Configs::new() else { return };
    let (cfg, tdir) = c.with_templates();
    let (h, _cleanup) = hull();
    let b = Bundle::new(&["sh", "-c", "cat /proc/sys/kernel/random/uuid; date +%s"]);
    let guest = |id: &str| -> (String, i64) {
        let out = run(&h, &cfg, &b, &unique_id(id));
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
        let host_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let text = stdout(&out);
        let mut lines = text.lines();
        let uuid = lines.next().unwrap_or_default().to_string();
        let secs: i64 = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("guest date: {text:?}"));
        (uuid, host_now - secs)
    };

    // The first run boots the kernel and saves the guest as the template.
    let (first, _) = guest("tpl-first");
    let made = templates(&tdir);
    assert_eq!(made.len(), 1, "one template: {made:?}");
    assert!(made[0].1, "the template holds memory and state: {made:?}");
    // Restored guests wake up with the template's clock unless the host sets it.
    std::thread::sleep(Duration::from_secs(8));
    let (second, lag2) = guest("tpl-second");
    let (third, lag3) = guest("tpl-third");
    assert_eq!(templates(&tdir), made, "restores reuse the template");
    for lag in [lag2, lag3] {
        assert!(
            (-1..=6).contains(&lag),
            "the restored guest's clock is {lag} s behind the host's"
        );
    }
    // Without a reseed, guests restored from one template repeat its random numbers.
    assert!(
        first != second && second != third && first != third,
        "uuids: {first} {second} {third}"
    );
    nothing_left(&h);

    // A template QEMU cannot load is removed and the VM boots instead.
    std::fs::write(tdir.join(&made[0].0).join("state"), b"not a vm state").unwrap();
    let (after, lag) = guest("tpl-broken");
    assert!(
        !after.is_empty() && (-1..=6).contains(&lag),
        "{after} {lag}"
    );
    assert_eq!(templates(&tdir), Vec::new(), "the broken template is gone");
    nothing_left(&h);
}

#[test]
fn the_guest_console_runs_commands_in_the_pods_guest_outside_the_container() {
    let Some(c) = Configs::new() else { return };
    // A template-restored VM: its console log still starts with the guest's boot.
    let (cfg, _) = c.with_templates();
    let (h, _cleanup) = hull();
    run_ok(&h, &cfg, &Bundle::new(&["true"]), &unique_id("con-tpl"));
    let b = Bundle::new(&["sleep", "100"]);
    let id = unique_id("console");
    create_detached(&h, &cfg, &b, &id);
    h.ok(&["start", &id]);
    let console = |args: &[&str]| {
        let mut all = vec!["console", id.as_str()];
        all.extend_from_slice(args);
        output_with_timeout(hull_cmd(&h, &cfg, &all), VM_CALL)
    };
    // The guest's PID 1 is the agent, its kernel the guest's; the container's own view
    // (its pid 1 is sleep) is not where the console runs.
    let out = console(&["--", "cat", "/proc/1/comm"]);
    assert_eq!(stdout(&out).trim(), "hull-agent", "{}", stderr(&out));
    let out = console(&["uname", "-r"]);
    let release = stdout(&out).trim().to_string();
    assert!(
        release.starts_with("6.1.") && release != host_release(),
        "{release}"
    );
    // The exit status passes through.
    assert_eq!(console(&["sh", "-c", "exit 7"]).status.code(), Some(7));
    // The boot log, though this VM was restored from a template.
    let out = output_with_timeout(hull_cmd(&h, &cfg, &["console", "--log", &id]), VM_CALL);
    assert!(stdout(&out).contains("hull-agent 0."), "{}", stdout(&out));
    // Interactive, over a pty: a shell as root in the guest.
    let (mut child, mut master) = spawn_on_pty(hull_cmd(&h, &cfg, &["console", &id]));
    let mut writer = master.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    });
    // The window size follows hull's terminal into the guest.
    let ws = libc::winsize {
        ws_row: 30,
        ws_col: 90,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the live local.
    unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&writer),
            libc::TIOCSWINSZ,
            &ws,
        )
    };
    std::thread::sleep(Duration::from_millis(600));
    writer
        .write_all(b"echo hull-$((6*7)) $(id -u); tty; stty size; ls -l /proc/self/fd/; exit 3\r")
        .unwrap();
    let status = wait_bounded(&mut child, VM_CALL);
    drop(writer);
    let text = reader.join().unwrap();
    assert!(text.contains("hull-42 0"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "a pty in the guest: {text:?}");
    assert!(text.contains("30 90"), "the window size: {text:?}");
    // Nothing of the agent's leaks into the shell (its pty pair, its channels).
    assert!(
        !text.contains("ptmx") && !text.contains("vport") && !text.contains("socket:"),
        "open fds: {text:?}"
    );
    assert_eq!(status.code(), Some(3), "{text:?}");
    h.ok(&["delete", "--force", &id]);

    // A host container has no guest; an unknown id is unknown.
    let host_id = unique_id("conhost");
    h.ok(&[
        "run",
        "-d",
        "--bundle",
        Bundle::new(&["sleep", "100"]).path().to_str().unwrap(),
        &host_id,
    ]);
    fails_with(
        &output_with_timeout(h.cmd(&["console", &host_id]), VM_CALL),
        &[&host_id, "no guest", "hull exec"],
    );
    h.ok(&["delete", "--force", &host_id]);
    fails_with(
        &output_with_timeout(h.cmd(&["console", "no-such-container"]), VM_CALL),
        &["no-such-container", "does not exist"],
    );
    nothing_left(&h);
}

/// `io.hull.rootfs=disk`: the container's rootfs is an ext4 disk of the VM (no 9p share is
/// mounted in the guest), built from the bundle's rootfs and its bind sources; writes stay in
/// the image; the guest console has its tools; a bad value is one line; nothing is left.
#[test]
fn a_disk_rootfs_is_an_ext4_disk_of_the_vm_with_the_bundles_files() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let host_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(host_file.path(), "from-the-host\n").unwrap();
    let src = host_file.path().to_str().unwrap().to_string();
    let script = "grep ' / ' /proc/mounts; grep -c ' 9p ' /proc/mounts; cat /hostfile; \
                  echo written > /etc/new; cat /etc/new; exit 5";
    let b = Bundle::with(&["sh", "-c", script], move |v| {
        v["annotations"]["io.hull.rootfs"] = "disk".into();
        v["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/hostfile", "type": "bind", "source": src, "options": ["rbind", "ro"]}
        ));
    });
    let out = run(&h, &c.vm, &b, &unique_id("diskroot"));
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(5),
        "stdout: {text}\nstderr: {}",
        stderr(&out)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("/dev/vd") && lines[0].contains(" / ext4 "),
        "the rootfs is an ext4 disk: {text}"
    );
    assert_eq!(
        lines[1], "0",
        "no 9p share is mounted in the container: {text}"
    );
    assert_eq!(lines[2], "from-the-host", "the bind source's copy: {text}");
    assert_eq!(lines[3], "written", "{text}");
    assert!(
        !b.path().join("rootfs/etc/new").exists(),
        "a write in a disk rootfs stays in the image"
    );
    nothing_left(&h);

    // A pod that stays: exec and the guest console work; the guest mounts no 9p share.
    let b = Bundle::with(&["sleep", "60"], |v| {
        v["annotations"]["io.hull.rootfs"] = "disk".into()
    });
    let id = unique_id("diskpod");
    create_detached(&h, &c.vm, &b, &id);
    h.ok(&["--config", c.vm.to_str().unwrap(), "start", &id]);
    let o = h.ok(&[
        "--config",
        c.vm.to_str().unwrap(),
        "exec",
        &id,
        "cat",
        "/etc/passwd",
    ]);
    assert!(o.starts_with("root:x:0:0"), "{o}");
    let o = h.ok(&[
        "--config",
        c.vm.to_str().unwrap(),
        "console",
        &id,
        "sh",
        "-c",
        "grep -c ' 9p ' /proc/mounts; true",
    ]);
    assert_eq!(o.trim(), "0", "the guest mounts no 9p share");
    h.ok(&["--config", c.vm.to_str().unwrap(), "delete", "-f", &id]);
    nothing_left(&h);

    let b = Bundle::with(&["true"], |v| {
        v["annotations"]["io.hull.rootfs"] = "tape".into()
    });
    let out = run(&h, &c.vm, &b, &unique_id("diskbad"));
    fails_with(&out, &["io.hull.rootfs", "tape"]);
    nothing_left(&h);
}

/// A disk-rootfs bundle (checkpointable) running `script`.
fn disk_rootfs_bundle(script: &str) -> Bundle {
    Bundle::with(&["sh", "-c", script], |v| {
        v["annotations"]["io.hull.rootfs"] = "disk".into()
    })
}

/// The counting container of the checkpoint tests (the number is written aside and renamed
/// into place: a reader never finds /count empty).
const COUNTER: &str =
    "i=0; while :; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.1; done";

/// The number container `id` last wrote to /count.
fn guest_count(h: &Hull, cfg: &Path, id: &str) -> u64 {
    let o = h.ok(&[
        "--config",
        cfg.to_str().unwrap(),
        "exec",
        id,
        "cat",
        "/count",
    ]);
    o.trim().parse().unwrap_or_else(|_| panic!("/count: {o:?}"))
}

/// Creates (detached) and starts `b` as `id`, and waits until its counter reached `at`
/// (until its first write, /count is not there yet: that counts as 0).
fn start_counting(h: &Hull, cfg: &Path, b: &Bundle, id: &str, at: u64) {
    create_detached(h, cfg, b, id);
    h.ok(&["--config", cfg.to_str().unwrap(), "start", id]);
    let count = || {
        let o = h.run(&[
            "--config",
            cfg.to_str().unwrap(),
            "exec",
            id,
            "cat",
            "/count",
        ]);
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || count() >= at),
        "the counter of {id} never reached {at}"
    );
}

/// `hull delete -f id`, then nothing may be left.
fn delete_all(h: &Hull, cfg: &Path, id: &str) {
    h.ok(&["--config", cfg.to_str().unwrap(), "delete", "-f", id]);
    nothing_left(h);
}

/// `hull checkpoint [FLAGS] --image-path DIR ID`, bounded.
fn checkpoint(h: &Hull, cfg: &Path, flags: &[&str], dir: &Path, id: &str) -> Output {
    let mut args = vec!["checkpoint"];
    args.extend_from_slice(flags);
    args.extend(["--image-path", dir.to_str().unwrap(), id]);
    output_with_timeout(hull_cmd(h, cfg, &args), VM_CALL)
}

/// `hull restore [FLAGS] --image-path DIR --bundle B ID`, bounded.
fn restore(h: &Hull, cfg: &Path, flags: &[&str], dir: &Path, b: &Path, id: &str) -> Output {
    let mut args = vec!["restore"];
    args.extend_from_slice(flags);
    args.extend([
        "--image-path",
        dir.to_str().unwrap(),
        "--bundle",
        b.to_str().unwrap(),
        id,
    ]);
    output_with_timeout(hull_cmd(h, cfg, &args), VM_CALL)
}

/// The vm checkpoint: a counting container is saved and stops (gone, as runc's checkpoint
/// leaves it), is restored under its id and counts on from its number, not from 1; the
/// checkpoint restores again after that pod is deleted; a second restore of a running id is
/// refused; nothing is left.
#[test]
fn a_checkpointed_vm_pod_stops_and_restored_counts_on_from_its_number() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let cfg = c.vm.as_path();
    let b = disk_rootfs_bundle(COUNTER);
    let id = unique_id("ckpt");
    start_counting(&h, cfg, &b, &id, 10);
    let images = tempfile::tempdir().unwrap();
    let dir = images.path().join("ck");
    let before = guest_count(&h, cfg, &id);
    let out = checkpoint(&h, cfg, &[], &dir, &id);
    assert_eq!(out.status.code(), Some(0), "checkpoint: {}", stderr(&out));
    assert!(
        !h.has_state(&id),
        "a checkpoint without --leave-running stops the container"
    );
    assert!(dir.join("hull-pod.json").is_file() && dir.join("qemu.state").is_file());
    nothing_left(&h);

    for round in 0..2 {
        let out = restore(&h, cfg, &["-d"], &dir, b.path(), &id);
        assert_eq!(
            out.status.code(),
            Some(0),
            "restore {round}: {}",
            stderr(&out)
        );
        assert_eq!(h.state(&id)["status"], "running");
        let restored = guest_count(&h, cfg, &id);
        assert!(
            restored >= before && restored < before + 100,
            "restore {round}: the counter is at {restored}, it was at {before} before the checkpoint"
        );
        assert!(
            wait_until(Duration::from_secs(30), || guest_count(&h, cfg, &id)
                > restored + 3),
            "restore {round}: the counter does not count on"
        );
        if round == 0 {
            let out = restore(&h, cfg, &["-d"], &dir, b.path(), &id);
            fails_with(&out, &[&id, "already exists"]);
        }
        delete_all(&h, cfg, &id);
    }
}

/// `--leave-running`: the pod runs on, and a TCP connection from the host into it stays up
/// across the checkpoint.
#[test]
fn a_tcp_connection_into_a_vm_pod_survives_a_leave_running_checkpoint() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let cfg = c.vm.as_path();
    let net = PodNetns::new(3);
    let b = Bundle::with(&["nc", "-ll", "-p", "7000", "-e", "cat"], {
        let path = net.path();
        move |v| {
            v["annotations"]["io.hull.rootfs"] = "disk".into();
            let nss = v["linux"]["namespaces"].as_array_mut().unwrap();
            nss.retain(|n| n["type"] != "network");
            nss.push(serde_json::json!({"type": "network", "path": path}));
        }
    });
    let id = unique_id("cktcp");
    create_detached(&h, cfg, &b, &id);
    h.ok(&["--config", cfg.to_str().unwrap(), "start", &id]);
    let mut conn = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            conn = std::net::TcpStream::connect("10.201.3.2:7000").ok();
            conn.is_some()
        }),
        "the pod never listened"
    );
    let conn = conn.unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut echo = |text: &str| {
        (&conn).write_all(format!("{text}\n").as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(echo("before"), "before");
    let images = tempfile::tempdir().unwrap();
    let flags = ["--leave-running", "--tcp-established"];
    let out = checkpoint(&h, cfg, &flags, images.path(), &id);
    assert_eq!(out.status.code(), Some(0), "checkpoint: {}", stderr(&out));
    assert_eq!(h.state(&id)["status"], "running");
    assert_eq!(
        echo("after"),
        "after",
        "the connection survives the checkpoint"
    );
    delete_all(&h, cfg, &id);
}

/// A restore in the foreground passes the restored process's output to this process's
/// stdout and ends with its exit status.
#[test]
fn a_foreground_restore_carries_the_output_and_exit_status_on() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let cfg = c.vm.as_path();
    let b = disk_rootfs_bundle(
        "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; echo n$i; sleep 0.1; done; exit 3",
    );
    let id = unique_id("ckfg");
    start_counting(&h, cfg, &b, &id, 10);
    let images = tempfile::tempdir().unwrap();
    let out = checkpoint(&h, cfg, &[], images.path(), &id);
    assert_eq!(out.status.code(), Some(0), "checkpoint: {}", stderr(&out));
    let out = restore(&h, cfg, &[], images.path(), b.path(), &id);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {text}\nstderr: {}",
        stderr(&out)
    );
    assert!(
        text.contains("n60"),
        "the restored process's output: {text}"
    );
    assert!(!text.contains("n1\n"), "it did not start over: {text}");
    nothing_left(&h);
}

/// What cannot be checkpointed or restored is refused in one line, leaving the pod as it was
/// and nothing behind: a 9p-shared rootfs (QEMU cannot save it), a missing or corrupt image
/// dir, an id that is not there.
#[test]
fn checkpoints_that_cannot_be_are_refused_in_one_line() {
    let Some(c) = Configs::new() else { return };
    let (h, _cleanup) = hull();
    let cfg = c.vm.as_path();
    let images = tempfile::tempdir().unwrap();
    let dir = images.path().join("ck");
    let b = Bundle::new(&["sh", "-c", COUNTER]);
    let id = unique_id("ckshare");
    start_counting(&h, cfg, &b, &id, 1);
    let out = checkpoint(&h, cfg, &[], &dir, &id);
    fails_with(
        &out,
        &["checkpoint of pod", "virtio-9p", "io.hull.rootfs=disk"],
    );
    assert_eq!(h.state(&id)["status"], "running");
    let n = guest_count(&h, cfg, &id);
    assert!(
        wait_until(Duration::from_secs(30), || guest_count(&h, cfg, &id) > n),
        "it runs on"
    );
    assert!(!dir.join("hull-pod.json").exists());
    delete_all(&h, cfg, &id);

    let out = restore(&h, cfg, &[], &images.path().join("missing"), b.path(), "r1");
    fails_with(&out, &["restore of r1", "not a directory"]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hull-pod.json"), "{not json").unwrap();
    let out = restore(&h, cfg, &["-d"], &dir, b.path(), "r1");
    fails_with(&out, &["restore of r1", "hull-pod.json"]);
    nothing_left(&h);
    let out = checkpoint(&h, cfg, &[], &dir, "nosuch");
    fails_with(&out, &["nosuch"]);
}
