//! virtio-net on a host tap interface (opened with `IFF_VNET_HDR`, so the 12-byte
//! `virtio_net_hdr_v1` passes through unchanged in both directions): one opened by name, or
//! one the VMM inherited as an open fd (hull's pod taps).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use tracing::warn;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::mmio::drain_queue;
use super::{
    activation, read_config_bytes, Activation, Interrupt, VirtioDevice, VirtioError, TYPE_NET,
    VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: [u16; 2] = [256, 256];
const RX: usize = 0;
const TX: usize = 1;
/// `VIRTIO_NET_F_MAC`.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Size of `virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame plus header.
const MAX_FRAME: usize = 65562;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (creating if needed) the tap interface `name`.
pub fn open_tap(name: &str) -> Result<File, VirtioError> {
    let err = |source| VirtioError::Open {
        what: "tap interface",
        name: name.to_string(),
        source,
    };
    if name.is_empty() || name.len() >= 16 {
        return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(err)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as (40 bytes); the fd
    // is a valid open /dev/net/tun.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    set_vnet_hdr_len(&tun).map_err(err)?;
    Ok(tun)
}

/// Makes the tap `tap` carry [`VNET_HDR_LEN`]-byte headers (its default is 10).
fn set_vnet_hdr_len(tap: &File) -> std::io::Result<()> {
    let hdr: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `hdr`.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking duplicate of the inherited fd `fd` (left open) for a net device: a tap made
/// with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, set to [`VNET_HDR_LEN`]-byte headers; any other
/// packet fd (a SEQPACKET socket in tests) is used as it is.
pub fn open_inherited(fd: RawFd) -> Result<File, VirtioError> {
    let err = |source| VirtioError::Open {
        what: "inherited net fd",
        name: fd.to_string(),
        source,
    };
    if fd <= 2 {
        return Err(err(std::io::Error::from_raw_os_error(libc::EBADF)));
    }
    // SAFETY: F_DUPFD_CLOEXEC only reads the fd number; a closed one fails with EBADF.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `dup` was just created by F_DUPFD_CLOEXEC and is owned by nothing else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(dup) });
    // SAFETY: F_GETFL / F_SETFL on the fd `file` owns.
    let nonblocking = unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !nonblocking {
        return Err(err(std::io::Error::last_os_error()));
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes an ifreq, which `req` is laid out as (40 bytes); on an fd that
    // is no tun device it fails (ENOTTY, EBADFD) and writes nothing.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF as _, &mut req) } < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            // Not a tun device: a packet fd used as it is.
            Some(libc::ENOTTY) | Some(libc::EINVAL) => Ok(file),
            _ => Err(err(e)),
        };
    }
    let wanted = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if req.flags & wanted != wanted {
        return Err(err(std::io::Error::other(format!(
            "a tun device without IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (flags {:#x})",
            req.flags
        ))));
    }
    set_vnet_hdr_len(&file).map_err(err)?;
    Ok(file)
}

/// The net device.
pub struct Net {
    tap: File,
    mac: [u8; 6],
    pending: Option<Vec<u8>>,
    active: Option<Activation>,
}

impl Net {
    /// A net device on the tap interface `name`.
    pub fn with_tap(name: &str) -> Result<Net, VirtioError> {
        Ok(Net::with_backend(open_tap(name)?))
    }

    /// A net device on the inherited tap fd `fd` (see [`open_inherited`]), whose guest MAC is
    /// `mac`, else a random one.
    pub fn with_inherited_fd(fd: RawFd, mac: Option<[u8; 6]>) -> Result<Net, VirtioError> {
        let mut net = Net::with_backend(open_inherited(fd)?);
        if let Some(mac) = mac {
            net.mac = mac;
        }
        Ok(net)
    }

    /// A net device on any packet fd (a tap, or a SEQPACKET socket in tests). The fd must be
    /// non-blocking.
    pub fn with_backend(tap: File) -> Net {
        let mut mac = [0x06, 0, 0, 0, 0, 0];
        // A locally administered MAC from the host's randomness; fixed fallback if that fails.
        let mut r = [0u8; 5];
        // SAFETY: getrandom writes at most 5 bytes into `r`.
        if unsafe { libc::getrandom(r.as_mut_ptr().cast(), 5, 0) } == 5 {
            mac[1..].copy_from_slice(&r);
        }
        Net {
            tap,
            mac,
            pending: None,
            active: None,
        }
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn transmit(&mut self) {
        let Some((mem, queues, irq)) = self.active.as_mut() else {
            return;
        };
        let tap = &mut self.tap;
        let used = drain_queue(&mut queues[TX], mem, "virtio-net", |chain| {
            if chain.readable_len() as usize > MAX_FRAME
                || (chain.readable_len() as usize) < VNET_HDR_LEN
            {
                warn!(len = chain.readable_len(), "tx frame of bad size dropped");
                return Some(0);
            }
            match chain.read_all(mem) {
                Ok(frame) => {
                    if let Err(e) = tap.write(&frame) {
                        warn!(error = %e, "tap write failed; frame dropped");
                    }
                }
                Err(e) => warn!(error = %e, "tx buffer unreadable"),
            }
            Some(0)
        });
        if used {
            irq.signal_used_queue();
        }
    }

    fn receive(&mut self) {
        let Some((mem, queues, irq)) = self.active.as_mut() else {
            return;
        };
        let mut any = false;
        loop {
            if self.pending.is_none() {
                let mut buf = vec![0u8; MAX_FRAME];
                match self.tap.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        self.pending = Some(buf);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        warn!(error = %e, "tap read failed");
                        break;
                    }
                }
            }
            let frame = self.pending.take().expect("just filled");
            let mut delivered = false;
            let mut leftover = None;
            let used = drain_queue(&mut queues[RX], mem, "virtio-net", |chain| {
                if delivered {
                    return None;
                }
                delivered = true;
                if (chain.writable_len() as usize) < frame.len() {
                    warn!(
                        frame = frame.len(),
                        buffer = chain.writable_len(),
                        "rx buffer too small; frame dropped"
                    );
                    return Some(0);
                }
                Some(chain.write_all(mem, &frame).unwrap_or(0) as u32)
            });
            if !delivered {
                leftover = Some(frame);
            }
            any |= used;
            if let Some(f) = leftover {
                self.pending = Some(f);
                break;
            }
        }
        if any {
            irq.signal_used_queue();
        }
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        "virtio-net"
    }
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Config space: mac[6], status u16, max_virtqueue_pairs u16.
        let mut cfg = [0u8; 10];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[6] = 1; // VIRTIO_NET_S_LINK_UP
        read_config_bytes(&cfg, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        self.active = Some(activation(self, mem, queues, interrupt)?);
        Ok(())
    }
    fn process_queue(&mut self, index: u16) {
        match index as usize {
            RX => self.receive(),
            TX => self.transmit(),
            _ => {}
        }
    }
    fn host_fds(&self) -> Vec<(RawFd, bool)> {
        // While a frame waits for a guest buffer, stop polling the tap.
        if self.pending.is_some() {
            Vec::new()
        } else {
            vec![(self.tap.as_raw_fd(), false)]
        }
    }
    fn process_host_event(&mut self, _fd: RawFd, readable: bool, _writable: bool) {
        if readable {
            self.receive();
        }
    }
    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }
    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.1[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use std::os::unix::io::FromRawFd;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn pair() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array of two.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: both fds were just created and are owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    /// Passes a frame guest -> host and one host -> guest through `dev`, whose backend's
    /// other end is `host`.
    fn frames_pass_both_ways_through(mut dev: Net, mut host: File) {
        let m = test_mem();
        let rxq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
        let frame: Vec<u8> = (0..60u8).collect();
        m.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(0x10_0000))
            .unwrap();
        m.write_slice(&frame, GuestAddress(0x11_0000)).unwrap();
        txq.build_desc_chain(&[desc(0x10_0000, 12, 0), desc(0x11_0000, 60, 0)])
            .unwrap();
        let (irq, evt) = test_interrupt();
        dev.activate(
            m.clone(),
            vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            irq,
        )
        .unwrap();
        dev.process_queue(TX as u16);
        let mut got = [0u8; 200];
        let n = host.read(&mut got).unwrap();
        assert_eq!(n, 72);
        assert_eq!(&got[12..72], &frame[..]);
        assert_eq!(evt.read().unwrap(), 1);

        // Host -> guest: held until the guest posts a buffer.
        host.write_all(&got[..72]).unwrap();
        dev.process_host_event(0, true, false);
        assert!(dev.pending.is_some());
        assert!(dev.host_fds().is_empty());
        rxq.build_desc_chain(&[desc(0x20_0000, 2048, VRING_DESC_F_WRITE)])
            .unwrap();
        dev.process_queue(RX as u16);
        assert_eq!(used(&rxq), vec![(0, 72)]);
        let mut b = [0u8; 60];
        m.read_slice(&mut b, GuestAddress(0x20_0000 + 12)).unwrap();
        assert_eq!(&b[..], &frame[..]);
    }

    #[test]
    fn frames_pass_both_ways() {
        let (dev_end, host) = pair();
        frames_pass_both_ways_through(Net::with_backend(dev_end), host);
    }

    #[test]
    fn a_device_from_net_fd_passes_frames_with_the_given_mac() {
        let (dev_end, host) = pair();
        let arg = format!("{},mac=02:68:75:6c:00:01", dev_end.as_raw_fd());
        let n: crate::builder::NetFdConfig = arg.parse().unwrap();
        let dev = Net::with_inherited_fd(n.fd, n.mac).unwrap();
        assert_eq!(dev.mac(), [0x02, 0x68, 0x75, 0x6c, 0x00, 0x01]);
        let mut cfg = [0u8; 6];
        dev.read_config(0, &mut cfg);
        assert_eq!(
            cfg,
            dev.mac(),
            "the guest reads the MAC from the config space"
        );
        // The device works on its own duplicate: the inherited fd may close.
        drop(dev_end);
        frames_pass_both_ways_through(dev, host);
        let none = Net::with_inherited_fd(n.fd, None);
        assert!(none.is_err(), "a closed fd is refused");
        let e = Net::with_inherited_fd(1, None).err().unwrap().to_string();
        assert!(e.contains("inherited net fd 1"), "{e}");
    }

    #[test]
    fn an_inherited_tap_gets_the_devices_header_size() {
        if !std::path::Path::new("/dev/net/tun").exists() {
            panic!("/dev/net/tun is absent: this test needs it");
        }
        // A tap made as hull makes a pod's, in a fresh network namespace of a thread.
        let tap = std::thread::spawn(|| {
            // SAFETY: unshare(2) on this thread alone (CLONE_NEWNET moves the calling thread).
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare: {}",
                std::io::Error::last_os_error()
            );
            open_tap("hullnetfd0").unwrap()
        })
        .join()
        .unwrap();
        let dev = Net::with_inherited_fd(tap.as_raw_fd(), None).unwrap();
        let mut hdr: libc::c_int = 0;
        const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;
        // SAFETY: TUNGETVNETHDRSZ writes one int to the pointer, which points at `hdr`.
        assert_eq!(
            unsafe { libc::ioctl(tap.as_raw_fd(), TUNGETVNETHDRSZ as _, &mut hdr) },
            0
        );
        assert_eq!(hdr, VNET_HDR_LEN as libc::c_int);
        assert_eq!(dev.mac()[0], 0x06, "random, locally administered");

        // A tun device without a vnet header is refused.
        let plain = std::thread::spawn(|| {
            // SAFETY: as above.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let tun = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .unwrap();
            let mut req = IfReq {
                name: [0; 16],
                flags: IFF_TAP | IFF_NO_PI,
                _pad: [0; 22],
            };
            req.name[..8].copy_from_slice(b"hullnohd");
            // SAFETY: TUNSETIFF on an ifreq-shaped `req`, fd open.
            assert!(unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) } >= 0);
            tun
        })
        .join()
        .unwrap();
        let e = Net::with_inherited_fd(plain.as_raw_fd(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("IFF_VNET_HDR"), "{e}");
    }

    #[test]
    fn opens_a_real_tap() {
        if !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("SKIP opens_a_real_tap: /dev/net/tun is absent on this host");
            return;
        }
        match Net::with_tap("hullvmmtest0") {
            Ok(dev) => assert_eq!(dev.mac()[0], 0x06),
            Err(e) => {
                panic!("cannot open tap although /dev/net/tun exists (running as root?): {e}")
            }
        }
    }
}
