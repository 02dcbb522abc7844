//! virtio-net on a host tap interface (opened with `IFF_VNET_HDR`, so the 12-byte
//! `virtio_net_hdr_v1` passes through unchanged in both directions).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
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
    let hdr: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `hdr`.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(tun)
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

    #[test]
    fn frames_pass_both_ways() {
        let (dev_end, mut host) = pair();
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
        let mut dev = Net::with_backend(dev_end);
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
