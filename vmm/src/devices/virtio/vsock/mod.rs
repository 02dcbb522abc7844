//! virtio-vsock in Firecracker's "hybrid" style: guest AF_VSOCK streams map to host unix
//! sockets, so no vhost-vsock is needed.
//!
//! - Guest connects to host port P: the VMM connects to the unix socket `<uds>_P`.
//! - Host connects to `<uds>` and writes `CONNECT <port>\n`: the VMM opens a stream to guest
//!   port `<port>` and answers `OK <host port>\n` once the guest accepts.

pub mod packet;

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use self::packet::*;
use super::mmio::drain_queue;
use super::{
    activation, read_config_bytes, Activation, Interrupt, VirtioDevice, VirtioError, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest must drop its connections.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Receive buffer the VMM advertises per connection.
const BUF_ALLOC: u32 = 256 * 1024;
/// Packets queued for the guest before host reads pause.
const MAX_PENDING_RX: usize = 256;
/// Largest payload per RW packet sent to the guest.
const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_HANDSHAKE: usize = 32;
/// First host-side port for host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

#[derive(Debug, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
}

struct Conn {
    stream: UnixStream,
    state: ConnState,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// Bytes forwarded from the guest to the host socket.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    to_host: Vec<u8>,
}

impl Conn {
    fn new(stream: UnixStream, state: ConnState) -> Conn {
        Conn {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            to_host: Vec::new(),
        }
    }

    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .wrapping_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// (host-side port, guest port).
type ConnKey = (u32, u32);

/// The vsock device.
pub struct Vsock {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    handshakes: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    conns: HashMap<ConnKey, Conn>,
    rx: VecDeque<(Header, Vec<u8>)>,
    next_local_port: u32,
    reset_pending: bool,
    /// After a transport reset event: the event queue's available index when it was sent.
    /// Until the guest has handled it (it gives the buffer back: the index moves), new host
    /// connections wait in `held`: one the guest took first would die with the reset.
    reset_unseen: Option<u16>,
    held: Vec<ConnKey>,
    active: Option<Activation>,
}

impl Vsock {
    /// A vsock device for guest `cid`, listening for host connections on `uds`.
    pub fn new(cid: u64, uds: &Path) -> Result<Vsock, VirtioError> {
        let err = |source| VirtioError::Open {
            what: "vsock unix socket",
            name: uds.display().to_string(),
            source,
        };
        if cid <= HOST_CID || cid > u64::from(u32::MAX) {
            return Err(err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "guest CID must be 3..=2^32-1",
            )));
        }
        let _ = std::fs::remove_file(uds);
        let listener = UnixListener::bind(uds).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(Vsock {
            cid,
            uds: uds.to_path_buf(),
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            rx: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            reset_pending: false,
            reset_unseen: None,
            held: Vec::new(),
            active: None,
        })
    }

    fn header(&self, key: ConnKey, op: u16, len: u32) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
        }
    }

    fn push(&mut self, key: ConnKey, op: u16) {
        let h = self.header(key, op, 0);
        self.rx.push_back((h, Vec::new()));
    }

    fn reset_conn(&mut self, key: ConnKey) {
        debug!(?key, "connection reset");
        self.conns.remove(&key);
        self.push(key, OP_RST);
    }

    /// Handles one packet from the guest.
    fn handle_tx(&mut self, h: Header, data: &[u8]) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            debug!(?h, "vsock packet with wrong CIDs dropped");
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            if h.op != OP_RST {
                self.push(key, OP_RST);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
        }
        match h.op {
            OP_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.reset_conn(key);
                    return;
                }
                let path = format!("{}_{}", self.uds.display(), h.dst_port);
                match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
                    Ok(stream) => {
                        let mut c = Conn::new(stream, ConnState::Established);
                        c.peer_buf_alloc = h.buf_alloc;
                        c.peer_fwd_cnt = h.fwd_cnt;
                        self.conns.insert(key, c);
                        self.push(key, OP_RESPONSE);
                    }
                    Err(e) => {
                        debug!(path, error = %e, "guest connect refused");
                        self.push(key, OP_RST);
                    }
                }
            }
            OP_RESPONSE => match self.conns.get_mut(&key) {
                Some(c) if c.state == ConnState::Connecting => {
                    debug!(?key, "guest accepted");
                    // The line goes straight to the fresh socket (its buffer is empty), not
                    // through `to_host`, so that it is not counted as guest data in fwd_cnt.
                    let line = format!("OK {}\n", key.0);
                    match c.stream.write(line.as_bytes()) {
                        Ok(n) if n == line.len() => c.state = ConnState::Established,
                        _ => self.reset_conn(key),
                    }
                }
                _ => self.reset_conn(key),
            },
            OP_RW => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.push(key, OP_RST);
                    return;
                };
                if c.state != ConnState::Established {
                    self.reset_conn(key);
                    return;
                }
                let n = (h.len as usize).min(data.len());
                if c.to_host.len() + n > BUF_ALLOC as usize {
                    debug!(?key, "guest overran its vsock credit");
                    self.reset_conn(key);
                    return;
                }
                c.to_host.extend_from_slice(&data[..n]);
                self.flush_to_host(key);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.push(key, OP_CREDIT_UPDATE);
                }
            }
            OP_SHUTDOWN => {
                if let Some(c) = self.conns.get_mut(&key) {
                    let _ = c.stream.write_all(&c.to_host);
                    let _ = c.stream.shutdown(Shutdown::Both);
                }
                self.reset_conn(key);
            }
            OP_RST => {
                self.conns.remove(&key);
            }
            other => {
                debug!(op = other, "unknown vsock op");
                self.reset_conn(key);
            }
        }
    }

    /// Writes what the guest sent to the host socket; advertises freed credit.
    fn flush_to_host(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut failed = false;
        while !c.to_host.is_empty() {
            match c.stream.write(&c.to_host) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.to_host.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.reset_conn(key);
            return;
        }
        if c.fwd_cnt.wrapping_sub(c.last_fwd_cnt_sent) >= BUF_ALLOC / 4 {
            c.last_fwd_cnt_sent = c.fwd_cnt;
            self.push(key, OP_CREDIT_UPDATE);
        }
    }

    fn accept_host(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if s.set_nonblocking(true).is_ok() {
                        self.handshakes.insert(s.as_raw_fd(), (s, Vec::new()));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!(error = %e, "vsock accept failed");
                    break;
                }
            }
        }
    }

    fn read_handshake(&mut self, fd: RawFd) {
        let Some((stream, buf)) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte so that no data after the newline is consumed.
        loop {
            match stream.read(&mut byte) {
                Ok(0) => {
                    self.handshakes.remove(&fd);
                    return;
                }
                Ok(_) => {
                    if byte[0] == b'\n' {
                        break;
                    }
                    buf.push(byte[0]);
                    if buf.len() > MAX_HANDSHAKE {
                        self.handshakes.remove(&fd);
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.handshakes.remove(&fd);
                    return;
                }
            }
        }
        let (stream, line) = self.handshakes.remove(&fd).expect("present");
        let port = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(port) = port else {
            debug!("bad vsock handshake line");
            return;
        };
        let local = self.next_local_port;
        self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        let key = (local, port);
        self.conns
            .insert(key, Conn::new(stream, ConnState::Connecting));
        debug!(?key, held = self.reset_unseen.is_some(), "host connects");
        if self.reset_unseen.is_some() {
            self.held.push(key);
        } else {
            self.push(key, OP_REQUEST);
        }
    }

    fn read_host(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state != ConnState::Established {
            // Data sent before the guest accepted stays in the socket until it has.
            return;
        }
        let want = (c.peer_credit() as usize).min(MAX_PAYLOAD);
        if want == 0 {
            return;
        }
        let mut buf = vec![0u8; want];
        match c.stream.read(&mut buf) {
            Ok(0) => {
                let mut h = self.header(key, OP_SHUTDOWN, 0);
                h.flags = SHUTDOWN_BOTH;
                self.rx.push_back((h, Vec::new()));
                self.conns.remove(&key);
            }
            Ok(n) => {
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                buf.truncate(n);
                let h = self.header(key, OP_RW, n as u32);
                self.rx.push_back((h, buf));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.reset_conn(key),
        }
    }

    fn process_tx(&mut self) {
        let Some((mem, mut queues, irq)) = self.active.take() else {
            return;
        };
        let mut packets = Vec::new();
        let used = drain_queue(&mut queues[TXQ], &mem, "virtio-vsock", |chain| {
            match chain.read_all(&mem) {
                Ok(bytes) => match Header::parse(&bytes) {
                    Some(h) if (h.len as usize) <= bytes.len() - HDR_LEN => {
                        packets.push((h, bytes[HDR_LEN..HDR_LEN + h.len as usize].to_vec()));
                    }
                    _ => debug!(len = bytes.len(), "malformed vsock packet dropped"),
                },
                Err(e) => warn!(error = %e, "vsock tx buffer unreadable"),
            }
            Some(0)
        });
        if used {
            irq.signal_used_queue();
        }
        self.active = Some((mem, queues, irq));
        for (h, data) in packets {
            self.handle_tx(h, &data);
        }
        self.deliver_rx();
    }

    /// Moves queued packets into the guest's receive buffers.
    fn deliver_rx(&mut self) {
        let Some((mem, queues, irq)) = self.active.as_mut() else {
            return;
        };
        let rx = &mut self.rx;
        let used = drain_queue(&mut queues[RXQ], mem, "virtio-vsock", |chain| {
            let (h, data) = rx.front()?;
            let mut bytes = h.to_bytes().to_vec();
            bytes.extend_from_slice(data);
            if (chain.writable_len() as usize) < bytes.len() {
                // Too small for this packet: hand it back empty and keep the packet.
                warn!(
                    need = bytes.len(),
                    have = chain.writable_len(),
                    "vsock rx buffer too small"
                );
                return Some(0);
            }
            let n = chain.write_all(mem, &bytes).unwrap_or(0);
            rx.pop_front();
            Some(n as u32)
        });
        if used {
            irq.signal_used_queue();
        }
    }

    /// Tells the guest, through the event queue, that all connections are gone.
    fn deliver_events(&mut self) {
        if let (Some(sent_at), Some((mem, queues, _))) = (self.reset_unseen, self.active.as_ref()) {
            let now = queues[EVQ]
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .map(|i| i.0)
                .unwrap_or(sent_at);
            if now != sent_at {
                self.reset_unseen = None;
                for key in std::mem::take(&mut self.held) {
                    self.push(key, OP_REQUEST);
                }
                self.deliver_rx();
            }
        }
        if !self.reset_pending {
            return;
        }
        let Some((mem, queues, irq)) = self.active.as_mut() else {
            return;
        };
        let mut sent = false;
        let used = drain_queue(&mut queues[EVQ], mem, "virtio-vsock", |chain| {
            if sent {
                return None;
            }
            sent = true;
            Some(
                chain
                    .write_all(mem, &EVENT_TRANSPORT_RESET.to_le_bytes())
                    .unwrap_or(0) as u32,
            )
        });
        if used {
            self.reset_pending = false;
            self.reset_unseen = queues[EVQ]
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .map(|i| i.0)
                .ok();
            irq.signal_used_queue();
        }
    }

    /// Live connections (host port, guest port).
    pub fn connections(&self) -> Vec<(u32, u32)> {
        self.conns.keys().copied().collect()
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        "virtio-vsock"
    }
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.cid.to_le_bytes();
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
            RXQ => self.deliver_rx(),
            TXQ => self.process_tx(),
            EVQ => self.deliver_events(),
            _ => {}
        }
    }
    fn host_fds(&self) -> Vec<(RawFd, bool)> {
        let mut fds = vec![(self.listener.as_raw_fd(), false)];
        fds.extend(self.handshakes.keys().map(|fd| (*fd, false)));
        let room = self.rx.len() < MAX_PENDING_RX;
        for c in self.conns.values() {
            let read = room && c.state == ConnState::Established && c.peer_credit() > 0;
            let write = !c.to_host.is_empty();
            if read || write {
                fds.push((c.stream.as_raw_fd(), write));
            }
        }
        fds
    }
    fn process_host_event(&mut self, fd: RawFd, readable: bool, writable: bool) {
        if fd == self.listener.as_raw_fd() {
            self.accept_host();
        } else if self.handshakes.contains_key(&fd) {
            self.read_handshake(fd);
        } else if let Some(key) = self
            .conns
            .iter()
            .find(|(_, c)| c.stream.as_raw_fd() == fd)
            .map(|(k, _)| *k)
        {
            if writable {
                self.flush_to_host(key);
            }
            if readable {
                self.read_host(key);
            }
        }
        self.deliver_rx();
    }
    fn restored(&mut self) {
        self.reset_pending = true;
        self.deliver_events();
    }
    fn reset(&mut self) {
        self.active = None;
        self.reset_pending = false;
        self.reset_unseen = None;
        self.held.clear();
        self.conns.clear();
        self.handshakes.clear();
        self.rx.clear();
    }
    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.1[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const GUEST: u64 = 3;
    const RX_BUF: u64 = 0x40_0000;

    struct Rig<'a> {
        m: &'a GuestMemoryMmap,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        dev: Vsock,
        tx_next: u16,
        rx_seen: usize,
        _dir: vmm_sys_util::tempdir::TempDir,
        uds: PathBuf,
    }

    impl<'a> Rig<'a> {
        fn new(m: &'a GuestMemoryMmap) -> Rig<'a> {
            let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-vsock").unwrap();
            let uds = dir.as_path().join("v.sock");
            let rxq = MockSplitQueue::create(m, GuestAddress(0), 64);
            let txq = MockSplitQueue::create(m, GuestAddress(0x8000), 64);
            let bufs: Vec<_> = (0..32)
                .map(|i| desc(RX_BUF + i * 0x1000, 0x1000, VRING_DESC_F_WRITE))
                .collect();
            rxq.add_desc_chains(&bufs, 0).unwrap();
            let mut dev = Vsock::new(GUEST, &uds).unwrap();
            let evtq = <virtio_queue::Queue as virtio_queue::QueueT>::new(256).unwrap();
            let (irq, _) = test_interrupt();
            dev.activate(
                m.clone(),
                vec![
                    rxq.create_queue().unwrap(),
                    txq.create_queue().unwrap(),
                    evtq,
                ],
                irq,
            )
            .unwrap();
            Rig {
                m,
                rxq,
                txq,
                dev,
                tx_next: 0,
                rx_seen: 0,
                _dir: dir,
                uds,
            }
        }

        fn send(&mut self, h: Header, data: &[u8]) {
            self.send_at(0x20_0000 + u64::from(self.tx_next) * 0x1000, h, data);
        }

        fn send_at(&mut self, addr: u64, h: Header, data: &[u8]) {
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(data);
            self.m.write_slice(&b, GuestAddress(addr)).unwrap();
            self.txq
                .add_desc_chains(&[desc(addr, b.len() as u32, 0)], self.tx_next)
                .unwrap();
            self.tx_next += 1;
            self.dev.process_queue(TXQ as u16);
        }

        fn pump(&mut self) {
            for _ in 0..4 {
                for (fd, w) in self.dev.host_fds() {
                    self.dev.process_host_event(fd, true, w);
                }
            }
        }

        /// Packets the device put in the rx queue since last call.
        fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
            let all = used(&self.rxq);
            let new = all[self.rx_seen..].to_vec();
            self.rx_seen = all.len();
            new.into_iter()
                .map(|(id, len)| {
                    let mut b = vec![0u8; len as usize];
                    self.m
                        .read_slice(&mut b, GuestAddress(RX_BUF + u64::from(id) * 0x1000))
                        .unwrap();
                    (Header::parse(&b).unwrap(), b[HDR_LEN..].to_vec())
                })
                .collect()
        }
    }

    fn guest_hdr(src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
        Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    #[test]
    fn guest_connects_to_host_unix_socket() {
        let m = test_mem();
        let mut rig = Rig::new(&m);
        let host = UnixListener::bind(format!("{}_52", rig.uds.display())).unwrap();
        rig.send(guest_hdr(1000, 52, OP_REQUEST, 0), &[]);
        let p = rig.received();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0.op, OP_RESPONSE);
        assert_eq!(
            (p[0].0.src_port, p[0].0.dst_port, p[0].0.dst_cid),
            (52, 1000, GUEST)
        );
        let (mut peer, _) = host.accept().unwrap();
        rig.send(guest_hdr(1000, 52, OP_RW, 4), b"ping");
        let mut b = [0u8; 4];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        peer.write_all(b"pong").unwrap();
        rig.pump();
        let p = rig.received();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0.op, OP_RW);
        assert_eq!(p[0].1, b"pong");
        // Host closes: guest gets SHUTDOWN.
        drop(peer);
        rig.pump();
        let p = rig.received();
        assert_eq!(p[0].0.op, OP_SHUTDOWN);
        assert!(rig.dev.connections().is_empty());
    }

    #[test]
    fn guest_connect_to_missing_port_is_reset() {
        let m = test_mem();
        let mut rig = Rig::new(&m);
        rig.send(guest_hdr(1000, 99, OP_REQUEST, 0), &[]);
        let p = rig.received();
        assert_eq!(p[0].0.op, OP_RST);
    }

    #[test]
    fn host_connects_with_connect_handshake() {
        let m = test_mem();
        let mut rig = Rig::new(&m);
        let mut host = UnixStream::connect(&rig.uds).unwrap();
        // Data right after the handshake line waits until the guest accepts.
        host.write_all(b"CONNECT 1024\nearly").unwrap();
        rig.pump();
        let p = rig.received();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0.op, OP_REQUEST);
        assert_eq!(p[0].0.dst_port, 1024);
        let local = p[0].0.src_port;
        let mut resp = guest_hdr(1024, local, OP_RESPONSE, 0);
        resp.buf_alloc = 65536;
        rig.send(resp, &[]);
        let mut line = [0u8; 32];
        host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = host.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..n]).unwrap(),
            format!("OK {local}\n")
        );
        rig.pump();
        let p = rig.received();
        assert_eq!(p[0].1, b"early");
        // The handshake line is not guest data: fwd_cnt stays 0 until the guest sends some.
        assert_eq!(p[0].0.fwd_cnt, 0);
        host.write_all(b"hello guest").unwrap();
        rig.pump();
        let p = rig.received();
        assert_eq!(p[0].1, b"hello guest");
        rig.send(guest_hdr(1024, local, OP_RW, 3), b"abc");
        let mut b = [0u8; 3];
        host.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"abc");
    }

    #[test]
    fn restore_sends_transport_reset_event() {
        let m = test_mem();
        let evq = MockSplitQueue::create(&m, GuestAddress(0x10000), 16);
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-vsock").unwrap();
        let mut dev = Vsock::new(GUEST, &dir.as_path().join("v.sock")).unwrap();
        let rxq = <virtio_queue::Queue as virtio_queue::QueueT>::new(256).unwrap();
        let txq = <virtio_queue::Queue as virtio_queue::QueueT>::new(256).unwrap();
        let (irq, evt) = test_interrupt();
        dev.activate(m.clone(), vec![rxq, txq, evq.create_queue().unwrap()], irq)
            .unwrap();
        // No event buffer yet: the reset waits for one.
        dev.restored();
        assert!(used(&evq).is_empty());
        m.write_obj(0xffff_ffffu32, GuestAddress(0x60_0000))
            .unwrap();
        evq.add_desc_chains(&[desc(0x60_0000, 4, VRING_DESC_F_WRITE)], 0)
            .unwrap();
        dev.process_queue(EVQ as u16);
        assert_eq!(used(&evq), vec![(0, 4)]);
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(0x60_0000)).unwrap(),
            EVENT_TRANSPORT_RESET
        );
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn malformed_packets_do_not_panic() {
        let m = test_mem();
        let mut rig = Rig::new(&m);
        // Too short for a header.
        let addr = 0x20_0000;
        m.write_slice(&[1u8; 10], GuestAddress(addr)).unwrap();
        rig.txq.add_desc_chains(&[desc(addr, 10, 0)], 0).unwrap();
        rig.tx_next = 1;
        rig.dev.process_queue(TXQ as u16);
        // Length field larger than the buffer.
        rig.send(guest_hdr(1, 2, OP_RW, 5000), b"x");
        // Unknown type.
        let mut h = guest_hdr(1, 2, OP_REQUEST, 0);
        h.type_ = 9;
        rig.send(h, &[]);
        // Data for an unknown connection.
        rig.send(guest_hdr(7, 8, OP_RW, 1), b"y");
        let p = rig.received();
        assert!(p.iter().all(|(h, _)| h.op == OP_RST));
        assert_eq!(p.len(), 2);
        // A guest ignoring its credit gets its connection reset.
        let _host = UnixListener::bind(format!("{}_60", rig.uds.display())).unwrap();
        rig.send(guest_hdr(500, 60, OP_REQUEST, 0), &[]);
        let big = vec![7u8; 60000];
        for i in 0..8 {
            rig.send_at(
                0x80_0000 + i * 0x10000,
                guest_hdr(500, 60, OP_RW, 60000),
                &big,
            );
        }
        assert!(rig.dev.connections().is_empty());
        let ops: Vec<u16> = rig.received().iter().map(|(h, _)| h.op).collect();
        assert_eq!(ops.first(), Some(&OP_RESPONSE));
        assert!(ops.contains(&OP_RST), "{ops:?}");
        // Bad handshake lines close the stream.
        let mut host = UnixStream::connect(&rig.uds).unwrap();
        host.write_all(b"HELLO\n").unwrap();
        rig.pump();
        assert!(rig.received().is_empty());
    }
}
