//! The guest side: the pod's network set up again on the VM's NICs, in the calling thread's
//! network namespace ([`configure`]) or in the pod's, which the pod's containers join
//! ([`configure_in`]).

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{NetError, Result};
use crate::model::{PodNetwork, Route};
use crate::netlink::{in_netns, mac_string, Netlink};

/// Whether this kernel has IPv6 and it is not disabled.
pub fn ipv6_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .is_ok_and(|s| s.trim() == "0")
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// An "already there" answer, which a second run of the same set-up gets.
fn exists(e: &NetError) -> bool {
    matches!(e, NetError::Io { source, .. } if source.raw_os_error() == Some(libc::EEXIST))
}

fn tolerate_exists(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if exists(&e) => Ok(()),
        r => r,
    }
}

/// Moves the VM's NICs (found by `device_macs`, or by the interfaces' MACs on a second run)
/// from here into the network namespace at `netns` (the pod's, which the pod's containers
/// join) and sets `net` up there, as [`configure`] does.
pub fn configure_in(netns: &Path, net: &PodNetwork, device_macs: &[[u8; 6]]) -> Result<PodNetwork> {
    let ns = std::fs::File::open(netns)
        .map_err(|e| NetError::io(format!("open network namespace {}", netns.display()), e))?;
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    for (i, iface) in net.interfaces.iter().enumerate() {
        let device = device_macs.get(i).copied().unwrap_or(iface.mac);
        if let Some(l) = links.iter().find(|l| l.mac == device || l.mac == iface.mac) {
            let mut m = LinkMessage::default();
            m.header.index = l.index;
            m.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
            nl.request(
                RouteNetlinkMessage::SetLink(m),
                0,
                &format!("move {} into {}", l.name, netns.display()),
            )?;
        }
    }
    let (net, macs) = (net.clone(), device_macs.to_vec());
    in_netns(netns, move || configure(&net, &macs))
}

/// Sets `net` up here: interface i is the link whose MAC is `device_macs[i]` (the MAC the
/// hypervisor gave the NIC); it gets the interface's name, MAC, MTU and addresses and goes
/// up; `lo` goes up; then the routes (on-link ones before those through a gateway) and the
/// permanent neighbours. Without IPv6 in this kernel its addresses, routes and neighbours
/// are left out, with a warning. Returns what was applied; running it again is harmless.
pub fn configure(net: &PodNetwork, device_macs: &[[u8; 6]]) -> Result<PodNetwork> {
    let v6 = ipv6_enabled();
    let keep = |ip: &IpAddr| v6 || ip.is_ipv4();
    let mut applied = PodNetwork::default();
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    // Found by MAC first (a second run finds them by their new MAC), then renamed through a
    // temporary name, so that two NICs can swap names.
    let mut found = Vec::new();
    for (i, iface) in net.interfaces.iter().enumerate() {
        let device = device_macs.get(i).copied().unwrap_or(iface.mac);
        let link = links
            .iter()
            .find(|l| l.mac == device)
            .or_else(|| links.iter().find(|l| l.mac == iface.mac))
            .ok_or_else(|| NetError::NoSuchNic(mac_string(&device)))?;
        found.push(link.clone());
    }
    for (i, link) in found.iter().enumerate() {
        nl.set_up(link.index, false, &link.name)?;
        nl.set_link(
            link.index,
            Some(&format!("hullnic{i}")),
            None,
            None,
            &format!("a temporary name for {}", link.name),
        )?;
    }
    for (iface, link) in net.interfaces.iter().zip(&found) {
        let name = &iface.name;
        nl.set_link(
            link.index,
            Some(name),
            Some(iface.mac),
            Some(iface.mtu),
            &format!(
                "{name} (was {}): name, MAC {}, MTU {}",
                link.name,
                mac_string(&iface.mac),
                iface.mtu
            ),
        )?;
        let mut done = iface.clone();
        done.addresses.clear();
        for a in &iface.addresses {
            if !keep(&a.addr) {
                tracing::warn!(address = %a.addr, interface = %name, "the guest has no IPv6: address left out");
                continue;
            }
            let mut m = AddressMessage::default();
            m.header.family = family(&a.addr);
            m.header.prefix_len = a.prefix;
            m.header.index = link.index;
            if a.addr.is_ipv6() {
                // Usable at once: the pod's address was checked for duplicates on the host.
                m.header.flags = AddressHeaderFlags::Nodad;
            } else {
                m.attributes.push(AddressAttribute::Local(a.addr));
            }
            m.attributes.push(AddressAttribute::Address(a.addr));
            tolerate_exists(nl.request(
                RouteNetlinkMessage::NewAddress(m),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!("add {}/{} to {name}", a.addr, a.prefix),
            ))?;
            done.addresses.push(*a);
        }
        nl.set_up(link.index, true, name)?;
        applied.interfaces.push(done);
    }
    if let Ok(lo) = nl.link("lo") {
        nl.set_up(lo.index, true, "lo")?;
    }
    let index_of = |nl: &mut Netlink, name: &str| nl.link(name).map(|l| l.index);
    let mut routes: Vec<&Route> = net.routes.iter().collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    for r in routes {
        if r.ipv6 && !v6 {
            tracing::warn!(?r, "the guest has no IPv6: route left out");
            continue;
        }
        let oif = index_of(&mut nl, &r.device)?;
        let mut m = RouteMessage::default();
        m.header.address_family = if r.ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = RouteScope::from(r.scope);
        if let Some(d) = r.destination {
            m.header.destination_prefix_length = d.prefix;
            m.attributes
                .push(RouteAttribute::Destination(route_address(d.addr)));
        }
        if let Some(g) = r.gateway {
            m.attributes.push(RouteAttribute::Gateway(route_address(g)));
        }
        if let Some(s) = r.source {
            m.attributes
                .push(RouteAttribute::PrefSource(route_address(s)));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        if let Some(mtu) = r.mtu {
            m.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        let what = match r.destination {
            Some(d) => format!("{}/{}", d.addr, d.prefix),
            None => "default".into(),
        };
        tolerate_exists(nl.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add route {what} dev {}", r.device),
        ))?;
        applied.routes.push(r.clone());
    }
    for n in &net.neighbours {
        if !keep(&n.address) {
            continue;
        }
        let mut m = NeighbourMessage::default();
        m.header.family = family(&n.address);
        m.header.ifindex = index_of(&mut nl, &n.device)?;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::Destination(match n.address {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
        nl.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("add neighbour {} on {}", n.address, n.device),
        )?;
        applied.neighbours.push(n.clone());
    }
    Ok(applied)
}
