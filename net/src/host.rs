//! The host side: what is in a pod's network namespace, and the taps that carry it to the VM.

use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{NetError, Result};
use crate::model::{Interface, IpNet, Neighbour, PodNetwork, Route};
use crate::netlink::{in_netns, Netlink};

/// The name of the tap that carries interface `index` of a pod.
pub fn tap_name(index: usize) -> String {
    format!("hulltap{index}")
}

/// What is in the pod's network namespace at `netns`: every link but `lo` with a global
/// address (its MAC, MTU, global addresses), the main table's routes through them (less the
/// ones the kernel derives from addresses), and their permanent neighbours.
pub fn scan(netns: &Path) -> Result<PodNetwork> {
    in_netns(netns, || {
        let mut nl = Netlink::open()?;
        scan_here(&mut nl)
    })
}

/// [`scan`] of the calling thread's namespace.
pub(crate) fn scan_here(nl: &mut Netlink) -> Result<PodNetwork> {
    let links = nl.links()?;
    let addrs = nl.global_addresses()?;
    let mut net = PodNetwork::default();
    let mut names = std::collections::HashMap::new();
    for l in links.iter().filter(|l| !l.loopback && l.mac.len() == 6) {
        let addresses: Vec<IpNet> = addrs
            .iter()
            .filter(|(i, _)| *i == l.index)
            .map(|(_, a)| *a)
            .collect();
        if addresses.is_empty() {
            continue;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&l.mac);
        names.insert(l.index, l.name.clone());
        net.interfaces.push(Interface {
            name: l.name.clone(),
            mac,
            mtu: l.mtu,
            addresses,
        });
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        for r in nl.dump(RouteNetlinkMessage::GetRoute(m), "list routes")? {
            let RouteNetlinkMessage::NewRoute(r) = r else {
                continue;
            };
            if let Some(route) = route_of(&r, &names) {
                net.routes.push(route);
            }
        }
    }
    for n in nl.dump(
        RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        "list neighbours",
    )? {
        let RouteNetlinkMessage::NewNeighbour(n) = n else {
            continue;
        };
        if n.header.state != NeighbourState::Permanent {
            continue;
        }
        let Some(device) = names.get(&n.header.ifindex) else {
            continue;
        };
        let mut address = None;
        let mut mac = None;
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    address = Some(IpAddr::V4(*ip))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                    address = Some(IpAddr::V6(*ip))
                }
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(l);
                    mac = Some(m);
                }
                _ => {}
            }
        }
        if let (Some(address), Some(mac)) = (address, mac) {
            net.neighbours.push(Neighbour {
                address,
                mac,
                device: device.clone(),
            });
        }
    }
    Ok(net)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// A main-table unicast route through one of `names`' links that the guest would not make
/// by itself from the addresses.
fn route_of(r: &RouteMessage, names: &std::collections::HashMap<u32, String>) -> Option<Route> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || r.header.kind != RouteType::Unicast
        || r.header.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let ipv6 = r.header.address_family == AddressFamily::Inet6;
    let mut route = Route {
        destination: None,
        gateway: None,
        device: String::new(),
        source: None,
        mtu: None,
        scope: r.header.scope.into(),
        ipv6,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                route.destination = route_ip(d).map(|addr| IpNet {
                    addr,
                    prefix: r.header.destination_prefix_length,
                })
            }
            RouteAttribute::Gateway(g) => route.gateway = route_ip(g),
            RouteAttribute::PrefSource(s) => route.source = route_ip(s),
            RouteAttribute::Oif(i) => route.device = names.get(i)?.clone(),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    if let RouteMetric::Mtu(mtu) = m {
                        route.mtu = Some(*mtu);
                    }
                }
            }
            _ => {}
        }
    }
    if route.device.is_empty() {
        return None;
    }
    if let Some(IpNet {
        addr: IpAddr::V6(d),
        ..
    }) = route.destination
    {
        // fe80::/64 and multicast: the guest's kernel makes its own.
        if d.segments()[0] & 0xffc0 == 0xfe80 || d.is_multicast() {
            return None;
        }
    }
    Some(route)
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens a new tap `name` in the calling thread's namespace: IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR, not persistent (it goes when the last descriptor closes).
fn open_tap(name: &str) -> Result<OwnedFd> {
    let what = || format!("create tap {name}");
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetError::io(
            what(),
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| NetError::io(format!("{}: open /dev/net/tun", what()), e))?;
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes the ifreq we pass, which lives across the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) } != 0 {
        return Err(NetError::io(what(), std::io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(tun))
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = index as i32;
    m.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// `tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0 action mirred egress
/// redirect dev TO`.
fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = from as i32;
    m.header.parent = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    // Priority 1, protocol ETH_P_ALL (network byte order).
    m.header.info = (1 << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut mirred = TcAction::default();
    mirred.tab = 1;
    mirred.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![mirred])),
    ]));
    m
}

/// In the namespace at `netns`: a tap `tap` with `iface`'s MTU, up, joined to `iface` by
/// ingress qdiscs on both and u32 match-all mirred egress redirects both ways. Returns the
/// tap's descriptor, which owns it (the tap is not persistent). On failure nothing stays.
pub fn attach_tap(netns: &Path, iface: &Interface, tap: &str) -> Result<OwnedFd> {
    let iface = iface.clone();
    let tap = tap.to_string();
    in_netns(netns, move || {
        let mut nl = Netlink::open()?;
        let fd = open_tap(&tap)?;
        let joined = (|| {
            let veth = nl.link(&iface.name)?.index;
            let t = nl.link(&tap)?.index;
            nl.set_link(t, None, None, Some(iface.mtu), &format!("the MTU of {tap}"))?;
            nl.set_up(t, true, &tap)?;
            for (dev, name) in [(veth, &iface.name), (t, &tap)] {
                nl.request(
                    RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(dev)),
                    NLM_F_CREATE | NLM_F_EXCL,
                    &format!("add an ingress qdisc on {name}"),
                )?;
            }
            for (from, to, what) in [
                (veth, t, (&iface.name, &tap)),
                (t, veth, (&tap, &iface.name)),
            ] {
                nl.request(
                    RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from, to)),
                    NLM_F_CREATE | NLM_F_EXCL,
                    &format!("redirect {} to {}", what.0, what.1),
                )?;
            }
            Ok(())
        })();
        match joined {
            Ok(()) => {
                tracing::debug!(iface = %iface.name, %tap, mtu = iface.mtu, "tap joined");
                Ok(fd)
            }
            Err(e) => {
                let _ = detach_here(&mut nl, &iface.name, &tap);
                Err(e)
            }
        }
    })
}

/// Undoes [`attach_tap`]: the ingress qdiscs (and their filters) on `iface` and the tap, and
/// the tap if it is still there. Whatever is already gone (namespace, link, qdisc) is fine.
pub fn detach_tap(netns: &Path, iface: &str, tap: &str) -> Result<()> {
    if !netns.exists() {
        return Ok(());
    }
    let (iface, tap) = (iface.to_string(), tap.to_string());
    match in_netns(netns, move || {
        let mut nl = Netlink::open()?;
        detach_here(&mut nl, &iface, &tap)
    }) {
        // A namespace file whose namespace is gone (an unmounted bind target) is fine.
        Err(NetError::Io { source, .. })
            if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) =>
        {
            Ok(())
        }
        r => r,
    }
}

fn detach_here(nl: &mut Netlink, iface: &str, tap: &str) -> Result<()> {
    let links = nl.links()?;
    let gone = |e: &NetError| {
        matches!(e, NetError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)))
    };
    for name in [iface, tap] {
        if let Some(l) = links.iter().find(|l| l.name == name) {
            let r = nl.request(
                RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(l.index)),
                0,
                &format!("remove the ingress qdisc of {name}"),
            );
            match r {
                Err(e) if !gone(&e) => return Err(e),
                _ => {}
            }
        }
    }
    if let Some(l) = links.iter().find(|l| l.name == tap) {
        let mut m = netlink_packet_route::link::LinkMessage::default();
        m.header.index = l.index;
        match nl.request(RouteNetlinkMessage::DelLink(m), 0, &format!("delete {tap}")) {
            Err(e) if !gone(&e) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A new network namespace kept alive by a bind mount on `path` (the file is created).
pub fn create_netns(path: &Path) -> Result<()> {
    File::create(path).map_err(|e| NetError::io(format!("create {}", path.display()), e))?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> Result<()> {
        // SAFETY: unshare(2) moves only this thread, which ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(NetError::io(
                "unshare(CLONE_NEWNET)",
                std::io::Error::last_os_error(),
            ));
        }
        bind_mount(Path::new("/proc/thread-self/ns/net"), &target)
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetError::io(
            "make a network namespace",
            std::io::Error::other("panicked"),
        ))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

fn bind_mount(src: &Path, dst: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
    let (s, d) = (c(src), c(dst));
    // SAFETY: both strings are NUL-terminated and live across the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(NetError::io(
            format!("bind {} on {}", src.display(), dst.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Removes a namespace made by [`create_netns`]: unmounts (detached) and unlinks `path`.
/// A missing path is fine.
pub fn remove_netns(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let p: PathBuf = path.to_path_buf();
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
        .unwrap_or_default();
    // SAFETY: a NUL-terminated path that lives across the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetError::io(format!("unmount {}", path.display()), e));
        }
    }
    std::fs::remove_file(path).map_err(|e| NetError::io(format!("remove {}", path.display()), e))
}
