//! What is in a pod's network namespace: interfaces, routes, neighbours.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::model::{Interface, IpNet, Neighbour, PodNetwork, Route};
use crate::netlink::{in_netns, neighbour_ip, route_ip, Netlink};

/// What is in the pod's network namespace at `netns`: every link but `lo` with a global
/// address (its MAC, MTU, global addresses), the main table's routes through them (less the
/// ones the kernel derives from addresses by itself), and their permanent neighbours.
pub fn scan(netns: &Path) -> Result<PodNetwork> {
    let net = in_netns(netns, || scan_here(&mut Netlink::open()?))?;
    tracing::debug!(netns = %netns.display(), ?net, "scanned the pod's network");
    Ok(net)
}

/// [`scan`] of the calling thread's namespace.
fn scan_here(nl: &mut Netlink) -> Result<PodNetwork> {
    let links = nl.links()?;
    let addrs = nl.global_addresses()?;
    let mut net = PodNetwork::default();
    let mut names = HashMap::new();
    for l in links.iter().filter(|l| !l.loopback) {
        let addresses: Vec<IpNet> = addrs
            .iter()
            .filter(|(i, _)| *i == l.index)
            .map(|(_, a)| *a)
            .collect();
        if addresses.is_empty() {
            continue;
        }
        let Some(mac) = l.mac6() else {
            tracing::warn!(link = %l.name, "an interface without an Ethernet MAC cannot be given to a VM: left out");
            continue;
        };
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
            if let RouteNetlinkMessage::NewRoute(r) = r {
                net.routes.extend(route_of(&r, &names));
            }
        }
    }
    for n in nl.dump(
        RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        "list neighbours",
    )? {
        if let RouteNetlinkMessage::NewNeighbour(n) = n {
            net.neighbours.extend(neighbour_of(&n, &names));
        }
    }
    Ok(net)
}

/// A permanent neighbour entry on one of `names`' links.
fn neighbour_of(n: &NeighbourMessage, names: &HashMap<u32, String>) -> Option<Neighbour> {
    if n.header.state != NeighbourState::Permanent {
        return None;
    }
    let device = names.get(&n.header.ifindex)?.clone();
    let address = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => neighbour_ip(d),
        _ => None,
    })?;
    let mac = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
        _ => None,
    })?;
    Some(Neighbour {
        address,
        mac,
        device,
    })
}

/// A main-table unicast route through one of `names`' links that the guest would not make
/// by itself from the addresses (the kernel's subnet routes, IPv6 link-local and multicast
/// routes are its own).
fn route_of(r: &RouteMessage, names: &HashMap<u32, String>) -> Option<Route> {
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
    let mut route = Route {
        destination: None,
        gateway: None,
        device: String::new(),
        source: None,
        mtu: None,
        scope: r.header.scope.into(),
        ipv6: r.header.address_family == AddressFamily::Inet6,
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
                route.mtu = ms.iter().find_map(|m| match m {
                    RouteMetric::Mtu(mtu) => Some(*mtu),
                    _ => None,
                })
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
        // fe80::/10 and multicast: the guest's kernel makes its own.
        if d.segments()[0] & 0xffc0 == 0xfe80 || d.is_multicast() {
            return None;
        }
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> HashMap<u32, String> {
        HashMap::from([(2, "eth0".to_string())])
    }

    fn route(family: AddressFamily, dest: Option<(IpAddr, u8)>, oif: u32) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        if let Some((addr, prefix)) = dest {
            m.header.destination_prefix_length = prefix;
            m.attributes
                .push(RouteAttribute::Destination(crate::netlink::route_address(
                    addr,
                )));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        m
    }

    #[test]
    fn a_gateway_route_with_an_mtu_is_kept() {
        let mut m = route(
            AddressFamily::Inet,
            Some(("10.10.0.0".parse().unwrap(), 16)),
            2,
        );
        m.attributes
            .push(RouteAttribute::Gateway(crate::netlink::route_address(
                "10.9.0.1".parse().unwrap(),
            )));
        m.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(1300)]));
        let r = route_of(&m, &names()).unwrap();
        assert_eq!(r.device, "eth0");
        assert_eq!(r.gateway, Some("10.9.0.1".parse().unwrap()));
        assert_eq!(r.mtu, Some(1300));
        assert!(!r.ipv6);
    }

    #[test]
    fn routes_the_guest_makes_itself_or_on_other_links_are_left_out() {
        let v6 = |d: &str, p| route(AddressFamily::Inet6, Some((d.parse().unwrap(), p)), 2);
        assert!(route_of(&v6("fe80::", 64), &names()).is_none());
        assert!(route_of(&v6("ff00::", 8), &names()).is_none());
        assert!(route_of(&v6("fd00:9::", 64), &names()).is_some());
        let mut kernel = route(AddressFamily::Inet, None, 2);
        kernel.header.protocol = RouteProtocol::Kernel;
        assert!(route_of(&kernel, &names()).is_none());
        let mut local = route(AddressFamily::Inet, None, 2);
        local.header.table = 255; // RT_TABLE_LOCAL
        assert!(route_of(&local, &names()).is_none());
        assert!(route_of(&route(AddressFamily::Inet, None, 7), &names()).is_none());
    }
}
