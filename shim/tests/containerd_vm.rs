//! vm isolation through containerd: `ctr` drives containerd-shim-hull-v2, whose pod runs
//! in its own QEMU microVM (TCG here) with the guest kernel from guest-kernel/.

mod common;

use std::path::PathBuf;

use common::{Containerd, HULL, IMAGE};

/// A hull config choosing vm isolation with this machine's guest files; `None` to skip.
fn vm_config(c: &Containerd, isolation: &str) -> Option<PathBuf> {
    let (kernel, initrd) = common::guest_files()?;
    let path = c.dir.join(format!("hull-{isolation}.toml"));
    std::fs::write(
        &path,
        hull_tests::vm_config_text(isolation, &kernel, &initrd),
    )
    .unwrap();
    Some(path)
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// No QEMU of this test's pods is left (their state lives under the test's hull root).
fn assert_no_vm(c: &Containerd) {
    let needle = c.hull_root.to_string_lossy().into_owned();
    let ok = (0..100).any(|_| {
        let left = common::processes_mentioning(&needle);
        left.is_empty() || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        }
    });
    assert!(
        ok,
        "vm processes left: {:?}",
        common::processes_mentioning(&needle)
    );
}

#[test]
fn run_rm_in_a_vm_shows_the_guest_kernel_and_the_exit_status() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("vmrun");
    let Some(cfg) = vm_config(&c, "vm") else {
        return;
    };
    let r = c.run(
        &["--rm", "--runtime-config-path", cfg.to_str().unwrap()],
        "v1",
        &["sh", "-c", "uname -r; echo to-stderr >&2; exit 3"],
    );
    let guest = r.out.trim();
    assert_eq!(r.code, 3, "stdout {:?} stderr {:?}", r.out, r.err);
    assert!(
        !guest.is_empty() && guest != host_kernel(),
        "not the guest's kernel: {guest:?} (host {})",
        host_kernel()
    );
    assert!(r.err.contains("to-stderr"), "stderr lost: {:?}", r.err);
    c.assert_clean();
    assert_no_vm(&c);
}

#[test]
fn annotation_picks_the_vm_and_task_verbs_go_through_the_agent() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("vmtask");
    // The config says host; the annotation wins.
    let Some(cfg) = vm_config(&c, "host") else {
        return;
    };
    let r = c.run(
        &[
            "-d",
            "--runtime-config-path",
            cfg.to_str().unwrap(),
            "--annotation",
            "io.hull.isolation=vm",
        ],
        "v2",
        &["sleep", "1000"],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    c.wait_status("v2", "RUNNING");

    let r = c.ctr(&["task", "exec", "--exec-id", "e1", "v2", "uname", "-r"]);
    assert_eq!(r.code, 0, "exec: {}", r.err);
    assert_ne!(r.out.trim(), host_kernel(), "exec ran on the host kernel");
    let r = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "v2",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(r.code, 7, "exec exit status: {}", r.err);

    assert_eq!(c.ctr(&["task", "pause", "v2"]).code, 0);
    c.wait_status("v2", "PAUSED");
    assert_eq!(c.ctr(&["task", "resume", "v2"]).code, 0);
    c.wait_status("v2", "RUNNING");

    let r = c.ctr(&["task", "metrics", "v2"]);
    assert_eq!(r.code, 0, "metrics: {}", r.err);
    let r = c.ctr(&["task", "ps", "v2"]);
    assert_eq!(r.code, 0, "ps: {}", r.err);

    // A second container of another pod on the host still works beside it.
    let r = c.run(&["--rm"], "h1", &["uname", "-r"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out.trim(), host_kernel());

    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "v2"]).code, 0);
    c.wait_status("v2", "STOPPED");
    assert_eq!(c.ctr(&["task", "delete", "v2"]).code, 0);
    assert_eq!(c.ctr(&["container", "rm", "v2"]).code, 0);
    c.assert_clean();
    assert_no_vm(&c);
}

#[test]
fn tty_in_a_vm() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("vmtty");
    let Some(cfg) = vm_config(&c, "vm") else {
        return;
    };
    let r = c.ctr_tty(&[
        "run",
        "-t",
        "--rm",
        "--runtime",
        HULL,
        "--runtime-config-path",
        cfg.to_str().unwrap(),
        IMAGE,
        "t1",
        "sh",
        "-c",
        "tty; exit 4",
    ]);
    assert!(
        r.out.contains("/dev/pts/"),
        "no pty in the guest:\n{}",
        r.out
    );
    assert_eq!(r.code, 4, "output:\n{}", r.out);
    c.assert_clean();
    assert_no_vm(&c);
}

#[test]
fn a_vm_that_cannot_boot_is_one_clear_error_and_leaves_nothing() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("vmbad");
    let Some(_) = common::guest_files() else {
        return;
    };
    let cfg = c.dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "isolation = \"vm\"\n[vm]\nhypervisor = \"qemu\"\nkernel = \"/nonexistent/vmlinux\"\n",
    )
    .unwrap();
    let r = c.run(
        &["--rm", "--runtime-config-path", cfg.to_str().unwrap()],
        "b1",
        &["true"],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("/nonexistent/vmlinux"),
        "error does not name the kernel: {}",
        r.err
    );
    let _ = c.ctr(&["container", "rm", "b1"]);
    c.assert_clean();
    assert_no_vm(&c);
}

#[test]
fn the_pod_memory_limit_sizes_the_vm() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("vmmem");
    let Some(cfg) = vm_config(&c, "vm") else {
        return;
    };
    // 256 MiB by default; a 512 MiB limit on the pod's container makes the guest larger.
    let r = c.run(
        &[
            "--rm",
            "--runtime-config-path",
            cfg.to_str().unwrap(),
            "--memory-limit",
            &(512u64 << 20).to_string(),
        ],
        "m1",
        &["sh", "-c", "grep MemTotal /proc/meminfo"],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    let kib: u64 = r
        .out
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {:?}", r.out));
    assert!(
        kib > 600 << 10,
        "guest MemTotal {kib} KiB does not include the 512 MiB limit"
    );
    c.assert_clean();
    assert_no_vm(&c);
}

#[test]
fn killing_the_vm_under_a_running_pod_stops_its_containers_with_an_error_status() {
    if !common::usable() {
        return;
    }
    let c = Containerd::start("vmkill");
    let Some(cfg) = vm_config(&c, "vm") else {
        return;
    };
    let r = c.run(
        &["-d", "--runtime-config-path", cfg.to_str().unwrap()],
        "k1",
        &["sleep", "1000"],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    c.wait_status("k1", "RUNNING");
    let vms = common::processes_mentioning(&c.hull_root.to_string_lossy());
    assert_eq!(vms.len(), 1, "one VM: {vms:?}");
    let _ = std::process::Command::new("kill")
        .args(["-9", &vms[0].to_string()])
        .status();
    c.wait_status("k1", "STOPPED");
    let r = c.ctr(&["task", "ls"]);
    assert!(
        r.out
            .lines()
            .any(|l| l.contains("k1") && l.contains("STOPPED")),
        "{}",
        r.out
    );
    // The exit status is an error, as the shim reports it to containerd.
    let status = exit_status(&c, "k1");
    assert_ne!(status, 0, "a dead VM reported exit status 0");
    let r = c.ctr(&["task", "delete", "k1"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(c.ctr(&["container", "rm", "k1"]).code, 0);
    c.assert_clean();
    assert_no_vm(&c);
}

/// The init exit status the shim of `id` reports (task State).
fn exit_status(c: &Containerd, id: &str) -> u32 {
    use containerd_shim::api::StateRequest;
    use containerd_shim::protos::ttrpc::{context, Client};
    use containerd_shim::protos::TaskClient;

    let addr = std::fs::read_to_string(c.bundle(id).join("address")).unwrap();
    let client = TaskClient::new(Client::connect(addr.trim()).expect("connect to the shim"));
    let req = StateRequest {
        id: id.into(),
        ..Default::default()
    };
    client
        .state(context::with_timeout(10_000_000_000), &req)
        .expect("task state")
        .exit_status
}

/// A SIGKILLed shim takes its VM (and the tap) with it; the redirect it put on the pod's veth
/// goes in the cleanup containerd runs (`shim delete`).
#[test]
fn a_killed_shims_pod_network_is_cleaned_up() {
    assert!(
        common::usable(),
        "needs root, containerd 1.6 and busybox-static"
    );
    let c = Containerd::start("vmnetkill");
    let cfg = vm_config(&c, "vm").expect("vm pods need qemu and the guest kernel (make guest)");
    let ns = format!("hullshim-{}", std::process::id());
    let host_if = format!("hsk{}", std::process::id() % 100000);
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    struct Gone(String, String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.1])
                .status();
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    sh(&format!("ip netns add {ns}"));
    let _gone = Gone(ns.clone(), host_if.clone());
    sh(&format!(
        "ip link add {host_if} type veth peer name eth0 netns {ns} && \
         ip -n {ns} addr add 10.203.0.2/24 dev eth0 && ip -n {ns} link set eth0 up"
    ));
    let with_ns = format!("network:/var/run/netns/{ns}");
    let r = c.run(
        &[
            "-d",
            "--runtime-config-path",
            cfg.to_str().unwrap(),
            "--with-ns",
            &with_ns,
        ],
        "n1",
        &["sleep", "1000"],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    c.wait_status("n1", "RUNNING");
    assert!(sh(&format!("tc -n {ns} qdisc show dev eth0")).contains("ingress"));
    for pid in c.shims() {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    // containerd notices the dead shim, runs its cleanup and drops the task.
    let gone = (0..200).any(|_| {
        c.status("n1") != "RUNNING" || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        }
    });
    assert!(gone, "task n1 still running after its shim died");
    let _ = c.ctr(&["task", "delete", "n1"]);
    assert_eq!(c.ctr(&["container", "rm", "n1"]).code, 0);
    assert!(!sh(&format!("ip -n {ns} -o link show")).contains("hulltap"));
    let qdiscs = sh(&format!("tc -n {ns} qdisc show dev eth0"));
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    c.assert_clean();
    assert_no_vm(&c);
}

/// `ctr run --device`: the host block device is a disk of the pod's VM, written through.
#[test]
fn ctr_device_is_a_disk_of_the_vm() {
    assert!(
        common::usable(),
        "needs root, containerd 1.6 and busybox-static"
    );
    let c = Containerd::start("vmdev");
    let cfg = vm_config(&c, "vm").expect("vm pods need qemu and the guest kernel (make guest)");
    let disk = hull_tests::Loop::new();
    let r = c.run(
        &[
            "--rm",
            "--runtime-config-path",
            cfg.to_str().unwrap(),
            "--device",
            &disk.dev,
        ],
        "d1",
        &[
            "sh",
            "-c",
            &format!(
                "echo hull-ctr-blk | dd of={} bs=512 count=1 conv=sync,fsync && echo ok",
                disk.dev
            ),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("ok"), "{}", r.out);
    assert_eq!(disk.head(12), b"hull-ctr-blk");
    c.assert_clean();
    assert_no_vm(&c);
}

/// The number a counting task last wrote to /count (through `ctr task exec`).
fn task_count(c: &Containerd, id: &str, n: &mut u32) -> u64 {
    *n += 1;
    let exec_id = format!("count{n}");
    let r = c.ctr(&["task", "exec", "--exec-id", &exec_id, id, "cat", "/count"]);
    assert_eq!(r.code, 0, "exec: {}", r.err);
    r.out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("/count: {:?}", r.out))
}

/// containerd's checkpoint of a vm task (`ctr c checkpoint --task`: the task is saved while
/// containerd pauses it, and runs on), then `ctr c restore --live` of that checkpoint under
/// the same id, after the original is gone: the counter goes on from the number it had at the
/// checkpoint, not from 1 and not from where the original got to.
#[test]
fn ctr_checkpoints_a_vm_task_and_restores_it_counting_on() {
    assert!(
        common::usable(),
        "needs root, containerd 1.6 and busybox-static"
    );
    let c = Containerd::start("vmckpt");
    let Some(cfg) = vm_config(&c, "vm") else {
        return;
    };
    // The pod's rootfs on a disk: a checkpointable pod.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("rootfs = \"disk\"\n");
    std::fs::write(&cfg, text).unwrap();
    let r = c.run(
        &["-d", "--runtime-config-path", cfg.to_str().unwrap()],
        "ck1",
        &[
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.1; done",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    c.wait_status("ck1", "RUNNING");
    let mut n = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Until the counter's first write, /count is not there: that counts as 0.
    let first_count = |n: &mut u32| {
        *n += 1;
        let exec_id = format!("count{n}");
        let r = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            "ck1",
            "cat",
            "/count",
        ]);
        r.out.trim().parse::<u64>().unwrap_or(0)
    };
    while first_count(&mut n) < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the counter never reached 10"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let before = task_count(&c, "ck1", &mut n);
    let r = c.ctr(&[
        "container",
        "checkpoint",
        "--task",
        "ck1",
        "hull.test/ck1:saved",
    ]);
    assert_eq!(r.code, 0, "checkpoint: {} {}", r.out, r.err);
    let after = task_count(&c, "ck1", &mut n);
    c.wait_status("ck1", "RUNNING");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let later = task_count(&c, "ck1", &mut n);
    assert!(
        later > after + 5,
        "the task runs on after the checkpoint: {after} -> {later}"
    );
    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "ck1"]).code, 0);
    c.wait_status("ck1", "STOPPED");
    assert_eq!(c.ctr(&["task", "delete", "ck1"]).code, 0);
    assert_eq!(c.ctr(&["container", "rm", "ck1"]).code, 0);
    assert_no_vm(&c);

    let r = c.ctr(&[
        "container",
        "restore",
        "--live",
        "ck1",
        "hull.test/ck1:saved",
    ]);
    assert_eq!(r.code, 0, "restore: {} {}", r.out, r.err);
    c.wait_status("ck1", "RUNNING");
    let restored = task_count(&c, "ck1", &mut n);
    assert!(
        restored >= before && restored < later,
        "restored at {restored}: the checkpoint was taken between {before} and {after}, the \
         original got to {later}"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        task_count(&c, "ck1", &mut n) > restored,
        "the restored task counts on"
    );
    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "ck1"]).code, 0);
    c.wait_status("ck1", "STOPPED");
    assert_eq!(c.ctr(&["task", "delete", "ck1"]).code, 0);
    assert_eq!(c.ctr(&["container", "rm", "ck1"]).code, 0);
    c.assert_clean();
    assert_no_vm(&c);
}
