//! The guest side: the pod's network set up again on the VM's NICs, in the calling thread's
//! network namespace ([`configure`]) or in the pod's, which the pod's containers join
//! ([`configure_in`]).

use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{NetError, Result};
use crate::model::{IpNet, Neighbour, PodNetwork, Route};
use crate::netlink::{
    family, in_netns, mac_string, neighbour_address, route_address, tolerate, Netlink,
};

/// Whether this kernel has IPv6 and it is not disabled for all links.
pub fn ipv6_enabled() -> bool {
    sysctl_is_zero("all")
}

/// Whether IPv6 is on for the link named `name` (in the calling thread's namespace).
fn link_ipv6_enabled(name: &str) -> bool {
    sysctl_is_zero("all") && sysctl_is_zero(name)
}

/// `/proc/sys/net/ipv6/conf/<conf>/disable_ipv6` reads 0 (missing: no IPv6 at all). Net
/// sysctls show the namespace of the thread that opens them.
fn sysctl_is_zero(conf: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"))
        .is_ok_and(|s| s.trim() == "0")
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
/// permanent neighbours. An interface without IPv6 (none in this kernel, or `disable_ipv6`
/// for its link) gets no IPv6 addresses, routes or neighbours: they are left out, with a
/// warning. Returns what was applied; running it again is harmless.
pub fn configure(net: &PodNetwork, device_macs: &[[u8; 6]]) -> Result<PodNetwork> {
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
    // The interfaces whose link has IPv6 on.
    let mut v6 = Vec::new();
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
        if link_ipv6_enabled(name) {
            v6.push(name.clone());
        }
        let mut done = iface.clone();
        done.addresses.clear();
        for a in &iface.addresses {
            if a.addr.is_ipv6() && !v6.contains(name) {
                tracing::warn!(address = %a.addr, interface = %name, "the guest has no IPv6 on this interface: address left out");
                continue;
            }
            add_address(&mut nl, link.index, name, a)?;
            done.addresses.push(*a);
        }
        nl.set_up(link.index, true, name)?;
        tracing::info!(interface = %name, was = %link.name, mac = %mac_string(&iface.mac), mtu = iface.mtu, addresses = ?done.addresses, "interface set up");
        applied.interfaces.push(done);
    }
    if let Ok(lo) = nl.link("lo") {
        nl.set_up(lo.index, true, "lo")?;
    }
    let has_ipv6 = |ip: bool, device: &str| !ip || v6.iter().any(|d| d == device);
    // On-link routes first: a gateway must be reachable when its route is added.
    let mut routes: Vec<&Route> = net.routes.iter().collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    for r in routes {
        if !has_ipv6(r.ipv6, &r.device) {
            tracing::warn!(route = ?r, "the guest has no IPv6 on its interface: route left out");
            continue;
        }
        add_route(&mut nl, r)?;
        applied.routes.push(r.clone());
    }
    for n in &net.neighbours {
        if !has_ipv6(n.address.is_ipv6(), &n.device) {
            tracing::warn!(neighbour = ?n, "the guest has no IPv6 on its interface: neighbour left out");
            continue;
        }
        add_neighbour(&mut nl, n)?;
        applied.neighbours.push(n.clone());
    }
    tracing::info!(
        routes = applied.routes.len(),
        neighbours = applied.neighbours.len(),
        "pod network set up"
    );
    Ok(applied)
}

/// Adds `a` to link `index` (named `name`); already there is fine.
fn add_address(nl: &mut Netlink, index: u32, name: &str, a: &IpNet) -> Result<()> {
    let mut m = AddressMessage::default();
    m.header.family = family(&a.addr);
    m.header.prefix_len = a.prefix;
    m.header.index = index;
    if a.addr.is_ipv6() {
        // Usable at once: the pod's address was checked for duplicates on the host.
        m.header.flags = AddressHeaderFlags::Nodad;
    } else {
        m.attributes.push(AddressAttribute::Local(a.addr));
    }
    m.attributes.push(AddressAttribute::Address(a.addr));
    tolerate(
        nl.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add {}/{} to {name}", a.addr, a.prefix),
        ),
        &[libc::EEXIST],
    )
}

/// Adds route `r` to the main table; already there is fine.
fn add_route(nl: &mut Netlink, r: &Route) -> Result<()> {
    let oif = nl.link(&r.device)?.index;
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
    let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    tracing::debug!(route = %what, %via, device = %r.device, mtu = ?r.mtu, "adding a route");
    tolerate(
        nl.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add route {what}{via} dev {}", r.device),
        ),
        &[libc::EEXIST],
    )
}

/// Adds (or replaces) permanent neighbour entry `n`.
fn add_neighbour(nl: &mut Netlink, n: &Neighbour) -> Result<()> {
    let mut m = NeighbourMessage::default();
    m.header.family = family(&n.address);
    m.header.ifindex = nl.link(&n.device)?.index;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(neighbour_address(
            n.address,
        )));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
    nl.request(
        RouteNetlinkMessage::NewNeighbour(m),
        NLM_F_CREATE | NLM_F_REPLACE,
        &format!(
            "add neighbour {} lladdr {} on {}",
            n.address,
            mac_string(&n.mac),
            n.device
        ),
    )
}
