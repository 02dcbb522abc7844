//! Helpers shared by hull's end-to-end tests: busybox bundles, a `hull` runner with a
//! private state root, and checks that nothing was left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod docker;
pub mod net;
pub mod podman;

/// Path of a binary built from this workspace (`hull`, ...): `$HULL_BIN_DIR/NAME`, else
/// next to the test executable's target dir.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("HULL_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` first (or set HULL_BIN_DIR)",
        p.display()
    );
    p
}

/// A unique container id for this test process.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Fill `rootfs` with busybox-static and its applets.
pub fn busybox_rootfs(rootfs: &Path) {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox-static is not installed (apt-get install busybox-static)");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(bb, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(bb).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnobody:x:65534:\n").unwrap();
}

/// Says loudly that `test` did not run and why; in CI (`CI` or `HULL_TEST_REQUIRE_ALL` set)
/// a test that cannot run fails instead: a skip must not hide a capability there.
pub fn skip(test: &str, why: &str) {
    let required = ["CI", "HULL_TEST_REQUIRE_ALL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    assert!(
        !required,
        "{test} cannot run here, and CI runs every test: {why}"
    );
    eprintln!("SKIPPED {test}: {why} (this test did not run)");
}

/// An OCI bundle in a temporary directory with a busybox rootfs.
pub struct Bundle {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl Bundle {
    /// A bundle whose process runs `args`, config from `hull spec` with `terminal: false`.
    pub fn new(args: &[&str]) -> Self {
        Self::with(args, |_| {})
    }

    /// Like `new`, then `edit` may change the config JSON.
    pub fn with(args: &[&str], edit: impl FnOnce(&mut Value)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hull-bundle-")
            .tempdir()
            .unwrap();
        busybox_rootfs(&dir.path().join("rootfs"));
        let out = Command::new(bin("hull"))
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "hull spec: {:?}", out);
        let b = Self { dir };
        b.edit(|v| {
            v["process"]["args"] = args.iter().map(|s| Value::from(*s)).collect();
            v["process"]["terminal"] = false.into();
            v["root"]["readonly"] = false.into();
            edit(v);
        });
        b
    }

    /// Bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Change config.json in place.
    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let p = self.path().join("config.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
}

/// Runs the real `hull` binary with a private `--root`.
pub struct Hull {
    /// State root for this test.
    pub root: tempfile::TempDir,
}

impl Default for Hull {
    fn default() -> Self {
        Self::new()
    }
}

impl Hull {
    /// A runner with a fresh state root.
    pub fn new() -> Self {
        Self {
            root: tempfile::Builder::new()
                .prefix("hull-root-")
                .tempdir()
                .unwrap(),
        }
    }

    /// A `hull --root ROOT args...` command, stdin from /dev/null.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("hull"));
        c.arg("--root").arg(self.root.path()).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Run to completion with captured output, bounded by 60 s.
    pub fn run(&self, args: &[&str]) -> Output {
        output_with_timeout(self.cmd(args), Duration::from_secs(60))
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "hull {:?} failed: {}\nstderr: {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hull state ID` as JSON.
    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    /// Whether the state dir of `id` exists.
    pub fn has_state(&self, id: &str) -> bool {
        self.root.path().join(id).exists()
    }
}

impl Drop for Hull {
    fn drop(&mut self) {
        // Best effort: leave no container behind even when a test failed.
        if let Ok(entries) = std::fs::read_dir(self.root.path()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if id.starts_with('.') {
                    continue;
                }
                let _ = Command::new(bin("hull"))
                    .arg("--root")
                    .arg(self.root.path())
                    .args(["delete", "--force", &id])
                    .output();
            }
        }
    }
}

/// Run a command, killing it if it outlives `limit`. Output goes through files, not
/// pipes: a detached container inherits them and would keep pipes open.
pub fn output_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let out_f = tempfile::tempfile().expect("tempfile");
    let err_f = tempfile::tempfile().expect("tempfile");
    cmd.stdout(out_f.try_clone().unwrap())
        .stderr(err_f.try_clone().unwrap());
    let mut child = cmd.spawn().expect("spawn");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output {
        status,
        stdout: read(out_f),
        stderr: read(err_f),
    }
}

/// Cgroup directories (any v1 controller or the v2 tree) whose name contains `needle`.
pub fn cgroups_named(needle: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, needle: &str, depth: usize, out: &mut Vec<PathBuf>) {
        if depth > 4 {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let p = e.path();
                    if e.file_name().to_string_lossy().contains(needle) {
                        out.push(p.clone());
                    }
                    walk(&p, needle, depth + 1, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), needle, 0, &mut out);
    out
}

/// Mount points that mention `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// Pids of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    command_lines_mentioning(needle)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// The processes (but this one) whose command line mentions `needle`: each pid with its
/// command line, arguments joined by spaces.
pub fn command_lines_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                if pid == me {
                    continue;
                }
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(needle) {
                    out.push((pid, cmd));
                }
            }
        }
    }
    out
}

/// Wait until `f` holds, up to `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// What a shell script printed in the nested machine (`scripts/nested-machine`: Debian's own
/// kernel, cgroup v2 alone, this host's files visible): its stdout, once it exited 0 (else
/// the test fails, with everything it said). `shares` are mounted read-write at their paths.
/// L1 runs with one CPU on one TCG thread, as in the builtin test (`builtin.rs`): with two
/// CPUs on a TCG thread each, L1 froze now and then (the CRIU test's machine once printed
/// "command start" and then nothing until its timeout, in a fresh-clone CI run).
pub fn in_nested_machine(script: &str, shares: &[&Path]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("inner.sh");
    std::fs::write(&inner, script).unwrap();
    let mut all = vec![dir.path()];
    all.extend_from_slice(shares);
    let run = nested_machine(
        &["--cpus", "1", "--one-tcg-thread", "--timeout", "300"],
        &all,
        &inner,
        Duration::from_secs(360),
    );
    assert_eq!(run.out.status.code(), Some(0), "the script failed");
    run.stdout
}

/// What one run of a script in `scripts/nested-machine` ended with and printed.
pub struct NestedRun {
    /// The nested machine's exit.
    pub out: Output,
    /// Its stdout, as text.
    pub stdout: String,
    /// Its stderr, as text.
    pub stderr: String,
}

/// Runs `sh inner` in `scripts/nested-machine` with `args` and each of `shares` shared in (the
/// nested machine has a /tmp of its own), within `limit`; prints how long it ran and what it
/// printed.
pub fn nested_machine(args: &[&str], shares: &[&Path], inner: &Path, limit: Duration) -> NestedRun {
    let machine = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nested-machine");
    assert!(machine.is_file(), "{} is missing", machine.display());
    let mut c = Command::new(&machine);
    c.args(args);
    for s in shares {
        c.arg("--share").arg(s);
    }
    c.args(["--", "sh"]).arg(inner);
    let started = Instant::now();
    let out = output_with_timeout(c, limit);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "nested machine ran for {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        started.elapsed()
    );
    NestedRun {
        out,
        stdout,
        stderr,
    }
}

/// `run` (a nested machine's run of VM pods, with the text of its guests' consoles), and once
/// more, saying why on stderr, when the first run shows an L2 guest lost to the emulator
/// ([`nested_guest_fault`]); the last run.
pub fn with_one_retry(mut run: impl FnMut() -> (NestedRun, String)) -> NestedRun {
    let (first, consoles) = run();
    match nested_guest_fault(&first.stderr, &consoles) {
        Some(why) => {
            eprintln!(
                "=== RETRY: an L2 guest failed in the emulated machine ({why}); one more run"
            );
            run().0
        }
        None => first,
    }
}

/// Why a nested machine's run of VM pods (L2 guests: KVM inside QEMU's emulated AMD SVM) is
/// worth one more run, if it is: the first line of `stderr` (hull's errors) or of the guests'
/// `consoles` that says an L2 guest went away or stopped answering. Measured here, the same
/// guest kernel and agent fail this way in about one nested run in six (a guest kernel page
/// fault with a garbage GS base in its own page-fault handler, "Fatal exception in interrupt";
/// boots or agent calls that never finish; a guest that ended under StartContainer, seen as a
/// broken agent connection: a "transport error", also when hull names the ended vm as its
/// cause; a guest that reset before its console said anything, which QEMU's -no-reboot ends
/// with exit status 0: measured 1 boot in 25 with two L1 CPUs; L1 itself freezing, which the
/// machine's timeout ends: 2 boots in 80 with one), and never outside the emulator (the vm tests
/// run the same guests under QEMU TCG hundreds of times). A hull bug that does this fails every
/// run, so the retry still fails on it; a test retries once, and says so on stderr.
pub fn nested_guest_fault(stderr: &str, consoles: &str) -> Option<String> {
    const SIGNS: [&str; 7] = [
        "timed out",
        "vm exited during boot (exit status: 0)",
        "socket disconnected",
        "transport error",
        "did not answer",
        "Kernel panic",
        "stack guard page was hit",
    ];
    stderr
        .lines()
        .chain(consoles.lines())
        .find(|l| SIGNS.iter().any(|s| l.contains(s)))
        .map(str::to_string)
}

/// The rest of the line of `text` that starts `== NAME ` (how nested scripts report).
pub fn reported(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("== {name} ")))
        .unwrap_or_else(|| panic!("no {name} line"))
        .to_string()
}

/// Lazily unmount every mount point under `dir` (what a stopped daemon left behind).
pub fn unmount_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = mounts_mentioning(&needle)
        .iter()
        .filter_map(|m| m.split_whitespace().nth(4).map(String::from))
        .filter(|mp| mp.starts_with(&needle))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for mp in points {
        let _ = nix::mount::umount2(mp.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Declared after its `Hull`, so dropped before it: whatever a failed test left mounted or
/// running under the root (VMs) goes before the root is deleted (deleting through a leftover
/// bind mount would delete the bundle's rootfs).
pub struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().into_owned();
        for pid in processes_mentioning(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        unmount_under(&self.0);
    }
}

/// A `Hull` with a private root, and its cleanup guard (to bind after it).
pub fn hull_with_cleanup() -> (Hull, Cleanup) {
    let h = Hull::new();
    let g = Cleanup(h.root.path().to_path_buf());
    (h, g)
}

/// The guest kernel and an initrd holding this workspace's `hull-agent`, for vm isolation
/// tests.
#[derive(Debug, Clone)]
pub struct GuestArtefacts {
    /// Uncompressed vmlinux from `guest-kernel/build.sh` (cached under ~/.cache/hull).
    pub kernel: PathBuf,
    /// Initrd from `guest-kernel/initrd.sh` with `hull-agent` as /init.
    pub initrd: PathBuf,
}

/// The workspace's top directory.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace dir")
        .to_path_buf()
}

/// Run `guest-kernel/SCRIPT ARGS`, progress on our stderr; returns the path it prints.
pub fn guest_script(script: &str, args: &[&str]) -> PathBuf {
    let out = Command::new(repo_dir().join("guest-kernel").join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run guest-kernel/{script}: {e}"));
    assert!(
        out.status.success(),
        "guest-kernel/{script} {args:?} failed: {}",
        out.status
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// This workspace's `hull-agent`: `bin("hull-agent")` when it is built, else built here
/// with cargo into the test's own target dir.
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let built = match std::env::var("HULL_BIN_DIR") {
        Ok(dir) => Path::new(&dir).join("hull-agent"),
        Err(_) => profile_dir.join("hull-agent"),
    };
    if built.is_file() {
        return built;
    }
    let target_dir = profile_dir.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "hull-agent", "--bin", "hull-agent"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(repo_dir())
        .status()
        .expect("run cargo build -p hull-agent");
    assert!(status.success(), "cargo build -p hull-agent failed");
    profile_dir.join("hull-agent")
}

/// The guest artefacts, built once per test process (a cold kernel cache builds the kernel,
/// ~6.5 minutes on 2 cores). A host without qemu-system-x86_64 or linux-source-6.1 fails the
/// test that asked, saying what to install (scripts/setup-host does): a vm test that cannot
/// run is a hidden gap, not a pass. `None` only where a person opted out explicitly with
/// HULL_SKIP_VM_TESTS, which CI refuses (`CI` set).
pub fn guest_artefacts() -> Option<&'static GuestArtefacts> {
    static A: std::sync::OnceLock<Result<GuestArtefacts, String>> = std::sync::OnceLock::new();
    let a = A.get_or_init(|| {
        if std::env::var_os("HULL_SKIP_VM_TESTS").is_some() {
            if std::env::var_os("CI").is_some() {
                return Err("HULL_SKIP_VM_TESTS is set in CI: vm tests must run there".into());
            }
            return Err(String::new());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let qemu = std::env::split_paths(&path).any(|d| d.join("qemu-system-x86_64").is_file());
        if !qemu || !Path::new("/usr/src/linux-source-6.1.tar.xz").exists() {
            return Err("vm tests need qemu-system-x86_64 and linux-source-6.1 \
                 (/usr/src/linux-source-6.1.tar.xz): run scripts/setup-host"
                .into());
        }
        let t = Instant::now();
        let kernel = guest_script("build.sh", &[]);
        let agent = agent_binary();
        let initrd = guest_script("initrd.sh", &[agent.to_str().expect("utf-8 path")]);
        eprintln!(
            "guest artefacts ready in {:?}: {} {}",
            t.elapsed(),
            kernel.display(),
            initrd.display()
        );
        Ok(GuestArtefacts { kernel, initrd })
    });
    match a {
        Ok(a) => Some(a),
        Err(why) if why.is_empty() => {
            eprintln!("SKIPPED on request (HULL_SKIP_VM_TESTS): this vm test did not run");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

/// Starts `cmd` on a fresh pty of its own: stdin, stdout and stderr on the pty, which is the
/// controlling terminal of its new session (what `-t` of ctr, docker and hull wants).
/// Returns the child and the pty master (reads EIO once every holder of the pty is gone).
pub fn spawn_on_pty(mut cmd: Command) -> (std::process::Child, std::fs::File) {
    use std::os::unix::process::CommandExt;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave));
    // SAFETY: only async-signal-safe calls between fork and exec: a new session, and the
    // pty on fd 0 as its controlling terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn on a pty");
    // Our copies of the slave go with `cmd`.
    drop(cmd);
    (child, std::fs::File::from(pty.master))
}

/// Runs `cmd` on a pty of its own (see [`spawn_on_pty`]) to its end: its exit status and
/// everything it wrote to the terminal.
pub fn output_on_pty(cmd: Command) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let (mut child, mut master) = spawn_on_pty(cmd);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    let status = child.wait().expect("wait");
    let out = reader.join().unwrap();
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// A hull config choosing `isolation`, with a `[vm]` table for QEMU under TCG booting
/// `kernel` and `initrd` (the build machines have no hardware virtualization and are
/// shared, hence the long boot timeout). Tables may be appended.
pub fn vm_config_text(isolation: &str, kernel: &Path, initrd: &Path) -> String {
    format!(
        "isolation = {isolation:?}\n[vm]\nhypervisor = \"qemu\"\naccel = \"tcg\"\n\
         kernel = {:?}\ninitrd = {:?}\nboot_timeout_s = 120\n",
        kernel.to_str().unwrap(),
        initrd.to_str().unwrap()
    )
}

/// A loop device over a 16 MiB sparse file in a temp dir (a host block device for tests),
/// detached on drop.
pub struct Loop {
    _dir: tempfile::TempDir,
    /// The backing file.
    pub file: PathBuf,
    /// The device node (`/dev/loopN`).
    pub dev: String,
    /// Its major:minor.
    pub number: (u64, u64),
}

impl Loop {
    /// Sets one up (`losetup -f`); panics saying why if it cannot.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .expect("losetup (util-linux)");
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&dev).unwrap().rdev();
        let number = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        Loop {
            _dir: dir,
            file,
            dev,
            number,
        }
    }

    /// The first `n` bytes of the backing file.
    pub fn head(&self, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0u8; n];
        std::fs::File::open(&self.file)
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[cfg(test)]
mod tests {
    use super::nested_guest_fault;

    #[test]
    fn an_l2_guest_lost_to_the_emulator_is_a_sign_and_a_refused_kernel_is_not() {
        // As CI printed them: a silent guest reset during boot, a guest ended under a call.
        let reset = "hull: boot the pod's vm (kernel /k/vmlinux): vm exited during boot \
                     (exit status: 0): guest: Booting from ROM..; console log: \"/x/console.log\"";
        assert_eq!(nested_guest_fault(reset, "").as_deref(), Some(reset));
        let ended = "hull: start container c in the vm: agent call StartContainer: \
                     transport error: socket err: EPIPE: Broken pipe";
        assert!(nested_guest_fault("other line\n", ended).is_some());
        // What a hull bug looks like: the same in every run, so no retry.
        let bug = "hull: boot the pod's vm (kernel /k/vmlinux): vm exited during boot \
                   (exit status: 1): qemu: could not load kernel; console log: \"/x\"";
        assert_eq!(nested_guest_fault(bug, ""), None);
    }
}
