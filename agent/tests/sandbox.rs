//! Sandbox-level requests: set-up (hostname, DNS, storages), guest details, networking, OOM
//! events and the clean shutdown of DestroySandbox.

mod common;

use std::time::Duration;

use common::TestAgent;
use hull_agent_client::{PodNetwork, Storage};
use hull_net::IpNet;

fn nsenter(agent_pid: u32, args: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .arg("-t")
        .arg(agent_pid.to_string())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn setup_network_and_destroy() {
    let mut agent = TestAgent::start();
    let c = agent.client();
    let pid = agent.agent_pid().expect("agent pid");

    c.setup_sandbox(
        "sb1",
        "pod-one",
        &["nameserver 10.0.0.53".into(), "search example.org".into()],
        vec![Storage {
            source: "tmpfs".into(),
            fstype: "tmpfs".into(),
            options: vec!["nosuid".into(), "size=1m".into()],
            mount_point: "sb1/scratch".into(),
            ..Default::default()
        }],
    )
    .unwrap();
    assert_eq!(nsenter(pid, &["-u", "hostname"]).trim(), "pod-one");
    let resolv = std::fs::read_to_string(agent.dir.path().join("resolv.conf")).unwrap();
    assert_eq!(resolv, "nameserver 10.0.0.53\nsearch example.org\n");
    let scratch = agent.shared.canonicalize().unwrap().join("sb1/scratch");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        mountinfo.contains(&format!(" {} ", scratch.display())),
        "no tmpfs at {scratch:?}"
    );
    // the mount stays inside the agent's namespace
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(&format!(" {} ", scratch.display())));
    // a bad hostname is refused
    assert!(c.setup_sandbox("sb1", "a b/c", &[], vec![]).is_err());

    let d = c.guest_details().unwrap();
    assert!(d.cpus >= 1 && d.mem_total_bytes > 0 && !d.kernel_release.is_empty());
    assert_eq!(
        d.allowed_roots,
        vec![agent.shared.canonicalize().unwrap().display().to_string()]
    );

    // The pod's network, in the agent's (private) network namespace: a veth end stands for
    // the VM's NIC, found by its device MAC, and becomes the pod's eth0.
    nsenter(
        pid,
        &[
            "-n",
            "ip",
            "link",
            "add",
            "nic0",
            "address",
            "02:68:75:6c:00:00",
            "type",
            "veth",
            "peer",
            "name",
            "peer0",
        ],
    );
    let mac = [0x0a, 0x58, 0x0a, 0x09, 0x00, 0x05];
    let network = PodNetwork {
        interfaces: vec![hull_net::Interface {
            name: "eth0".into(),
            mac,
            mtu: 1400,
            addresses: vec![
                IpNet {
                    addr: "10.9.0.5".parse().unwrap(),
                    prefix: 24,
                },
                IpNet {
                    addr: "fd00:9::5".parse().unwrap(),
                    prefix: 64,
                },
            ],
        }],
        routes: vec![hull_net::Route {
            destination: None,
            gateway: Some("10.9.0.1".parse().unwrap()),
            device: "eth0".into(),
            source: None,
            mtu: None,
            scope: 0,
            ipv6: false,
        }],
        neighbours: vec![],
    };
    let device = [0x02, 0x68, 0x75, 0x6c, 0x00, 0x00];
    // The agent (PID 1 of its namespaces here) moves the NIC into the pod's network
    // namespace, which it made at start in its state dir, and sets it up there.
    let pod_netns = format!(
        "--net={}",
        agent.dir.path().join("state/pod-netns").display()
    );
    let in_pod_netns = |args: &[&str]| {
        let mut a = vec!["-m", "nsenter", pod_netns.as_str()];
        a.extend_from_slice(args);
        nsenter(pid, &a)
    };
    let applied = c.setup_network(&network, &[device]).unwrap();
    assert_eq!(applied.interfaces, network.interfaces);
    let link = in_pod_netns(&["ip", "-o", "link", "show", "eth0"]);
    assert!(
        link.contains("mtu 1400") && link.contains("0a:58:0a:09:00:05"),
        "{link}"
    );
    let addrs = in_pod_netns(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(
        addrs.contains("10.9.0.5/24") && addrs.contains("fd00:9::5/64"),
        "{addrs}"
    );
    let routes = in_pod_netns(&["ip", "-4", "route", "show"]);
    assert!(routes.contains("default via 10.9.0.1 dev eth0"), "{routes}");
    // A NIC no link has is refused, naming it.
    let mut other = network.clone();
    other.interfaces[0].mac = [0x02, 0, 0, 0, 0, 0x98];
    let e = c
        .setup_network(&other, &[[0x02, 0, 0, 0, 0, 0x99]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("02:00:00:00:00:99"), "{e}");

    // a running container, then DestroySandbox powers the (namespace's) machine off
    let rootfs = agent.busybox_rootfs("c1");
    let spec = agent.spec("c1", &["/bin/sleep", "600"], false, &["CAP_KILL"]);
    c.create_container("c1", &spec, &rootfs, vec![]).unwrap();
    c.start_container("c1").unwrap();
    c.destroy_sandbox("sb1", true).unwrap();
    assert!(
        agent.exited_within(Duration::from_secs(10)),
        "agent still running after DestroySandbox:\n{}",
        agent.log()
    );
}

#[test]
fn oom_event_reaches_the_host() {
    let agent = TestAgent::start();
    let c = agent.client();
    let rootfs = agent.busybox_rootfs("hog");
    let mut spec: serde_json::Value = serde_json::from_slice(&agent.spec(
        "hog",
        &[
            "/bin/sh",
            "-c",
            "x=0123456789abcdef; while true; do x=$x$x; done",
        ],
        false,
        &["CAP_KILL"],
    ))
    .unwrap();
    spec["linux"]["resources"] =
        serde_json::json!({"memory": {"limit": 16777216, "swap": 16777216}});
    c.create_container("hog", &serde_json::to_vec(&spec).unwrap(), &rootfs, vec![])
        .unwrap();
    c.start_container("hog").unwrap();
    assert_eq!(c.get_oom_event(Duration::from_secs(30)).unwrap(), "hog");
    assert_eq!(
        c.wait_process("hog", "", Duration::from_secs(20)).unwrap(),
        128 + libc::SIGKILL
    );
    c.remove_container("hog").unwrap();
}

#[test]
fn guest_init_mounts_as_pid_1() {
    // The agent mounts its own /run and /tmp (and /dev): its socket must live elsewhere,
    // and the target dir may itself be under /tmp (a clone there), so use /var/tmp.
    let base = std::path::Path::new("/var/tmp");
    let mut agent = TestAgent::start_in(base, None, &["--guest-init=on"]);
    let c = agent.client();
    assert!(c.check().unwrap());
    let pid = agent.agent_pid().expect("agent pid");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    for (point, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
        ("/run", "tmpfs"),
        ("/tmp", "tmpfs"),
    ] {
        let found = mountinfo.lines().any(|l| {
            let (left, right) = l.split_once(" - ").unwrap();
            left.split(' ').nth(4) == Some(point) && right.split(' ').next() == Some(fstype)
        });
        assert!(found, "no {fstype} on {point}:\n{mountinfo}");
    }
    assert!(c.guest_details().unwrap().cgroup_v2);
    // none of it leaked to the host
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 ")));
    c.destroy_sandbox("guest", true).unwrap();
    assert!(
        agent.exited_within(Duration::from_secs(10)),
        "{}",
        agent.log()
    );
}
