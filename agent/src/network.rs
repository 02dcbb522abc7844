//! Pod networking inside the guest: interface addresses, MTU, link state and routes (IPv4,
//! through the classic ioctls, so the agent needs no netlink library).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use hull_protocols::agent::{Interface, Route};

use crate::error::{AgentError, Result};

/// `struct rtentry` of <net/route.h> (glibc's libc crate does not export it).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn inet_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(AgentError::last_os("socket(AF_INET)"));
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(AgentError::InvalidArgument(format!(
            "bad interface name {name:?}"
        )));
    }
    // SAFETY: an all-zero ifreq is valid.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; reinterpreting is how the API works.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<()> {
    // SAFETY: `arg` points at a live ifreq/rtentry of the layout `req` expects.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) } != 0 {
        return Err(AgentError::last_os(what.to_string()));
    }
    Ok(())
}

fn parse_v4(s: &str, what: &str) -> Result<Ipv4Addr> {
    s.parse()
        .map_err(|_| AgentError::Unsupported(format!("{what} {s:?} (only IPv4 is supported)")))
}

fn mask(prefix: u32) -> Result<Ipv4Addr> {
    if prefix > 32 {
        return Err(AgentError::InvalidArgument(format!(
            "prefix length {prefix}"
        )));
    }
    Ok(Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }))
}

/// Sets the interface's address (first IPv4 one), MTU and link state.
pub fn update_interface(iface: &Interface) -> Result<()> {
    let sock = inet_socket()?;
    let name = iface.name.as_str();
    if let Some(a) = iface.addresses.first() {
        let ip = parse_v4(&a.address, "address")?;
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_addr = sockaddr_in(ip);
        ioctl(
            &sock,
            libc::SIOCSIFADDR,
            (&mut r as *mut libc::ifreq).cast(),
            "SIOCSIFADDR",
        )?;
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_netmask = sockaddr_in(mask(a.prefix_len)?);
        ioctl(
            &sock,
            libc::SIOCSIFNETMASK,
            (&mut r as *mut libc::ifreq).cast(),
            "SIOCSIFNETMASK",
        )?;
    }
    if iface.mtu > 0 {
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_mtu = i32::try_from(iface.mtu)
            .map_err(|_| AgentError::InvalidArgument(format!("mtu {}", iface.mtu)))?;
        ioctl(
            &sock,
            libc::SIOCSIFMTU,
            (&mut r as *mut libc::ifreq).cast(),
            "SIOCSIFMTU",
        )?;
    }
    let mut r = ifreq(name)?;
    ioctl(
        &sock,
        libc::SIOCGIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        "SIOCGIFFLAGS",
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let mut flags = unsafe { r.ifr_ifru.ifru_flags };
    if iface.up {
        flags |= libc::IFF_UP as libc::c_short;
    } else {
        flags &= !(libc::IFF_UP as libc::c_short);
    }
    r.ifr_ifru.ifru_flags = flags;
    ioctl(
        &sock,
        libc::SIOCSIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        "SIOCSIFFLAGS",
    )?;
    tracing::info!(interface = name, "interface updated");
    Ok(())
}

/// Adds routes ("a.b.c.d/len" or "default", optional gateway and device).
pub fn add_routes(routes: &[Route]) -> Result<()> {
    let sock = inet_socket()?;
    for route in routes {
        let (dst, prefix) = match route.destination.as_str() {
            "" | "default" => (Ipv4Addr::UNSPECIFIED, 0),
            d => {
                let (a, p) = d.split_once('/').unwrap_or((d, "32"));
                let p: u32 = p
                    .parse()
                    .map_err(|_| AgentError::InvalidArgument(format!("route {d:?}")))?;
                (parse_v4(a, "route destination")?, p)
            }
        };
        // SAFETY: an all-zero rtentry is valid.
        let mut rt: RtEntry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in(dst);
        rt.rt_genmask = sockaddr_in(mask(prefix)?);
        rt.rt_flags = libc::RTF_UP;
        if !route.gateway.is_empty() {
            rt.rt_gateway = sockaddr_in(parse_v4(&route.gateway, "gateway")?);
            rt.rt_flags |= libc::RTF_GATEWAY;
        }
        if prefix == 32 {
            rt.rt_flags |= libc::RTF_HOST;
        }
        let dev = std::ffi::CString::new(route.device.as_str())
            .map_err(|_| AgentError::InvalidArgument("NUL in device".into()))?;
        if !route.device.is_empty() {
            rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
        }
        match ioctl(
            &sock,
            libc::SIOCADDRT,
            (&mut rt as *mut RtEntry).cast(),
            "SIOCADDRT",
        ) {
            Err(AgentError::Io { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {}
            other => other?,
        }
        tracing::info!(destination = %route.destination, gateway = %route.gateway, "route added");
    }
    Ok(())
}
