//! virtio-blk on a raw image file or a host block device, optionally read-only, with a serial;
//! or a disk slot: a device of size 0 whose backing the VMM fills and empties while the guest
//! runs ([`SlotHandle`]), telling the guest of the new capacity by a configuration change.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::warn;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::descriptor::ParsedChain;
use super::mmio::drain_queue;
use super::{
    activation, read_config_bytes, Activation, Interrupt, VirtioDevice, VirtioError, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: [u16; 1] = [256];
const SECTOR_SIZE: u64 = 512;
/// `VIRTIO_BLK_F_RO`.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
/// Request completed.
pub const S_OK: u8 = 0;
/// Request failed.
pub const S_IOERR: u8 = 1;
/// Request type not supported.
pub const S_UNSUPP: u8 = 2;
/// The longest serial (`VIRTIO_BLK_ID_BYTES`): `GET_ID` answers at most this many bytes.
pub const ID_BYTES: usize = 20;

/// What a block device reads and writes: an open image or device, or nothing (an empty
/// slot, size 0).
#[derive(Default)]
struct Backing {
    file: Option<File>,
    read_only: bool,
    sectors: u64,
}

impl Backing {
    /// Opens the raw image or device node at `path`.
    fn open(path: &Path, read_only: bool) -> Result<Backing, VirtioError> {
        let open_err = |source| VirtioError::Open {
            what: "block image",
            name: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        // A block device node's metadata says 0 bytes; its end is its size (a file's too).
        let len = (&file).seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Backing {
            file: Some(file),
            read_only,
            sectors: len / SECTOR_SIZE,
        })
    }
}

/// The block device.
pub struct Block {
    backing: Arc<Mutex<Backing>>,
    /// Offered `VIRTIO_BLK_F_RO` (fixed at boot: a slot is not, whatever it holds later).
    ro_feature: bool,
    id: [u8; ID_BYTES],
    active: Option<Activation>,
}

/// The VMM's hold on a disk slot's backing: fills and empties it while the guest runs. The
/// caller then tells the guest through the transport's configuration change.
#[derive(Clone)]
pub struct SlotHandle(Arc<Mutex<Backing>>);

impl SlotHandle {
    /// Puts the image or device at `path` into the slot (replacing what it held); returns
    /// its size in sectors. On error the slot is unchanged.
    pub fn fill(&self, path: &Path, read_only: bool) -> Result<u64, VirtioError> {
        let b = Backing::open(path, read_only)?;
        let sectors = b.sectors;
        *self.0.lock().expect("block backing lock") = b;
        Ok(sectors)
    }

    /// Empties the slot (size 0; requests in flight after this fail).
    pub fn empty(&self) {
        *self.0.lock().expect("block backing lock") = Backing::default();
    }

    /// The slot's size in sectors (0: empty).
    pub fn sectors(&self) -> u64 {
        self.0.lock().expect("block backing lock").sectors
    }
}

/// `serial` cut to [`ID_BYTES`], zero-padded.
fn id_bytes(serial: &str) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let n = serial.len().min(ID_BYTES);
    id[..n].copy_from_slice(&serial.as_bytes()[..n]);
    id
}

impl Block {
    /// Opens the raw image or device node at `path`; `serial` is what `GET_ID` answers (cut
    /// to [`ID_BYTES`]), the file's name without one.
    pub fn open(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Block, VirtioError> {
        let backing = Backing::open(path, read_only)?;
        let name = match serial {
            Some(s) => s.to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        Ok(Block {
            backing: Arc::new(Mutex::new(backing)),
            ro_feature: read_only,
            id: id_bytes(&name),
            active: None,
        })
    }

    /// An empty disk slot (size 0) whose `GET_ID` answers `serial`, and the handle that fills
    /// it. The slot never offers `VIRTIO_BLK_F_RO`: a read-only disk put into it refuses
    /// writes instead.
    pub fn slot(serial: &str) -> (Block, SlotHandle) {
        let backing = Arc::new(Mutex::new(Backing::default()));
        let block = Block {
            backing: backing.clone(),
            ro_feature: false,
            id: id_bytes(serial),
            active: None,
        };
        (block, SlotHandle(backing))
    }

    /// Disk size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.backing.lock().expect("block backing lock").sectors
    }

    fn execute(&self, mem: &GuestMemoryMmap, chain: &ParsedChain) -> u32 {
        // Header: type u32, reserved u32, sector u64 (16 bytes, readable); status byte last.
        let Some(status_seg) = chain.segments.last().filter(|s| s.write && s.len >= 1) else {
            warn!("block request without status byte");
            return 0;
        };
        let status_addr = status_seg.addr.unchecked_add_len(status_seg.len - 1);
        let backing = self.backing.lock().expect("block backing lock");
        let (status, written) = match self.request(&backing, mem, chain) {
            Ok(n) => (S_OK, n),
            Err(s) => (s, 0),
        };
        if mem.write_obj(status, status_addr).is_err() {
            return 0;
        }
        written + 1
    }

    fn request(&self, b: &Backing, mem: &GuestMemoryMmap, chain: &ParsedChain) -> Result<u32, u8> {
        let header = chain
            .segments
            .first()
            .filter(|s| !s.write && s.len >= 16)
            .ok_or(S_IOERR)?;
        let kind: u32 = mem.read_obj(header.addr).map_err(|_| S_IOERR)?;
        let sector: u64 = mem
            .read_obj(header.addr.unchecked_add_len(8))
            .map_err(|_| S_IOERR)?;
        let last = chain.segments.len() - 1;
        let data: Vec<_> = chain.segments[1..]
            .iter()
            .enumerate()
            .map(|(i, s)| (i + 1, s))
            .collect();
        let mut offset = sector.checked_mul(SECTOR_SIZE).ok_or(S_IOERR)?;
        match kind {
            T_IN => {
                let mut written = 0u32;
                for (i, seg) in data {
                    // The status byte shares the last writable buffer.
                    let len = if i == last { seg.len - 1 } else { seg.len };
                    if !seg.write {
                        return Err(S_IOERR);
                    }
                    let file = check_bounds(b, offset, len)?;
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, offset).map_err(|_| S_IOERR)?;
                    mem.write_slice(&buf, seg.addr).map_err(|_| S_IOERR)?;
                    offset += u64::from(len);
                    written += len;
                }
                Ok(written)
            }
            T_OUT => {
                if b.read_only {
                    return Err(S_IOERR);
                }
                for (i, seg) in data {
                    if i == last {
                        break;
                    }
                    if seg.write {
                        return Err(S_IOERR);
                    }
                    let file = check_bounds(b, offset, seg.len)?;
                    let mut buf = vec![0u8; seg.len as usize];
                    mem.read_slice(&mut buf, seg.addr).map_err(|_| S_IOERR)?;
                    file.write_all_at(&buf, offset).map_err(|_| S_IOERR)?;
                    offset += u64::from(seg.len);
                }
                Ok(0)
            }
            T_FLUSH => {
                if let Some(f) = b.file.as_ref().filter(|_| !b.read_only) {
                    f.sync_all().map_err(|_| S_IOERR)?;
                }
                Ok(0)
            }
            T_GET_ID => {
                let seg = data
                    .first()
                    .map(|(_, s)| *s)
                    .filter(|s| s.write)
                    .ok_or(S_IOERR)?;
                let n = (seg.len as usize).min(ID_BYTES);
                mem.write_slice(&self.id[..n], seg.addr)
                    .map_err(|_| S_IOERR)?;
                Ok(n as u32)
            }
            _ => Err(S_UNSUPP),
        }
    }
}

/// The backing file, when `len` bytes at `offset` lie inside it.
fn check_bounds(b: &Backing, offset: u64, len: u32) -> Result<&File, u8> {
    let end = offset.checked_add(u64::from(len)).ok_or(S_IOERR)?;
    match &b.file {
        Some(f) if end <= b.sectors * SECTOR_SIZE => Ok(f),
        _ => Err(S_IOERR),
    }
}

trait AddLen {
    fn unchecked_add_len(&self, n: u32) -> vm_memory::GuestAddress;
}
impl AddLen for vm_memory::GuestAddress {
    fn unchecked_add_len(&self, n: u32) -> vm_memory::GuestAddress {
        // Segments were validated to lie inside guest memory, so this cannot overflow.
        vm_memory::GuestAddress(self.0 + u64::from(n))
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        let ro = if self.ro_feature { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Config space: capacity (u64 sectors) first; the rest reads as zero.
        let cfg = self.sectors().to_le_bytes();
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
    fn process_queue(&mut self, _index: u16) {
        let Some((mem, mut queues, irq)) = self.active.take() else {
            return;
        };
        let used = drain_queue(&mut queues[0], &mem, "virtio-blk", |chain| {
            Some(self.execute(&mem, chain))
        });
        if used {
            irq.signal_used_queue();
        }
        self.active = Some((mem, queues, irq));
    }
    fn reset(&mut self) {
        self.active = None;
    }
    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.1[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use std::io::Write;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::tempfile::TempFile;

    fn image() -> TempFile {
        let t = TempFile::new().unwrap();
        let mut data = vec![0u8; 4096];
        data[512..516].copy_from_slice(b"SEC1");
        t.as_file().write_all(&data).unwrap();
        t
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(0x10_0000)).unwrap();
        m.write_obj(0u32, GuestAddress(0x10_0004)).unwrap();
        m.write_obj(sector, GuestAddress(0x10_0008)).unwrap();
    }

    fn run(
        dev: &mut Block,
        m: &GuestMemoryMmap,
        chain: &[virtio_queue::desc::RawDescriptor],
    ) -> (Vec<(u32, u32)>, u8) {
        let vq = MockSplitQueue::new(m, 16);
        vq.build_desc_chain(chain).unwrap();
        let (irq, _evt) = test_interrupt();
        dev.activate(m.clone(), vec![vq.create_queue().unwrap()], irq)
            .unwrap();
        dev.process_queue(0);
        let st: u8 = m.read_obj(GuestAddress(0x30_0000)).unwrap();
        (used(&vq), st)
    }

    #[test]
    fn reads_a_sector() {
        let img = image();
        let mut dev = Block::open(img.as_path(), false, None).unwrap();
        assert_eq!(dev.sectors(), 8);
        let m = test_mem();
        header(&m, T_IN, 1);
        let (u, st) = run(
            &mut dev,
            &m,
            &[
                desc(0x10_0000, 16, 0),
                desc(0x20_0000, 512, VRING_DESC_F_WRITE),
                desc(0x30_0000, 1, VRING_DESC_F_WRITE),
            ],
        );
        assert_eq!(st, S_OK);
        assert_eq!(u, vec![(0, 513)]);
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&b, b"SEC1");
    }

    #[test]
    fn writes_a_sector_and_refuses_when_read_only() {
        let img = image();
        let m = test_mem();
        m.write_slice(b"NEW!", GuestAddress(0x20_0000)).unwrap();
        header(&m, T_OUT, 2);
        let chain = [
            desc(0x10_0000, 16, 0),
            desc(0x20_0000, 512, 0),
            desc(0x30_0000, 1, VRING_DESC_F_WRITE),
        ];
        let mut ro = Block::open(img.as_path(), true, None).unwrap();
        assert_ne!(ro.avail_features() & VIRTIO_BLK_F_RO, 0);
        assert_eq!(run(&mut ro, &m, &chain).1, S_IOERR);
        let mut rw = Block::open(img.as_path(), false, None).unwrap();
        assert_eq!(run(&mut rw, &m, &chain).1, S_OK);
        let mut b = [0u8; 4];
        img.as_file().read_exact_at(&mut b, 1024).unwrap();
        assert_eq!(&b, b"NEW!");
    }

    #[test]
    fn out_of_bounds_sector_fails() {
        let img = image();
        let mut dev = Block::open(img.as_path(), false, None).unwrap();
        let m = test_mem();
        header(&m, T_IN, 8);
        let (_, st) = run(
            &mut dev,
            &m,
            &[
                desc(0x10_0000, 16, 0),
                desc(0x20_0000, 512, VRING_DESC_F_WRITE),
                desc(0x30_0000, 1, VRING_DESC_F_WRITE),
            ],
        );
        assert_eq!(st, S_IOERR);
        header(&m, T_IN, u64::MAX / 2);
        let (_, st) = run(
            &mut dev,
            &m,
            &[
                desc(0x10_0000, 16, 0),
                desc(0x20_0000, 512, VRING_DESC_F_WRITE),
                desc(0x30_0000, 1, VRING_DESC_F_WRITE),
            ],
        );
        assert_eq!(st, S_IOERR);
    }

    #[test]
    fn unknown_request_is_unsupported_and_get_id_works() {
        let img = image();
        let mut dev = Block::open(img.as_path(), false, None).unwrap();
        let m = test_mem();
        header(&m, 77, 0);
        let (_, st) = run(
            &mut dev,
            &m,
            &[
                desc(0x10_0000, 16, 0),
                desc(0x30_0000, 1, VRING_DESC_F_WRITE),
            ],
        );
        assert_eq!(st, S_UNSUPP);
        header(&m, T_GET_ID, 0);
        let (u, st) = run(
            &mut dev,
            &m,
            &[
                desc(0x10_0000, 16, 0),
                desc(0x20_0000, 20, VRING_DESC_F_WRITE),
                desc(0x30_0000, 1, VRING_DESC_F_WRITE),
            ],
        );
        assert_eq!(st, S_OK);
        assert_eq!(u[0].1, 21);
    }

    #[test]
    fn a_slot_reads_nothing_until_filled_then_its_disk_and_a_read_only_one_refuses_writes() {
        let img = image();
        let m = test_mem();
        let (mut dev, slot) = Block::slot("hull-slot-1");
        assert_eq!(dev.sectors(), 0);
        assert_eq!(dev.avail_features() & VIRTIO_BLK_F_RO, 0);
        let read = [
            desc(0x10_0000, 16, 0),
            desc(0x20_0000, 512, VRING_DESC_F_WRITE),
            desc(0x30_0000, 1, VRING_DESC_F_WRITE),
        ];
        header(&m, T_IN, 1);
        assert_eq!(run(&mut dev, &m, &read).1, S_IOERR, "empty slot");
        assert_eq!(slot.fill(img.as_path(), true).unwrap(), 8);
        assert_eq!(dev.sectors(), 8);
        header(&m, T_IN, 1);
        assert_eq!(run(&mut dev, &m, &read).1, S_OK);
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&b, b"SEC1");
        header(&m, T_OUT, 1);
        let write = [
            desc(0x10_0000, 16, 0),
            desc(0x20_0000, 512, 0),
            desc(0x30_0000, 1, VRING_DESC_F_WRITE),
        ];
        assert_eq!(run(&mut dev, &m, &write).1, S_IOERR, "read-only disk");
        slot.fill(img.as_path(), false).unwrap();
        header(&m, T_OUT, 1);
        assert_eq!(run(&mut dev, &m, &write).1, S_OK);
        slot.empty();
        assert_eq!(dev.sectors(), 0);
        header(&m, T_IN, 0);
        assert_eq!(run(&mut dev, &m, &read).1, S_IOERR, "emptied slot");
    }

    #[test]
    fn get_id_answers_the_given_serial_zero_padded() {
        let img = image();
        let m = test_mem();
        let get_id = |dev: &mut Block| {
            m.write_slice(&[0xffu8; ID_BYTES], GuestAddress(0x20_0000))
                .unwrap();
            header(&m, T_GET_ID, 0);
            let (_, st) = run(
                dev,
                &m,
                &[
                    desc(0x10_0000, 16, 0),
                    desc(0x20_0000, ID_BYTES as u32, VRING_DESC_F_WRITE),
                    desc(0x30_0000, 1, VRING_DESC_F_WRITE),
                ],
            );
            assert_eq!(st, S_OK);
            let mut id = [0u8; ID_BYTES];
            m.read_slice(&mut id, GuestAddress(0x20_0000)).unwrap();
            id
        };
        let mut dev = Block::open(img.as_path(), true, Some("hull-disk-1")).unwrap();
        let mut want = [0u8; ID_BYTES];
        want[..11].copy_from_slice(b"hull-disk-1");
        assert_eq!(get_id(&mut dev), want);
        // A serial of the full 20 bytes has no terminating zero (as the spec allows).
        let mut full = Block::open(img.as_path(), false, Some("abcdefghijklmnopqrst")).unwrap();
        assert_eq!(&get_id(&mut full), b"abcdefghijklmnopqrst");
    }
}
