//! Containers' root filesystems on disks (`[vm] rootfs = "disk"`, or the annotation
//! [`ROOTFS_ANNOTATION`] on a pod's first container). At create, the container's rootfs and
//! the host files its spec bind-mounts are bind-mounted into a staging dir laid out as the
//! guest sees a container's dir (`rootfs/`, `mounts/N`, the console's tools), `mkfs.ext4 -d`
//! copies that into a sparse image in the pod's dir, and the image fills one of the VM's disk
//! slots; the agent mounts it, found by the slot's serial, at `/run/hull/shared/<id>`. Nothing
//! of the host is mounted in the guest, so the VM can be migrated (checkpointed: QEMU refuses
//! while a 9p share is mounted) and a backend without a shared filesystem can run the pod.
//! Writes stay in the image (the host's rootfs does not see them); the image goes with the
//! container.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use hull_agent_client::Storage;
use hull_hypervisor::Disk;
use oci_spec::runtime::Spec;

use super::devices::Slot;
use super::{vm_err, VmPod, GUEST_SHARED};
use crate::config::RootfsMode;
use crate::error::{Error, Result};

/// The annotation choosing where a vm pod's root filesystems are: `share` (virtio-9p) or
/// `disk` (an ext4 image per container). Read on the pod's first container.
pub const ROOTFS_ANNOTATION: &str = "io.hull.rootfs";
/// Disk slots a disk-mode pod's VM has beyond `[vm] disk_slots`, for its containers' images.
pub(super) const ROOTFS_SLOTS: usize = 3;
/// Free space an image has beyond its files, at least (sparse: unused space costs nothing).
const MIN_FREE: u64 = 1 << 30;

impl VmPod {
    /// Where pod's root filesystems are, as its first container's spec asks, else as the
    /// config says.
    pub(super) fn rootfs_mode(&self, spec: &Spec) -> Result<RootfsMode> {
        match spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ROOTFS_ANNOTATION))
        {
            Some(v) => RootfsMode::parse(v)
                .map_err(|e| Error::invalid(format!("pod {}: annotation {e}", self.id))),
            None => Ok(self.config.rootfs),
        }
    }

    /// Where the running pod's root filesystems are (`share` when its VM is not running).
    pub(super) fn running_rootfs(&self) -> RootfsMode {
        self.inner
            .lock()
            .vm
            .as_ref()
            .map_or(RootfsMode::Share, |v| v.rootfs)
    }

    /// Container `id`'s rootfs image, built from its bundle's rootfs and bind sources, put
    /// into a free disk slot of the running VM: the guest's spec, its rootfs path in the
    /// guest, and the storage the agent mounts it as. On error nothing is left.
    pub(super) fn rootfs_disk(
        &self,
        id: &str,
        bundle: &Path,
        spec: Spec,
    ) -> Result<(Spec, String, Storage)> {
        let staging = self.dir.join("staging").join(id);
        let image = self.dir.join("rootfs").join(format!("{id}.img"));
        let mut mounts = Vec::new();
        let built = (|| {
            let out = self.guest_spec(id, bundle, spec, &staging, &mut mounts)?;
            if self.config.debug_console {
                super::console::install_busybox(
                    Path::new(super::console::BUSYBOX),
                    &staging.join(super::console::TOOLS),
                )?;
            }
            make_image(&staging, &image)?;
            Ok(out)
        })();
        Self::unmount_all(&mounts);
        remove_staging(&staging);
        let (gspec, guest_rootfs) = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = fs::remove_file(&image);
                return Err(e);
            }
        };
        let slot = {
            let mut g = self.inner.lock();
            let placed = (|| {
                let vm = g
                    .vm
                    .as_mut()
                    .ok_or_else(|| Error::Vm(format!("pod {}: its vm is not running", self.id)))?;
                let slot = vm.free_slot().ok_or_else(|| {
                    Error::invalid(format!(
                        "container {id}: the pod's VM has no free disk slot left for its rootfs \
                         image ({} slots: [vm] disk_slots + {ROOTFS_SLOTS})",
                        vm.slots.len()
                    ))
                })?;
                let disk = Disk {
                    path: image.clone(),
                    read_only: false,
                    shared: false,
                };
                vm.hv.attach_disk(slot, &disk).map_err(|e| {
                    vm_err(format!("add the rootfs image of {id} to the pod's vm"), e)
                })?;
                vm.slots[slot] = Slot::Rootfs {
                    container: id.to_string(),
                    image: image.clone(),
                };
                Ok(slot)
            })();
            match placed {
                Ok(s) => s,
                Err(e) => {
                    drop(g);
                    let _ = fs::remove_file(&image);
                    return Err(e);
                }
            }
        };
        tracing::info!(pod = %self.id, container = %id, slot, image = %image.display(), "rootfs image in a disk slot");
        let storage = Storage {
            source: format!("serial:{}", hull_hypervisor::disk_slot_serial(slot)),
            fstype: "ext4".into(),
            // The inode tables were not zeroed by mkfs (lazy_itable_init): nothing needs them
            // zeroed, so the guest does not spend its CPU on it.
            options: vec!["noinit_itable".into()],
            mount_point: format!("{GUEST_SHARED}/{id}"),
            ..Default::default()
        };
        Ok((gspec, guest_rootfs, storage))
    }
}

/// Bytes and files under `dir` (not following symlinks; through bind mounts).
fn tree_size(dir: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(&d, e))?;
            let m = fs::symlink_metadata(e.path()).map_err(|err| Error::io(e.path(), err))?;
            files += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    Ok((bytes, files))
}

/// A sparse ext4 image at `image` holding `staging`'s tree (owners, modes, links, device
/// nodes as they are), with room to write: at least [`MIN_FREE`], at least as much again.
fn make_image(staging: &Path, image: &Path) -> Result<()> {
    let (used, files) = tree_size(staging)?;
    let size = (used + used.max(MIN_FREE)).div_ceil(1 << 20) << 20;
    if let Some(p) = image.parent() {
        fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    let f = fs::File::create(image).map_err(|e| Error::io(image, e))?;
    f.set_len(size).map_err(|e| Error::io(image, e))?;
    drop(f);
    let started = std::time::Instant::now();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-N"])
        .arg((files * 2 + 16384).to_string())
        .args([
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
            "-d",
        ])
        .arg(staging)
        .arg(image)
        .output()
        .map_err(|e| {
            Error::Vm(format!(
                "rootfs = \"disk\" needs mkfs.ext4 (apt-get install e2fsprogs): {e}"
            ))
        })?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Vm(format!(
            "build the rootfs image {}: mkfs.ext4: {}",
            image.display(),
            why.lines().last().unwrap_or("failed").trim()
        )));
    }
    tracing::debug!(image = %image.display(), used, files, size, elapsed = ?started.elapsed(), "rootfs image built");
    Ok(())
}

/// Removes the staging dir once its bind mounts are gone; never while anything is still
/// mounted under it (removing would recurse into the host's rootfs).
fn remove_staging(staging: &Path) {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let still = mounted.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(mp).starts_with(staging))
    });
    if still {
        tracing::warn!(staging = %staging.display(), "staging dir still has mounts: left in place");
        return;
    }
    let _ = fs::remove_dir_all(staging);
}

/// The first bytes of a packed image ([`pack_image`]).
const PACKED_MAGIC: &[u8; 16] = b"hull-sparse-v1\n\0";

/// The data extents of `f` (`SEEK_DATA`/`SEEK_HOLE`), as (offset, length), up to `len`.
fn extents(f: &fs::File, len: u64, path: &Path) -> Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on a descriptor `f` owns.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(Error::io(path, e));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(Error::io(path, std::io::Error::last_os_error()));
        }
        out.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    Ok(out)
}

/// Writes image `src` to `dst` as a packed file: a header, the image's size, then each data
/// extent as (offset, length, bytes). An image is mostly holes; a packed one holds only its
/// data, whatever copies it later (a tar of the checkpoint, containerd's content store).
pub(super) fn pack_image(src: &Path, dst: &Path) -> Result<()> {
    use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
    let mut from = fs::File::open(src).map_err(|e| Error::io(src, e))?;
    let len = from.metadata().map_err(|e| Error::io(src, e))?.len();
    let to = fs::File::create(dst).map_err(|e| Error::io(dst, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, to);
    let werr = |e| Error::io(dst, e);
    w.write_all(PACKED_MAGIC).map_err(werr)?;
    w.write_all(&len.to_le_bytes()).map_err(werr)?;
    let mut buf = vec![0u8; 1 << 20];
    for (off, n) in extents(&from, len, src)? {
        w.write_all(&off.to_le_bytes()).map_err(werr)?;
        w.write_all(&n.to_le_bytes()).map_err(werr)?;
        from.seek(SeekFrom::Start(off))
            .map_err(|e| Error::io(src, e))?;
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            from.read_exact(&mut buf[..k])
                .map_err(|e| Error::io(src, e))?;
            w.write_all(&buf[..k]).map_err(werr)?;
            left -= k as u64;
        }
    }
    let to = w.into_inner().map_err(|e| Error::io(dst, e.into_error()))?;
    to.sync_all().map_err(|e| Error::io(dst, e))
}

/// Writes the image packed in `src` ([`pack_image`]) to `dst`, a sparse file again. A file
/// that is not a packed image, or is cut short, is an error naming it.
pub(super) fn unpack_image(src: &Path, dst: &Path) -> Result<()> {
    use std::io::{BufReader, Read, Seek, SeekFrom, Write};
    let bad = |why: &str| {
        Error::invalid(format!(
            "{}: not a packed rootfs image ({why})",
            src.display()
        ))
    };
    let from = fs::File::open(src).map_err(|e| Error::io(src, e))?;
    let total = from.metadata().map_err(|e| Error::io(src, e))?.len();
    let mut r = BufReader::with_capacity(1 << 20, from);
    let mut magic = [0u8; 16];
    let mut word = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if &magic != PACKED_MAGIC {
        return Err(bad("no header"));
    }
    r.read_exact(&mut word).map_err(|_| bad("too short"))?;
    let len = u64::from_le_bytes(word);
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    let mut to = fs::File::create(dst).map_err(|e| Error::io(dst, e))?;
    to.set_len(len).map_err(|e| Error::io(dst, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 24u64;
    while read < total {
        r.read_exact(&mut word).map_err(|_| bad("cut short"))?;
        let off = u64::from_le_bytes(word);
        r.read_exact(&mut word).map_err(|_| bad("cut short"))?;
        let n = u64::from_le_bytes(word);
        if off.checked_add(n).is_none_or(|end| end > len) {
            return Err(bad("an extent past its end"));
        }
        to.seek(SeekFrom::Start(off))
            .map_err(|e| Error::io(dst, e))?;
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..k]).map_err(|_| bad("cut short"))?;
            to.write_all(&buf[..k]).map_err(|e| Error::io(dst, e))?;
            left -= k as u64;
        }
        read += 16 + n;
    }
    to.sync_all().map_err(|e| Error::io(dst, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn a_packed_image_holds_its_data_and_unpacks_sparse_and_equal() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.img");
        let mut f = fs::File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        for (off, text) in [
            (0u64, &b"head"[..]),
            (10 << 20, b"middle"),
            ((64 << 20) - 4, b"tail"),
        ] {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(text).unwrap();
        }
        drop(f);
        let packed = d.path().join("a.packed");
        pack_image(&img, &packed).unwrap();
        assert!(
            fs::metadata(&packed).unwrap().len() < 1 << 20,
            "only the data is packed"
        );
        let back = d.path().join("b.img");
        unpack_image(&packed, &back).unwrap();
        assert_eq!(fs::read(&img).unwrap(), fs::read(&back).unwrap());
        assert!(
            fs::metadata(&back).unwrap().blocks() * 512 < 1 << 20,
            "unpacked sparse"
        );

        fs::write(&packed, b"hull-sparse-v1\n\0\x01").unwrap();
        let e = unpack_image(&packed, &back).unwrap_err().to_string();
        assert!(e.contains("not a packed rootfs image"), "{e}");
        fs::write(&packed, b"something else entirely").unwrap();
        assert!(unpack_image(&packed, &back).is_err());
    }
}
