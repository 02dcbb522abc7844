//! The qemu backend end to end under TCG: hull's guest kernel (guest-kernel/build.sh, cached;
//! a cold cache builds it here, ~7 minutes once) with hull-agent as /init.
//!
//! Skipped (with a message) where qemu-system-x86_64 or linux-source-6.1 is missing, or with
//! HULL_SKIP_VM_TESTS=1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hull_agent_client::AgentClient;
use hull_hypervisor::{Accel, Hypervisor, HypervisorError, QemuHypervisor, Share, VmConfig};

struct Artefacts {
    kernel: PathBuf,
    initrd: PathBuf,
    /// An initrd whose /init is a busybox shell that only sleeps (None without busybox).
    sleeping_initrd: Option<PathBuf>,
}

use hull_tests::{agent_binary, guest_script as run_script};

fn artefacts() -> Option<&'static Artefacts> {
    static A: OnceLock<Option<Artefacts>> = OnceLock::new();
    A.get_or_init(|| {
        let a = hull_tests::guest_artefacts()?;
        let (kernel, initrd) = (a.kernel.clone(), a.initrd.clone());
        let sleeping_initrd = Path::new("/bin/busybox").exists().then(|| {
            let dir = tempfile::tempdir().unwrap();
            let init = dir.path().join("init");
            std::fs::write(&init, "#!/bin/busybox sh\nexec /bin/busybox sleep 3600\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
            run_script(
                "initrd.sh",
                &[
                    "--name",
                    "test-sleeping",
                    init.to_str().unwrap(),
                    "/bin/busybox:/bin/busybox",
                ],
            )
        });
        Some(Artefacts {
            kernel,
            initrd,
            sleeping_initrd,
        })
    })
    .as_ref()
}

/// Boots `vm` and waits for its agent, as a pod does: the agent's connection and the time from
/// starting QEMU to the agent's first answer.
fn boot(vm: &mut QemuHypervisor) -> hull_hypervisor::Result<(AgentClient, Duration)> {
    let booted = vm.boot()?;
    let agent = vm.wait_for_agent(&booted)?;
    Ok((agent, booted.started.elapsed()))
}

fn config(a: &Artefacts, state: &Path) -> VmConfig {
    let mut c = VmConfig::new(&a.kernel, &a.initrd, state.join("vm"));
    c.accel = Accel::Tcg;
    c.memory_mib = 256;
    c.vcpus = 1;
    // Generous: the build machines are shared and TCG is slow under load.
    c.boot_timeout = Duration::from_secs(120);
    c.agent_call_timeout = Duration::from_secs(30);
    c
}

/// Processes whose command line mentions `needle` (a VM's state dir).
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn guest_boots_to_the_agent_with_its_own_kernel_pauses_resumes_and_stops() {
    let Some(a) = artefacts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("shared");
    std::fs::create_dir(&share).unwrap();
    let mut cfg = config(a, dir.path());
    cfg.shares.push(Share {
        host_dir: share,
        tag: "rootfs".into(),
    });
    let mut vm = QemuHypervisor::new(cfg);
    let (agent, boot_time) = boot(&mut vm).unwrap_or_else(|e| panic!("boot: {e}"));
    println!(
        "boot to agent ready (TCG): {:.3} s",
        boot_time.as_secs_f64()
    );
    let pid = vm.pid().expect("qemu runs");

    assert!(agent.check().unwrap(), "agent serving");
    let details = agent.guest_details().unwrap();
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    println!(
        "guest kernel {:?}, host kernel {:?}",
        details.kernel_release,
        host_release.trim()
    );
    assert!(!details.kernel_release.is_empty());
    assert_ne!(
        details.kernel_release,
        host_release.trim(),
        "the guest runs its own kernel"
    );
    assert!(
        details.mem_total_bytes > 100 << 20 && details.mem_total_bytes <= 256 << 20,
        "{details:?}"
    );
    assert_eq!(details.cpus, 1);

    std::thread::sleep(Duration::from_millis(500));
    if let Some(rss) = rss_kib(pid) {
        println!("qemu RSS, guest idle after boot: {} MiB", rss / 1024);
    }

    assert!(vm.query_status().unwrap().running);
    vm.pause().unwrap();
    let st = vm.query_status().unwrap();
    assert!(!st.running && st.status == "paused", "{st:?}");
    vm.resume().unwrap();
    assert!(vm.query_status().unwrap().running);
    assert!(agent.check().unwrap(), "agent answers after resume");

    let state_dir = dir.path().join("vm");
    let t = Instant::now();
    vm.stop(false).unwrap();
    println!("stop: {:.3} s", t.elapsed().as_secs_f64());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "qemu {pid} is gone"
    );
    assert_eq!(processes_mentioning(&state_dir), Vec::<u32>::new());
    assert!(vm.check_running().is_err());
    assert!(vm.pause().is_err(), "a stopped vm cannot be paused");
    vm.stop(false).unwrap();
}

#[test]
fn a_bad_kernel_fails_fast_with_one_clear_error() {
    let Some(a) = artefacts() else { return };
    let dir = tempfile::tempdir().unwrap();

    let mut cfg = config(a, dir.path());
    cfg.kernel = dir.path().join("no-such-vmlinux");
    let e = boot(&mut QemuHypervisor::new(cfg)).unwrap_err();
    assert!(matches!(e, HypervisorError::Config(_)), "{e}");
    assert!(e.to_string().contains("no-such-vmlinux"), "{e}");

    // A file that is no kernel: QEMU itself refuses it.
    let junk = dir.path().join("junk-vmlinux");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    let mut cfg = config(a, dir.path());
    cfg.kernel = junk;
    let t = Instant::now();
    let mut vm = QemuHypervisor::new(cfg);
    let e = boot(&mut vm).unwrap_err();
    println!("junk kernel: {e}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert!(matches!(e, HypervisorError::ExitedDuringBoot { .. }), "{e}");
    assert!(e.to_string().contains("console.log"), "{e}");
    assert!(vm.pid().is_none());
    assert_eq!(
        processes_mentioning(&dir.path().join("vm")),
        Vec::<u32>::new()
    );
}

#[test]
fn an_agent_that_never_answers_fails_within_the_bound() {
    let Some(a) = artefacts() else { return };
    let sleeping = a
        .sleeping_initrd
        .as_ref()
        .expect("this test needs /bin/busybox (busybox-static: scripts/setup-host)");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(a, dir.path());
    cfg.initrd = sleeping.clone();
    cfg.boot_timeout = Duration::from_secs(6);
    let mut vm = QemuHypervisor::new(cfg);
    let t = Instant::now();
    let e = boot(&mut vm).unwrap_err();
    let took = t.elapsed();
    println!("silent agent: {e} (after {:.3} s)", took.as_secs_f64());
    assert!(matches!(e, HypervisorError::BootTimeout { .. }), "{e}");
    assert!(e.to_string().contains("console.log"), "{e}");
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(12),
        "{took:?}"
    );
    assert_eq!(
        processes_mentioning(&dir.path().join("vm")),
        Vec::<u32>::new()
    );
}

#[test]
fn killing_qemu_under_a_running_vm_is_noticed() {
    let Some(a) = artefacts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = QemuHypervisor::new(config(a, dir.path()));
    let (agent, boot_time) = boot(&mut vm).unwrap_or_else(|e| panic!("boot: {e}"));
    println!(
        "boot to agent ready (TCG): {:.3} s",
        boot_time.as_secs_f64()
    );
    vm.check_running().unwrap();
    assert!(
        vm.ended_by_itself(Duration::ZERO).is_none(),
        "a running vm has not ended"
    );
    let pid = vm.pid().unwrap();
    // SAFETY: kill(2) of the QEMU child this test started (unreaped, so the pid is still ours).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);

    let t = Instant::now();
    let e = agent.check().unwrap_err();
    println!("agent call after qemu died: {e} (after {:?})", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the call failed, it did not hang"
    );
    // Why the call failed: the VM ended by itself, and its console is kept for a post-mortem
    // (the VM's own directory goes with its pod).
    let ended = vm
        .ended_by_itself(Duration::from_secs(5))
        .expect("the vm ended by itself");
    let HypervisorError::NotRunning {
        status,
        console_log,
    } = &ended
    else {
        panic!("{ended}")
    };
    assert!(status.contains("signal: 9"), "{ended}");
    assert!(
        console_log.starts_with("/var/log/hull/failed-boots"),
        "{ended}"
    );
    let console = std::fs::read_to_string(console_log).unwrap();
    assert!(
        console.contains("hull-agent"),
        "the guest's boot: {console}"
    );
    // Asked again, the same kept logs.
    let again = vm.ended_by_itself(Duration::ZERO).expect("still ended");
    assert_eq!(again.to_string(), ended.to_string());
    let _ = std::fs::remove_dir_all(console_log.parent().unwrap());

    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        match vm.check_running() {
            Err(e) => break e,
            Ok(()) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(()) => panic!("qemu's death went unnoticed"),
        }
    };
    assert!(matches!(e, HypervisorError::NotRunning { .. }), "{e}");
    assert!(e.to_string().contains("signal: 9"), "{e}");
    assert!(vm.pause().is_err());
    vm.stop(false).unwrap();
    assert!(
        vm.ended_by_itself(Duration::ZERO).is_none(),
        "a stopped vm did not end by itself"
    );
}

/// Run only as the child of `qemu_dies_with_the_process_that_owns_it`: boots a VM, writes
/// QEMU's pid to the file named by HULL_VM_TEST_OWNER, then waits to be killed.
#[test]
fn owner_process_for_the_pdeathsig_test() {
    let Some(pid_file) = std::env::var_os("HULL_VM_TEST_OWNER") else {
        return;
    };
    let a = artefacts().expect("artefacts");
    let dir = tempfile::tempdir().unwrap();
    let mut vm = QemuHypervisor::new(config(a, dir.path()));
    let _agent = boot(&mut vm).unwrap_or_else(|e| panic!("boot: {e}"));
    std::fs::write(&pid_file, vm.pid().unwrap().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(300));
}

fn alive(pid: u32) -> bool {
    // A zombie (state Z, waiting for init to reap it) is not running.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

#[test]
fn qemu_dies_with_the_process_that_owns_it() {
    let Some(_) = artefacts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("qemu.pid");
    let mut owner = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "owner_process_for_the_pdeathsig_test",
            "--nocapture",
        ])
        .env("HULL_VM_TEST_OWNER", &pid_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(150);
    let qemu: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            break pid;
        }
        if let Some(st) = owner.try_wait().unwrap() {
            panic!("owner process exited early: {st}");
        }
        assert!(Instant::now() < deadline, "owner never booted its vm");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(alive(qemu));
    owner.kill().unwrap();
    owner.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(qemu) {
        if Instant::now() >= deadline {
            // SAFETY: kill(2) of the leaked QEMU, so that a failure leaves nothing behind.
            unsafe { libc::kill(qemu as i32, libc::SIGKILL) };
            panic!("qemu {qemu} outlived the process that owned it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fallback guest kernel: Debian's own (virtio, console ports and 9p as modules that the
/// agent loads from guest-kernel/debian-initrd.sh's initrd), booted with ACPI describing the
/// devices. The agent answers, the guest runs Debian's kernel, and the 9p share mounts.
#[test]
fn debian_kernel_fallback_boots_to_the_agent_and_mounts_the_share() {
    let Some(_) = artefacts() else { return };
    let Some(kver) = std::fs::read_dir("/lib/modules").ok().and_then(|d| {
        let mut v: Vec<String> = d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with("-amd64"))
            .filter(|n| Path::new(&format!("/boot/vmlinuz-{n}")).exists())
            .collect();
        v.sort();
        v.pop()
    }) else {
        panic!("this test needs Debian's linux-image-amd64 (scripts/setup-host installs it)");
    };
    let initrd = run_script(
        "debian-initrd.sh",
        &[agent_binary().to_str().unwrap(), &kver],
    );
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("shared");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello"), "from the host").unwrap();
    let mut cfg = VmConfig::new(
        format!("/boot/vmlinuz-{kver}"),
        &initrd,
        dir.path().join("vm"),
    );
    cfg.accel = Accel::Tcg;
    cfg.acpi = true;
    cfg.boot_timeout = Duration::from_secs(120);
    cfg.agent_call_timeout = Duration::from_secs(30);
    cfg.shares.push(Share {
        host_dir: share.clone(),
        tag: "hullshare".into(),
    });
    let mut vm = QemuHypervisor::new(cfg);
    let (agent, boot_time) = boot(&mut vm).unwrap_or_else(|e| panic!("boot Debian's kernel: {e}"));
    println!(
        "Debian kernel {kver}: boot to agent ready (TCG) {:.3} s",
        boot_time.as_secs_f64()
    );
    let details = agent.guest_details().unwrap();
    assert_eq!(details.kernel_release, kver);
    agent
        .setup_sandbox(
            "pod",
            "debian",
            &[],
            vec![hull_agent_client::Storage {
                source: "hullshare".into(),
                fstype: "9p".into(),
                options: vec!["trans=virtio".into(), "version=9p2000.L".into()],
                mount_point: "/run/hull/shared".into(),
                ..Default::default()
            }],
        )
        .unwrap_or_else(|e| panic!("9p mount with the module-loaded driver: {e}"));
    vm.stop(false).unwrap();
    assert_eq!(
        processes_mentioning(&dir.path().join("vm")),
        Vec::<u32>::new()
    );
}
