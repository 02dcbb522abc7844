//! Pod networking through CRI + CNI: a private containerd whose CRI plugin runs Debian's CNI
//! plugins (bridge, host-local, portmap, loopback) on a private bridge with an IPv4 and an
//! IPv6 subnet and MTU 1400. Pods in POD network namespaces serve busybox `httpd`; the host
//! fetches from them, they reach a server on the host (IPv4 and IPv6), each other, and pods
//! of another handler; inside, eth0 has the pod's addresses and MTU, and /etc/resolv.conf
//! and /etc/hostname are CRI's. After the pods are removed nothing of them is left: no
//! namespace (nor a process in one), veth, tap, ingress qdisc, VM or shim.
//!
//! `hull` (host isolation) runs with a runc pod as its peer; `hull-vm` (a VM per pod) with a
//! `hull` pod as its peer.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

use common::Containerd;
use hull_tests::net::{self, LineServer, Subnet};
use serde_json::{json, Value};

#[test]
fn cri_network_with_the_hull_handler() {
    scenario("hull", "runc");
}

/// The target of issue 14: a vm pod's containers get the pod's CNI network.
#[test]
fn cri_network_with_the_hull_vm_handler() {
    scenario("hull-vm", "hull");
}

/// The CRI client (tests/support/cri_net.py), one JSON request and answer per line.
struct Cri {
    child: Child,
    answers: mpsc::Receiver<String>,
}

/// A running pod: its id, addresses and network namespace.
struct Pod {
    id: String,
    v4: IpAddr,
    v6: IpAddr,
    netns: PathBuf,
    /// The namespace's inode (to find processes still in it after it is unmounted).
    netns_ino: u64,
    /// The container serving httpd.
    web: String,
}

impl Cri {
    fn start(c: &Containerd) -> Self {
        common::assert_python_cri_client();
        let logs = c.dir.join("pod-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", "300", "python3"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/cri_net.py"
            ))
            .arg(&c.sock)
            .arg(format!("/{}", c.cgroup_parent))
            .arg(&logs);
        let (child, answers) = common::spawn_lines(cmd);
        Self { child, answers }
    }

    /// One request; panics with the client's error when it fails.
    fn call(&mut self, req: Value) -> Value {
        let a = self.try_call(&req);
        assert!(a["ok"] == true, "CRI {req}: {}", a["error"]);
        a
    }

    fn try_call(&mut self, req: &Value) -> Value {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{req}").expect("write to the CRI client");
        stdin.flush().unwrap();
        let line = self
            .answers
            .recv_timeout(Duration::from_secs(150))
            .unwrap_or_else(|_| panic!("CRI client gave no answer to {req}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("CRI client said {line:?}: {e}"))
    }

    /// ExecSync of `sh -c SCRIPT` in container `id`: exit code and stdout.
    fn sh(&mut self, id: &str, script: &str) -> (i64, String) {
        let a =
            self.call(json!({"op": "exec", "id": id, "cmd": ["sh", "-c", script], "timeout": 20}));
        (
            a["exit_code"].as_i64().unwrap(),
            a["stdout"].as_str().unwrap().to_string(),
        )
    }

    /// ExecSync that must succeed: its stdout.
    fn sh_ok(&mut self, id: &str, script: &str) -> String {
        let (code, out) = self.sh(id, script);
        assert_eq!(code, 0, "`{script}` in {id}: exit {code}, stdout {out:?}");
        out
    }

    /// A pod of `handler` whose container serves `/index.html` = `marker` with httpd on :80.
    fn web_pod(&mut self, name: &str, handler: &str, net: &Subnet) -> Pod {
        let a = self.call(json!({
            "op": "pod", "name": name, "handler": handler, "hostname": name,
            "dns": {"servers": [dns_server(net)], "searches": ["hull.test"]},
        }));
        let ips: Vec<IpAddr> = a["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().parse().unwrap())
            .collect();
        let v4 = *ips
            .iter()
            .find(|i| i.is_ipv4())
            .unwrap_or_else(|| panic!("pod {name}: no IPv4 address in {ips:?}"));
        let v6 = *ips
            .iter()
            .find(|i| i.is_ipv6())
            .unwrap_or_else(|| panic!("pod {name}: no IPv6 address in {ips:?}"));
        let id = a["id"].as_str().unwrap().to_string();
        let netns = PathBuf::from(a["netns"].as_str().unwrap());
        let netns_ino = net::ns_inode(&netns)
            .unwrap_or_else(|| panic!("pod {name}: network namespace {netns:?} not found"));
        let serve = format!(
            "mkdir -p /www && echo {} > /www/index.html && exec httpd -f -p 80 -h /www",
            marker(name)
        );
        let w =
            self.call(json!({"op": "run", "pod": id, "name": "web", "cmd": ["sh", "-c", serve]}));
        Pod {
            id,
            v4,
            v6,
            netns,
            netns_ino,
            web: w["id"].as_str().unwrap().to_string(),
        }
    }

    /// What `nc IP 80` in container `from` gets for `GET /index.html` (its body or the error).
    fn fetch_in(&mut self, from: &str, to: IpAddr) -> String {
        // Bounded retries: the peer's httpd may still be starting.
        let script = format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do \
             r=$(printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc {to} 80) && [ -n \"$r\" ] \
             && echo \"$r\" && exit 0; sleep 1; done; exit 1"
        );
        self.sh(from, &script).1
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn marker(pod: &str) -> String {
    format!("hull-net-served-by-{pod}")
}

fn dns_server(net: &Subnet) -> String {
    format!("10.217.{}.53", net.n)
}

/// Pod `from` (container `ctr`) sends a line to a server on the host at `addr`.
fn pod_reaches_host(cri: &mut Cri, ctr: &str, addr: IpAddr, from: IpAddr) {
    let server = LineServer::bind(addr);
    let port = server.port();
    let accept = std::thread::spawn(move || server.accept_line(Duration::from_secs(30)));
    let (code, out) = cri.sh(ctr, &format!("echo hi-from-pod | nc {addr} {port}"));
    let got = accept.join().unwrap();
    let Some((peer, line)) = got else {
        panic!("no connection from the pod to {addr}:{port} (nc exit {code}: {out:?})")
    };
    assert_eq!(line, "hi-from-pod", "from {peer}");
    assert_eq!(peer.ip(), from, "the host saw the pod as {peer}");
    assert_eq!(out.trim(), "bye", "the pod did not get the host's answer");
}

/// The tests of this file one at a time: run side by side, a finishing one has taken a
/// running one's bridge with it (seen 3 runs in 4; not understood yet: see the closing note
/// of issue 15), and they share CRI's `k8s.io` namespace names and portmap's chains.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A private containerd with CRI and CNI on `net`, vm configs where `handlers` ask for
/// hull-vm, and the CRI client, once the CNI network is ready.
fn cri_on(net: &Subnet, handler: &str, peer: &str) -> (Containerd, Cri) {
    let c = Containerd::start_cri(&format!("crinet-{handler}-{peer}"));
    if [handler, peer].contains(&"hull-vm") {
        c.write_vm_handler_config();
    }
    c.use_cni(net);
    let mut cri = Cri::start(&c);
    cri.call(json!({"op": "network_ready"}));
    (c, cri)
}

/// CRI `devices` in a ContainerConfig: the host block device is the container's (a disk of
/// the pod's VM for hull-vm); what it writes is on the host device; "r" refuses writes.
fn cri_devices(handler: &str) {
    let _one = one_at_a_time();
    assert!(
        common::usable(),
        "needs root, containerd 1.6 and busybox-static"
    );
    let net = Subnet::reserve();
    let mut namespaces = net::NamespaceFiles::default();
    let (c, mut cri) = cri_on(&net, handler, handler);
    let disk = hull_tests::Loop::new();
    let pod = cri.call(json!({
        "op": "pod", "name": "dev-a", "handler": handler, "hostname": "dev-a",
        "dns": {"servers": [dns_server(&net)], "searches": ["hull.test"]},
    }));
    let id = pod["id"].as_str().unwrap().to_string();
    namespaces
        .0
        .push(pod["netns"].as_str().unwrap_or_default().into());
    let device = |perm: &str| json!([{"container_path": "/dev/xdisk", "host_path": disk.dev, "permissions": perm}]);
    // The read-only container first: in a vm pod its device fills a disk slot.
    let ro = cri.call(json!({"op": "run", "pod": id, "name": "ro", "cmd": ["sleep", "1000"], "devices": device("r")}));
    let ro = ro["id"].as_str().unwrap().to_string();
    let out = cri.sh_ok(
        &ro,
        "echo x | dd of=/dev/xdisk 2>/dev/null && echo wrote || echo refused",
    );
    assert!(out.contains("refused"), "{out}");
    let rw = cri.call(json!({"op": "run", "pod": id, "name": "rw", "cmd": ["sleep", "1000"], "devices": device("rwm")}));
    let rw = rw["id"].as_str().unwrap().to_string();
    cri.sh_ok(
        &rw,
        "echo hull-cri-blk | dd of=/dev/xdisk bs=512 count=1 conv=sync,fsync",
    );
    assert_eq!(disk.head(12), b"hull-cri-blk");
    let out = cri.sh_ok(&ro, "head -c 12 /dev/xdisk");
    assert_eq!(
        out, "hull-cri-blk",
        "the read-only container reads what the other wrote"
    );
    cri.call(json!({"op": "rmpod", "pod": id}));
    drop(cri);
    c.assert_clean();
}

#[test]
fn cri_devices_with_the_hull_handler() {
    cri_devices("hull");
}

/// The app containers of a CRI pod are created after its VM started: their devices fill the
/// VM's empty disk slots.
#[test]
fn cri_devices_with_the_hull_vm_handler() {
    cri_devices("hull-vm");
}

fn scenario(handler: &str, peer: &str) {
    let _one = one_at_a_time();
    assert!(
        common::usable(),
        "needs root, containerd 1.6 and busybox-static"
    );
    let net = Subnet::reserve();
    // Dropped after containerd: the pods' namespaces a failed test left.
    let mut namespaces = net::NamespaceFiles::default();
    let links_before = net::host_links(net::TAP_PREFIX);
    let qdiscs_before = net::ingress_qdiscs_in_netns("/proc/self/ns/net".as_ref());
    let (c, mut cri) = cri_on(&net, handler, peer);
    let vm_root = c.hull_root.to_string_lossy().into_owned();

    let a = cri.web_pod("net-a", handler, &net);
    namespaces.0.push(a.netns.clone());
    // The host fetches from the pod's IPv4 address.
    let body = net::http_get(
        SocketAddr::new(a.v4, 80),
        "/index.html",
        Duration::from_secs(30),
    );
    assert_eq!(body.trim(), marker("net-a"));

    // Inside the pod: eth0 with the pod's IPv6 address and the network's MTU; CRI's DNS
    // and hostname.
    let addrs = cri.sh_ok(&a.web, "ip -6 addr show dev eth0");
    assert!(
        addrs.contains(&format!("inet6 {}/64", a.v6)),
        "{} not on eth0: {addrs}",
        a.v6
    );
    let mtu = cri.sh_ok(&a.web, "cat /sys/class/net/eth0/mtu");
    assert_eq!(mtu.trim(), net::MTU.to_string(), "eth0's MTU");
    let resolv = cri.sh_ok(&a.web, "cat /etc/resolv.conf");
    assert!(
        resolv.contains(&format!("nameserver {}", dns_server(&net)))
            && resolv.contains("search hull.test"),
        "not CRI's resolv.conf: {resolv:?}"
    );
    assert_eq!(cri.sh_ok(&a.web, "cat /etc/hostname").trim(), "net-a");
    assert_eq!(cri.sh_ok(&a.web, "hostname").trim(), "net-a");

    // The pod reaches servers on the host, at the bridge's addresses (IPv4, IPv6).
    net.wait_for_address(net.gw4());
    pod_reaches_host(&mut cri, &a.web, net.gw4(), a.v4);
    net.wait_for_address(net.gw6());
    pod_reaches_host(&mut cri, &a.web, net.gw6(), a.v6);

    // A second pod of the same handler and the first reach each other.
    let b = cri.web_pod("net-b", handler, &net);
    namespaces.0.push(b.netns.clone());
    let got = cri.fetch_in(&b.web, a.v4);
    assert!(got.contains(&marker("net-a")), "b -> a: {got:?}");
    let got = cri.fetch_in(&a.web, b.v4);
    assert!(got.contains(&marker("net-b")), "a -> b: {got:?}");

    // A pod of the peer handler and the first reach each other.
    let p = cri.web_pod("net-peer", peer, &net);
    namespaces.0.push(p.netns.clone());
    let got = cri.fetch_in(&p.web, a.v4);
    assert!(
        got.contains(&marker("net-a")),
        "{peer} -> {handler}: {got:?}"
    );
    let got = cri.fetch_in(&a.web, p.v4);
    assert!(
        got.contains(&marker("net-peer")),
        "{handler} -> {peer}: {got:?}"
    );
    // And over IPv6.
    let got = cri.fetch_in(&p.web, a.v6);
    assert!(
        got.contains(&marker("net-a")),
        "{peer} -> {handler} (IPv6): {got:?}"
    );

    let pods = [a, b, p];
    for pod in &pods {
        cri.call(json!({"op": "rmpod", "pod": pod.id}));
    }
    let left = cri.call(json!({"op": "list"}));
    assert_eq!(left["pods"], json!([]), "pods left");
    assert_eq!(left["containers"], json!([]), "containers left");
    drop(cri);

    c.assert_clean();
    for pod in &pods {
        assert!(
            !pod.netns.exists(),
            "pod {}'s network namespace {} left",
            pod.id,
            pod.netns.display()
        );
        let holders = net::processes_in_netns(pod.netns_ino);
        assert!(
            holders.is_empty(),
            "processes left in pod {}'s network namespace: {:?}",
            pod.id,
            net::describe(&holders)
        );
    }
    let vms = common::processes_mentioning(&vm_root);
    assert!(vms.is_empty(), "VMs left: {:?}", net::describe(&vms));
    assert_eq!(
        net.bridge_ports(),
        Vec::<String>::new(),
        "veths left on the bridge"
    );
    let mut taps = net::host_links(net::TAP_PREFIX);
    taps.retain(|t| !links_before.contains(t));
    assert!(
        taps.is_empty(),
        "taps left in the host's namespace: {taps:?}"
    );
    let mut qdiscs = net::ingress_qdiscs_in_netns("/proc/self/ns/net".as_ref());
    qdiscs.retain(|q| !qdiscs_before.contains(q));
    assert!(qdiscs.is_empty(), "ingress qdiscs left: {qdiscs:?}");
    // host-local released every address (only its bookkeeping files are left).
    let leases: Vec<String> = std::fs::read_dir(c.dir.join("cni-ipam").join(net.network()))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains('.') || n.contains(':'))
                .filter(|n| !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leases.is_empty(), "CNI addresses not released: {leases:?}");
}
