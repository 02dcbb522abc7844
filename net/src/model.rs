//! What a pod's network is, as the host finds it and the guest rebuilds it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An address with its prefix length (`10.88.0.5/16`, `fd00::5/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (0-32 for IPv4, 0-128 for IPv6).
    pub prefix: u8,
}

/// One interface of the pod (a veth end in the pod's namespace on the host; a NIC in the
/// guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name in the pod (`eth0`).
    pub name: String,
    /// Its MAC address: the guest's NIC takes it, so bridges, firewalls and ARP on the host
    /// see the MAC they expect.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Its global addresses, IPv4 and IPv6 (link-local ones are left to the guest's kernel).
    pub addresses: Vec<IpNet>,
}

/// One route of the pod's main table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination; `None` is the default route.
    pub destination: Option<IpNet>,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface (by name).
    pub device: String,
    /// Preferred source address, if any.
    pub source: Option<IpAddr>,
    /// The route's MTU (`ip route ... mtu N`), if set.
    pub mtu: Option<u32>,
    /// rtnetlink scope (`RT_SCOPE_UNIVERSE` 0, `RT_SCOPE_LINK` 253, ...).
    pub scope: u8,
    /// An IPv6 route (a default route has no destination to tell it by).
    pub ipv6: bool,
}

/// A static neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    /// The neighbour's IP address.
    pub address: IpAddr,
    /// Its link-layer address.
    pub mac: [u8; 6],
    /// The interface it is reached through (by name).
    pub device: String,
}

/// A pod's network: what the host's scan found, what the guest sets up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// Its interfaces (never `lo`).
    pub interfaces: Vec<Interface>,
    /// Routes through those interfaces.
    pub routes: Vec<Route>,
    /// Permanent neighbour entries on those interfaces.
    pub neighbours: Vec<Neighbour>,
}
