//! A small synchronous rtnetlink client (requests with an acknowledgement, dumps), the link
//! and address requests both sides make, the address conversions both sides need, and running
//! code inside another network namespace.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::NeighbourAddress;
use netlink_packet_route::route::RouteAddress;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{NetError, Result};
use crate::model::IpNet;

/// An rtnetlink socket in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens an rtnetlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| NetError::io("open a netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| NetError::io("bind a netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NetError::io("connect a netlink socket", e))?;
        Ok(Netlink { socket, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<u32> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| NetError::io(op.to_string(), e))?;
        Ok(self.seq)
    }

    /// Reads the answers to request `seq` until it is done; `on` gets every message.
    fn receive(
        &mut self,
        seq: u32,
        op: &str,
        mut on: impl FnMut(RouteNetlinkMessage),
    ) -> Result<()> {
        loop {
            let (buf, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| NetError::io(op.to_string(), e))?;
            let mut off = 0;
            while off < buf.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]).map_err(
                    |e| NetError::Decode {
                        op: op.to_string(),
                        message: e.to_string(),
                    },
                )?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(NetError::Decode {
                        op: op.to_string(),
                        message: "a message of length 0".into(),
                    });
                }
                off += len.next_multiple_of(4);
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(NetError::io(op.to_string(), e.to_io())),
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => on(inner),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request and waits for its acknowledgement. `extra` adds flags
    /// (`NLM_F_CREATE`, `NLM_F_EXCL`, `NLM_F_REPLACE`).
    pub fn request(&mut self, msg: RouteNetlinkMessage, extra: u16, op: &str) -> Result<()> {
        let seq = self.send(msg, NLM_F_ACK | extra, op)?;
        self.receive(seq, op, |_| {})
    }

    /// Sends a dump request and returns every message of the answer.
    pub fn dump(&mut self, msg: RouteNetlinkMessage, op: &str) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP, op)?;
        let mut out = Vec::new();
        self.receive(seq, op, |m| out.push(m))?;
        Ok(out)
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "list links",
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`.
    pub fn link(&mut self, name: &str) -> Result<Link> {
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| NetError::NoSuchLink(name.to_string()))
    }

    /// Every global (universe-scope) address, by link index.
    pub fn global_addresses(&mut self) -> Result<Vec<(u32, IpNet)>> {
        let msgs = self.dump(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            "list addresses",
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.scope != AddressScope::Universe {
                continue;
            }
            // IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
            // point-to-point links); IPv6 has IFA_ADDRESS only.
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(addr) = addr {
                out.push((
                    a.header.index,
                    IpNet {
                        addr,
                        prefix: a.header.prefix_len,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Sets a link up or down.
    pub fn set_up(&mut self, index: u32, up: bool, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        let op = format!("set {name} {}", if up { "up" } else { "down" });
        self.request(RouteNetlinkMessage::SetLink(m), 0, &op)
    }

    /// Changes a link's name, MAC and MTU (each when given).
    pub fn set_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
        what: &str,
    ) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(n) = name {
            m.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(m), 0, &format!("set {what}"))
    }

    /// Deletes a link.
    pub fn del_link(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(
            RouteNetlinkMessage::DelLink(m),
            0,
            &format!("delete {name}"),
        )
    }
}

/// `r`, with the errors whose errno is one of `codes` taken as success (an "already there"
/// or "already gone" answer).
pub fn tolerate(r: Result<()>, codes: &[i32]) -> Result<()> {
    match r {
        Err(e) if e.is(codes) => Ok(()),
        r => r,
    }
}

/// What a link dump says of one link.
#[derive(Debug, Clone)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its link-layer address (6 bytes for Ethernet).
    pub mac: Vec<u8>,
    /// Its MTU.
    pub mtu: u32,
    /// A loopback link.
    pub loopback: bool,
}

impl Link {
    /// Its MAC, if it is an Ethernet-like link (6-byte link-layer address).
    pub fn mac6(&self) -> Option<[u8; 6]> {
        self.mac.as_slice().try_into().ok()
    }

    fn from_message(l: &LinkMessage) -> Link {
        let mut link = Link {
            index: l.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            loopback: l.header.flags.contains(LinkFlags::Loopback),
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(m) => link.mac = m.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                _ => {}
            }
        }
        link
    }
}

/// The address family of `ip`.
pub fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `ip` as a route attribute's address.
pub fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// A route attribute's address as an IP address (`None` for other families).
pub fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// `ip` as a neighbour attribute's address.
pub fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// A neighbour attribute's address as an IP address (`None` for other families).
pub fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `f` on a new thread that joined the network namespace at `netns` (a
/// `/proc/PID/ns/net` path or a bind-mounted namespace file), and returns its result; an
/// error says which namespace it happened in. Sockets and devices `f` opens belong to that
/// namespace; no caller's thread moves.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let within = |e: NetError| NetError::InNetns {
        netns: netns.to_path_buf(),
        source: Box::new(e),
    };
    let ns = File::open(netns).map_err(|e| within(NetError::io("open it", e)))?;
    std::thread::Builder::new()
        .name("hull-net-netns".into())
        .spawn(move || {
            // SAFETY: setns(2) on a descriptor this thread holds; it moves only this thread,
            // which ends when `f` returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetError::io("enter it", std::io::Error::last_os_error()));
            }
            drop(ns);
            f()
        })
        .map_err(|e| within(NetError::io("start a thread to enter it", e)))?
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::io(
                "a thread working in it",
                std::io::Error::other("panicked"),
            ))
        })
        .map_err(within)
}
