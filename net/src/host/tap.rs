//! A tap per pod interface, joined to it by tc redirects both ways.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::error::{NetError, Result};
use crate::host::tc;
use crate::model::Interface;
use crate::netlink::{in_netns, tolerate, Netlink};

/// `TUNSETIFF`, `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// The name of the tap that carries interface `index` of a pod (at most 15 bytes).
pub fn tap_name(index: usize) -> String {
    format!("hulltap{index}")
}

/// In the namespace at `netns`: a tap `tap` with `iface`'s MTU, up, joined to `iface` by
/// ingress qdiscs on both and u32 match-all mirred egress redirects both ways. Returns the
/// tap's descriptor, which owns it (the tap is not persistent: it goes when the last holder
/// closes it). On failure what was done is undone.
pub fn attach_tap(netns: &Path, iface: &Interface, tap: &str) -> Result<OwnedFd> {
    let (i, t) = (iface.clone(), tap.to_string());
    let fd = in_netns(netns, move || {
        let (iface, tap) = (i, t);
        let mut nl = Netlink::open()?;
        let fd = open_tap(&tap)?;
        let mut iface_qdisc = None;
        let joined = join(&mut nl, &iface, &tap, &mut iface_qdisc);
        if let Err(e) = joined {
            // The tap (and its qdisc) goes with its descriptor; the interface's qdisc (and
            // any filter on it) only if this call added it.
            drop(fd);
            if let Some(index) = iface_qdisc {
                if let Err(undo) = tc::del_ingress(&mut nl, index, &iface.name) {
                    tracing::warn!(error = %undo, iface = %iface.name, "undoing a failed tap join");
                }
            }
            return Err(e);
        }
        Ok(fd)
    })?;
    tracing::info!(netns = %netns.display(), iface = %iface.name, tap, mtu = iface.mtu, "tap joined to the pod's interface");
    Ok(fd)
}

/// Sets the new tap up and joins it to `iface`; `iface_qdisc` gets the interface's index
/// once its ingress qdisc is added.
fn join(
    nl: &mut Netlink,
    iface: &Interface,
    tap: &str,
    iface_qdisc: &mut Option<u32>,
) -> Result<()> {
    let veth = nl.link(&iface.name)?.index;
    let t = nl.link(tap)?.index;
    nl.set_link(t, None, None, Some(iface.mtu), &format!("the MTU of {tap}"))?;
    nl.set_up(t, true, tap)?;
    tc::add_ingress(nl, veth, &iface.name)?;
    *iface_qdisc = Some(veth);
    tc::add_ingress(nl, t, tap)?;
    tc::add_redirect(nl, (veth, &iface.name), (t, tap))?;
    tc::add_redirect(nl, (t, tap), (veth, &iface.name))
}

/// Opens a new tap `name` in the calling thread's namespace: IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR, not persistent.
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

/// Undoes [`attach_tap`]: the ingress qdiscs (and their filters) on `iface` and the tap, and
/// the tap if it is still there. Whatever is already gone (namespace, link, qdisc) is fine.
pub fn detach_tap(netns: &Path, iface: &str, tap: &str) -> Result<()> {
    if !netns.exists() {
        tracing::debug!(netns = %netns.display(), "namespace gone: nothing to detach");
        return Ok(());
    }
    let (i, t) = (iface.to_string(), tap.to_string());
    // A namespace file whose namespace is gone (an unmounted bind target) fails to open or
    // enter with ENOENT or EINVAL: nothing is left in it.
    tolerate(
        in_netns(netns, move || detach_here(&mut Netlink::open()?, &i, &t)),
        &[libc::ENOENT, libc::EINVAL],
    )?;
    tracing::debug!(netns = %netns.display(), iface, tap, "tap detached");
    Ok(())
}

fn detach_here(nl: &mut Netlink, iface: &str, tap: &str) -> Result<()> {
    const GONE: &[i32] = &[libc::ENOENT, libc::EINVAL, libc::ENODEV];
    let links = nl.links()?;
    for name in [iface, tap] {
        if let Some(l) = links.iter().find(|l| l.name == name) {
            tolerate(tc::del_ingress(nl, l.index, name), GONE)?;
        }
    }
    if let Some(l) = links.iter().find(|l| l.name == tap) {
        tolerate(nl.del_link(l.index, tap), GONE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tap_names_fit_a_link_name() {
        assert_eq!(super::tap_name(0), "hulltap0");
        // IFNAMSIZ is 16 with the NUL: 15 bytes, enough for any index a pod has.
        assert!(super::tap_name(99_999_999).len() < libc::IFNAMSIZ);
    }
}
