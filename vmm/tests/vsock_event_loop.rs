//! Hybrid vsock through the VMM's real event loop: the test plays the guest driver (queues in
//! guest memory, registers through the virtio-mmio transport, notifications through the
//! device's ioeventfd as KVM would signal them) while a host process talks to the
//! unix socket with the `CONNECT <port>\n` / `OK <port>\n` handshake. The vCPU runs a tiny
//! guest that waits for IRQ3, which the test raises at the end to reset the VM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use hull_vmm::devices::virtio::mmio::reg;
use hull_vmm::devices::virtio::vsock::packet::*;
use hull_vmm::devices::BusDevice;
use hull_vmm::{VmExit, VmResources, Vmm};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 64;
const RX_BUF: u64 = 0x40_0000;
const TX_BUF: u64 = 0x50_0000;
const GUEST_CID: u64 = 3;

fn wait_used(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, n: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while q.used().idx().load() < n {
        assert!(
            Instant::now() < deadline,
            "device never used {n} rx buffers"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = mem;
}

fn rx_packet(
    mem: &GuestMemoryMmap,
    q: &MockSplitQueue<GuestMemoryMmap>,
    i: u16,
) -> (Header, Vec<u8>) {
    let e = q.used().ring().ref_at(i as usize).unwrap().load();
    let mut b = vec![0u8; e.len() as usize];
    mem.read_slice(&mut b, GuestAddress(RX_BUF + u64::from(e.id()) * 0x1000))
        .unwrap();
    (Header::parse(&b).unwrap(), b[HDR_LEN..].to_vec())
}

#[test]
fn host_and_guest_talk_through_the_event_loop() {
    if !kvm_available("host_and_guest_talk_through_the_event_loop") {
        return;
    }
    let (dir, kernel) = write_temp("irq.elf", &elf(&irq64(), false));
    let uds = dir.as_path().join("v.sock");
    let cfg = VmResources {
        kernel,
        mem_mib: 16,
        rng: false,
        vsock_uds: Some(uds.clone()),
        vsock_cid: GUEST_CID,
        ..VmResources::default()
    };
    let out = Capture::default();
    let mut vmm = Vmm::build(cfg, Box::new(out.clone())).unwrap();
    assert!(vmm.cmdline.contains("virtio_mmio.device=4K@0xd0000000:5"));
    let mem = vmm.memory().clone();
    let transport = vmm.virtio_devices()[0].transport.clone();
    // What KVM signals when the guest writes QueueNotify (the device's ioeventfd).
    let notify = vmm.virtio_devices()[0].notify.try_clone().unwrap();

    // The "driver": three queues in guest memory, rx buffers posted.
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x30_0000), QSIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x31_0000), QSIZE);
    let evq = MockSplitQueue::create(&mem, GuestAddress(0x32_0000), QSIZE);
    let bufs: Vec<RawDescriptor> = (0..16)
        .map(|i| RawDescriptor::from(SplitDescriptor::new(RX_BUF + i * 0x1000, 0x1000, 2, 0)))
        .collect();
    rxq.add_desc_chains(&bufs, 0).unwrap();
    {
        let mut t = transport.lock().unwrap();
        let mut w = |off: u64, v: u32| t.write(off, &v.to_le_bytes());
        w(reg::STATUS, 1);
        w(reg::STATUS, 3);
        w(reg::DRIVER_FEATURES_SEL, 1);
        w(reg::DRIVER_FEATURES, 1);
        w(reg::STATUS, 0xb);
        for (i, q) in [&rxq, &txq, &evq].iter().enumerate() {
            w(reg::QUEUE_SEL, i as u32);
            w(reg::QUEUE_NUM, u32::from(QSIZE));
            w(reg::QUEUE_DESC_LOW, q.desc_table_addr().0 as u32);
            w(reg::QUEUE_AVAIL_LOW, q.avail_addr().0 as u32);
            w(reg::QUEUE_USED_LOW, q.used_addr().0 as u32);
            w(reg::QUEUE_READY, 1);
        }
        w(reg::STATUS, 0xf);
    }
    assert!(transport.lock().unwrap().is_activated());

    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vmm.vm().fd().register_irqfd(&irq, 3).unwrap();
    let vm_thread = std::thread::spawn(move || vmm.run(Some(Duration::from_secs(60))).unwrap());

    let mut tx_next = 0u16;
    let mut guest_send = |h: Header, data: &[u8]| {
        let addr = TX_BUF + u64::from(tx_next) * 0x1000;
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(data);
        mem.write_slice(&b, GuestAddress(addr)).unwrap();
        txq.add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(
                addr,
                b.len() as u32,
                0,
                0,
            ))],
            tx_next,
        )
        .unwrap();
        tx_next += 1;
        notify.write(1).unwrap();
    };

    // Host connects and asks for guest port 1024.
    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    wait_used(&mem, &rxq, 1);
    let (req, _) = rx_packet(&mem, &rxq, 0);
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid, req.src_cid),
        (OP_REQUEST, 1024, GUEST_CID, HOST_CID)
    );
    let local = req.src_port;

    // Guest accepts.
    let hdr = |op, len| Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 1024,
        dst_port: local,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    };
    guest_send(hdr(OP_RESPONSE, 0), &[]);
    let mut reader = BufReader::new(host.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {local}\n"));

    // Host -> guest through epoll.
    host.write_all(b"ping").unwrap();
    wait_used(&mem, &rxq, 2);
    let (h, data) = rx_packet(&mem, &rxq, 1);
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"ping"[..]));

    // Guest -> host.
    guest_send(hdr(OP_RW, 4), b"pong");
    let mut b = [0u8; 4];
    reader.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");

    // Host closes: the guest is told with SHUTDOWN; a new host connection (likely reusing the
    // closed stream's fd number in the VMM) is served too.
    drop(reader);
    drop(host);
    wait_used(&mem, &rxq, 3);
    let (h, _) = rx_packet(&mem, &rxq, 2);
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    let mut host2 = UnixStream::connect(&uds).unwrap();
    host2.write_all(b"CONNECT 2048\n").unwrap();
    wait_used(&mem, &rxq, 4);
    let (req2, _) = rx_packet(&mem, &rxq, 3);
    assert_eq!((req2.op, req2.dst_port), (OP_REQUEST, 2048));
    assert_ne!(req2.src_port, local);

    // End: IRQ3 makes the guest reset the VM.
    irq.write(1).unwrap();
    assert_eq!(vm_thread.join().unwrap(), VmExit::Reset);
    assert_eq!(out.text(), "RIS");
}
