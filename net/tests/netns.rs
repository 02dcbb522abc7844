//! hull-net on real kernel objects: namespaces, veth pairs, taps, tc filters. Needs root (and
//! fails saying so without it).

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_net::{Interface, IpNet, Neighbour, PodNetwork, Route};

/// Two fresh namespaces ("pod" and "peer") in a temp dir, removed on drop.
struct Nets {
    _dir: tempfile::TempDir,
    pod: PathBuf,
    peer: PathBuf,
}

impl Nets {
    fn new() -> Nets {
        assert!(
            nix_is_root(),
            "hull-net's tests make network namespaces: run them as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let (pod, peer) = (dir.path().join("pod"), dir.path().join("peer"));
        hull_net::create_netns(&pod).unwrap();
        hull_net::create_netns(&peer).unwrap();
        Nets {
            _dir: dir,
            pod,
            peer,
        }
    }
}

impl Drop for Nets {
    fn drop(&mut self) {
        let _ = hull_net::remove_netns(&self.pod);
        let _ = hull_net::remove_netns(&self.peer);
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `PROGRAM ARGS` in the namespace at `ns`; panics with its output on failure.
fn nsenter(ns: &Path, program: &str, args: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg(program)
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("nsenter {program} (util-linux, iproute2, procps): {e}"));
    assert!(out.status.success(), "{program} {args}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(ns: &Path, args: &str) -> String {
    nsenter(ns, "ip", args)
}

fn tc(ns: &Path, args: &str) -> String {
    nsenter(ns, "tc", args)
}

/// A veth pair: `eth0` in the pod namespace (what CNI leaves there), `peer0` in the peer.
fn veth(n: &Nets) {
    ip(
        &n.pod,
        &format!(
            "link add eth0 address 0a:58:0a:09:00:05 mtu 1400 type veth peer name peer0 netns {}",
            n.peer.display()
        ),
    );
}

fn pod_network() -> PodNetwork {
    PodNetwork {
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: [0x0a, 0x58, 0x0a, 0x09, 0x00, 0x05],
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
        routes: vec![
            Route {
                destination: Some(IpNet {
                    addr: "10.10.0.0".parse().unwrap(),
                    prefix: 16,
                }),
                gateway: Some("10.9.0.1".parse().unwrap()),
                device: "eth0".into(),
                source: None,
                mtu: Some(1300),
                scope: 0,
                ipv6: false,
            },
            Route {
                destination: None,
                gateway: Some("10.9.0.1".parse().unwrap()),
                device: "eth0".into(),
                source: None,
                mtu: None,
                scope: 0,
                ipv6: false,
            },
            Route {
                destination: None,
                gateway: Some("fd00:9::1".parse().unwrap()),
                device: "eth0".into(),
                source: None,
                mtu: None,
                scope: 0,
                ipv6: true,
            },
        ],
        neighbours: vec![Neighbour {
            address: "10.9.0.1".parse::<IpAddr>().unwrap(),
            mac: [0x0a, 0x58, 0x0a, 0x09, 0x00, 0x01],
            device: "eth0".into(),
        }],
    }
}

/// Sorted, so that order does not matter.
fn normalised(mut n: PodNetwork) -> PodNetwork {
    n.routes.sort_by_key(|r| format!("{r:?}"));
    n
}

/// The MAC a hypervisor gives the VM's NIC.
const NIC_MAC: [u8; 6] = [0x02, 0x68, 0x75, 0x6c, 0x00, 0x00];

/// The "NIC": a veth end `nic0` in the pod namespace with [`NIC_MAC`].
fn nic(n: &Nets) {
    ip(
        &n.pod,
        &format!(
            "link add nic0 address 02:68:75:6c:00:00 type veth peer name peer0 netns {}",
            n.peer.display()
        ),
    );
}

#[test]
fn configure_then_scan_round_trips_and_a_second_run_is_harmless() {
    let n = Nets::new();
    nic(&n);
    let want = pod_network();
    let device = NIC_MAC;
    let pod = n.pod.clone();
    let w = want.clone();
    let applied = in_ns(&pod, move || hull_net::configure(&w, &[device])).unwrap();
    assert_eq!(normalised(applied), normalised(want.clone()));
    let found = hull_net::scan(&n.pod).unwrap();
    assert_eq!(normalised(found), normalised(want.clone()));
    assert!(ip(&n.pod, "-o link show lo").contains("UP"));
    // Again: found by its new MAC, nothing fails, the same network results.
    let w = want.clone();
    in_ns(&pod, move || hull_net::configure(&w, &[device])).unwrap();
    let found = hull_net::scan(&n.pod).unwrap();
    assert_eq!(normalised(found), normalised(want.clone()));
    // A NIC nobody has: an error naming its MAC.
    let w = want.clone();
    let mut other = w.clone();
    other.interfaces[0].mac = [0x02, 0, 0, 0, 0, 0x98];
    let e = in_ns(&pod, move || {
        hull_net::configure(&other, &[[0x02, 0, 0, 0, 0, 0x99]])
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("02:00:00:00:00:99"), "{e}");
}

#[test]
fn configure_leaves_ipv6_out_cleanly_where_the_link_has_none() {
    let n = Nets::new();
    nic(&n);
    nsenter(&n.pod, "sysctl", "-qw net.ipv6.conf.nic0.disable_ipv6=1");
    let want = pod_network();
    let w = want.clone();
    let applied = in_ns(&n.pod, move || hull_net::configure(&w, &[NIC_MAC])).unwrap();
    let mut v4 = want;
    v4.interfaces[0].addresses.retain(|a| a.addr.is_ipv4());
    v4.routes.retain(|r| !r.ipv6);
    assert_eq!(normalised(applied), normalised(v4.clone()));
    assert_eq!(normalised(hull_net::scan(&n.pod).unwrap()), normalised(v4));
}

/// Runs `f` on a thread in the namespace at `ns` (configure works where it is called).
fn in_ns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> hull_net::Result<T> + Send + 'static,
) -> hull_net::Result<T> {
    hull_net::netlink::in_netns(ns, f)
}

#[test]
fn scan_finds_what_cni_leaves_and_skips_lo_and_bare_links() {
    let n = Nets::new();
    veth(&n);
    ip(&n.pod, "link add bare type veth peer name bare-peer");
    ip(&n.pod, "addr add 10.9.0.5/24 dev eth0");
    ip(&n.pod, "addr add fd00:9::5/64 dev eth0 nodad");
    ip(&n.pod, "link set eth0 up");
    ip(&n.peer, "link set peer0 up");
    ip(&n.pod, "link set lo up");
    ip(&n.pod, "route add 10.10.0.0/16 via 10.9.0.1 mtu 1300");
    ip(&n.pod, "route add default via 10.9.0.1");
    ip(&n.pod, "-6 route add default via fd00:9::1 dev eth0");
    ip(
        &n.pod,
        "neigh add 10.9.0.1 lladdr 0a:58:0a:09:00:01 dev eth0 nud permanent",
    );
    let found = hull_net::scan(&n.pod).unwrap();
    assert_eq!(normalised(found), normalised(pod_network()));
    // What was left out was there: lo's and eth0's link-local addresses, the bare link.
    assert!(ip(&n.pod, "-o addr show lo").contains("127.0.0.1"));
    assert!(ip(&n.pod, "-o link show bare").contains("bare"));
}

#[test]
fn a_tap_joined_to_the_veth_passes_frames_both_ways_and_goes_away() {
    let n = Nets::new();
    veth(&n);
    ip(&n.pod, "link set eth0 up");
    ip(&n.peer, "link set peer0 up");
    let iface = pod_network().interfaces.remove(0);
    let tap = hull_net::tap_name(0);
    let fd = hull_net::attach_tap(&n.pod, &iface, &tap).unwrap();
    let link = ip(&n.pod, &format!("-o link show {tap}"));
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    for dev in ["eth0", tap.as_str()] {
        let qdiscs = tc(&n.pod, &format!("qdisc show dev {dev}"));
        assert!(qdiscs.contains("qdisc ingress ffff:"), "{dev}: {qdiscs}");
    }
    let filters = tc(&n.pod, "filter show dev eth0 ingress");
    assert!(
        filters.contains("u32") && filters.contains(&format!("Egress Redirect to device {tap}")),
        "{filters}"
    );
    let filters = tc(&n.pod, &format!("filter show dev {tap} ingress"));
    assert!(
        filters.contains("u32") && filters.contains("Egress Redirect to device eth0"),
        "{filters}"
    );

    // The VMM's header size: virtio 1.0's 12-byte virtio_net_hdr (TUNSETVNETHDRSZ).
    const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
    const HDR: usize = 12;
    let hdr_len = HDR as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from a pointer to `hdr_len`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) };
    assert_eq!(r, 0, "TUNSETVNETHDRSZ: {}", std::io::Error::last_os_error());

    // A frame from the peer's side arrives on the tap, behind a virtio-net header.
    let frame = test_frame();
    let peer_sock = packet_socket(&n.peer, "peer0");
    let tap_file = std::fs::File::from(fd);
    set_nonblocking(&tap_file);
    send(peer_sock.as_raw_fd(), &frame);
    let got = recv_matching(tap_file.as_raw_fd(), |b| {
        b.len() == HDR + frame.len() && b[HDR..] == frame[..]
    });
    assert!(got, "the peer's frame did not reach the tap");
    // A frame the VM writes on the tap leaves through the veth to the peer.
    let mut with_hdr = vec![0u8; HDR];
    with_hdr.extend_from_slice(&frame);
    send(tap_file.as_raw_fd(), &with_hdr);
    let got = recv_matching(peer_sock.as_raw_fd(), |b| b == frame.as_slice());
    assert!(got, "the tap's frame did not reach the peer");

    // The tap is not persistent: its last descriptor takes it along.
    drop(tap_file);
    assert!(!ip(&n.pod, "-o link show").contains(&tap));
    hull_net::detach_tap(&n.pod, "eth0", &tap).unwrap();
    let qdiscs = tc(&n.pod, "qdisc show dev eth0");
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    // Twice, on a namespace file no longer mounted, on one that is gone: fine.
    hull_net::detach_tap(&n.pod, "eth0", &tap).unwrap();
    hull_net::remove_netns(&n.pod).unwrap();
    std::fs::File::create(&n.pod).unwrap();
    hull_net::detach_tap(&n.pod, "eth0", &tap).unwrap();
    std::fs::remove_file(&n.pod).unwrap();
    hull_net::detach_tap(&n.pod, "eth0", &tap).unwrap();
}

#[test]
fn a_tap_that_cannot_be_joined_leaves_nothing_of_its_own() {
    let n = Nets::new();
    veth(&n);
    let iface = pod_network().interfaces.remove(0);
    let tap = hull_net::tap_name(3);
    // No such interface: the error names it and the namespace; no tap stays.
    let mut missing = iface.clone();
    missing.name = "nosuch0".into();
    let e = hull_net::attach_tap(&n.pod, &missing, &tap)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nosuch0") && e.contains(&n.pod.display().to_string()),
        "{e}"
    );
    assert!(!ip(&n.pod, "-o link show").contains(&tap));
    // An ingress qdisc someone else put on the interface: refused, and theirs is kept.
    tc(&n.pod, "qdisc add dev eth0 ingress");
    let e = hull_net::attach_tap(&n.pod, &iface, &tap)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ingress qdisc on eth0"), "{e}");
    assert!(!ip(&n.pod, "-o link show").contains(&tap));
    assert!(tc(&n.pod, "qdisc show dev eth0").contains("ingress"));
}

#[test]
fn a_made_namespace_is_new_and_goes_when_removed() {
    let n = Nets::new();
    let mine = std::fs::metadata("/proc/self/ns/net").unwrap();
    let made = std::fs::metadata(&n.pod).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_ne!(mine.ino(), made.ino());
    let lo = ip(&n.pod, "-o link show lo");
    assert!(
        lo.contains("state DOWN"),
        "a new namespace's lo is down: {lo}"
    );
    // Usable: a link made in it is there, and only there.
    ip(&n.pod, "link add hullprobe0 type veth peer name hullprobe1");
    assert!(ip(&n.pod, "-o link show").contains("hullprobe0"));
    let host = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&host.stdout).contains("hullprobe0"));
    hull_net::remove_netns(&n.pod).unwrap();
    assert!(!n.pod.exists());
    hull_net::remove_netns(&n.pod).unwrap();
}

fn test_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6]; // broadcast
    f.extend_from_slice(&[0x0a, 0x58, 0x0a, 0x09, 0x00, 0x77]);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.extend_from_slice(b"hull-net test frame, padded to the minimum size..");
    f
}

/// An AF_PACKET socket bound to `dev` in namespace `ns`.
fn packet_socket(ns: &Path, dev: &str) -> std::os::fd::OwnedFd {
    let dev = dev.to_string();
    hull_net::netlink::in_netns(ns, move || {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new descriptor nobody else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0);
        // SAFETY: an all-zero sockaddr_ll is valid; bind reads it for its length.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` lives across the call and its size is passed.
        let r = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        Ok(owned)
    })
    .unwrap()
}

fn set_nonblocking(f: &std::fs::File) {
    // SAFETY: fcntl on a descriptor `f` holds.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn send(fd: i32, buf: &[u8]) {
    // SAFETY: `buf` is valid for its length.
    let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    assert_eq!(r, buf.len() as isize, "{}", std::io::Error::last_os_error());
}

/// Reads from non-blocking `fd` for up to 2 s until a read satisfies `want`.
fn recv_matching(fd: i32, want: impl Fn(&[u8]) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 65536];
    while std::time::Instant::now() < deadline {
        // SAFETY: `buf` is valid for its length.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r > 0 && want(&buf[..r as usize]) {
            return true;
        }
        if r <= 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    false
}
