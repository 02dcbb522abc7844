//! Boot set-up on a real kernel: Debian's bzImage (`linux-image-amd64`, /boot/vmlinuz-*) and
//! its initrd are loaded, and the zero page, e820 map, command line and initrd placement are
//! checked in guest memory; the vmlinux ELF inside it (extracted with `xz`) is loaded through
//! its PVH note and `hvm_start_info` is checked. The guests are not run: this host's nested KVM
//! cannot boot Linux.

mod common;

use std::path::PathBuf;

use hull_vmm::arch::regs::BootEntry;
use hull_vmm::{VmResources, Vmm};
use vm_memory::{Bytes, GuestAddress};

fn debian_kernel() -> Option<(PathBuf, Option<PathBuf>)> {
    if let Ok(k) = std::env::var("HULL_TEST_BZIMAGE") {
        return Some((
            k.into(),
            std::env::var("HULL_TEST_INITRD").ok().map(Into::into),
        ));
    }
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let kernel = kernels.pop()?;
    let version = kernel
        .file_name()?
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let initrd = PathBuf::from(format!("/boot/initrd.img-{version}"));
    Some((kernel, initrd.exists().then_some(initrd)))
}

fn rd<T: vm_memory::ByteValued>(vmm: &Vmm, addr: u64) -> T {
    vmm.memory().read_obj(GuestAddress(addr)).unwrap()
}

const ZP: u64 = 0x7000;

#[test]
fn debian_bzimage_zero_page_e820_cmdline_and_initrd() {
    if !common::kvm_available("debian_bzimage_zero_page_e820_cmdline_and_initrd") {
        return;
    }
    let Some((kernel, initrd)) = debian_kernel() else {
        common::skip(
            "debian_bzimage_zero_page_e820_cmdline_and_initrd",
            "no /boot/vmlinuz-* (apt-get install linux-image-amd64, or set HULL_TEST_BZIMAGE)",
        );
        return;
    };
    let mem_mib = 512;
    let cfg = VmResources {
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        mem_mib,
        cmdline: "console=ttyS0 reboot=k panic=1 pci=off".into(),
        rng: true,
        ..VmResources::default()
    };
    let vmm = Vmm::build(cfg, Box::new(std::io::sink())).unwrap();
    let image = std::fs::read(&kernel).unwrap();

    // bzImage: the protected-mode kernel sits at 1 MiB, entered at startup_64 (+0x200).
    assert_eq!(vmm.entry, BootEntry::Linux64 { entry: 0x10_0200 });
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let pm_off = (setup_sects + 1) * 512;
    let mut head = [0u8; 256];
    vmm.memory()
        .read_slice(&mut head, GuestAddress(0x10_0000))
        .unwrap();
    assert_eq!(&head[..], &image[pm_off..pm_off + 256]);

    // Zero page: setup header copied from the image, loader fields filled in.
    assert_eq!(rd::<u16>(&vmm, ZP + 0x1fe), 0xaa55);
    assert_eq!(rd::<u32>(&vmm, ZP + 0x202), 0x5372_6448, "HdrS");
    assert!(
        rd::<u16>(&vmm, ZP + 0x206) >= 0x020c,
        "boot protocol >= 2.12"
    );
    assert_eq!(rd::<u8>(&vmm, ZP + 0x210), 0xff, "type_of_loader");
    assert_eq!(rd::<u8>(&vmm, ZP + 0x211) & 1, 1, "LOADED_HIGH");

    // Command line at 0x20000, with the virtio-mmio device appended.
    let cmd_ptr = rd::<u32>(&vmm, ZP + 0x228);
    assert_eq!(cmd_ptr, 0x20000);
    let mut cmd = vec![0u8; 256];
    vmm.memory()
        .read_slice(&mut cmd, GuestAddress(u64::from(cmd_ptr)))
        .unwrap();
    let cmd =
        String::from_utf8_lossy(&cmd[..cmd.iter().position(|b| *b == 0).unwrap()]).to_string();
    assert_eq!(
        cmd,
        "console=ttyS0 reboot=k panic=1 pci=off virtio_mmio.device=4K@0xd0000000:5"
    );
    assert_eq!(
        rd::<u32>(&vmm, ZP + 0x238),
        cmd.len() as u32 + 1,
        "cmdline_size"
    );

    // e820: low RAM below the EBDA, then 1 MiB to the end of memory.
    let entries = rd::<u8>(&vmm, ZP + 0x1e8);
    assert_eq!(entries, 2);
    let e820 = |i: u64| {
        let base = ZP + 0x2d0 + i * 20;
        (
            rd::<u64>(&vmm, base),
            rd::<u64>(&vmm, base + 8),
            rd::<u32>(&vmm, base + 16),
        )
    };
    assert_eq!(e820(0), (0, 0x9fc00, 1));
    assert_eq!(e820(1), (0x10_0000, (mem_mib << 20) - 0x10_0000, 1));

    // Initrd: page aligned at the top of RAM, below initrd_addr_max, after the kernel, intact.
    match initrd {
        Some(path) => {
            let data = std::fs::read(&path).unwrap();
            let addr = u64::from(rd::<u32>(&vmm, ZP + 0x218));
            let size = u64::from(rd::<u32>(&vmm, ZP + 0x21c));
            assert_eq!(size, data.len() as u64);
            assert_eq!(addr % 4096, 0);
            assert!(addr + size <= mem_mib << 20);
            assert!(
                (mem_mib << 20) - (addr + size) < 4096,
                "initrd at the top of RAM"
            );
            assert!(
                addr + size - 1 <= u64::from(rd::<u32>(&vmm, ZP + 0x22c)),
                "below initrd_addr_max"
            );
            assert!(addr > 0x10_0000 + image.len() as u64);
            let mut first = vec![0u8; 4096];
            vmm.memory()
                .read_slice(&mut first, GuestAddress(addr))
                .unwrap();
            assert_eq!(&first[..], &data[..4096]);
            let mut last = vec![0u8; 4096];
            vmm.memory()
                .read_slice(&mut last, GuestAddress(addr + size - 4096))
                .unwrap();
            assert_eq!(&last[..], &data[data.len() - 4096..]);
        }
        None => eprintln!(
            "no initrd next to {}: initrd placement not checked",
            kernel.display()
        ),
    }

    // MP table for the vCPU.
    let mut sig = [0u8; 4];
    vmm.memory()
        .read_slice(&mut sig, GuestAddress(0x9fc00))
        .unwrap();
    assert_eq!(&sig, b"_MP_");
}

/// The vmlinux ELF inside an xz-compressed bzImage, extracted with `xz(1)`.
fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    let at = bzimage
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .ok_or("no xz stream in the bzImage (kernel not built with CONFIG_KERNEL_XZ)")?;
    let mut child = std::process::Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run xz: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let payload = bzimage[at..].to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&payload);
    });
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    writer.join().unwrap();
    if out.stdout.len() < 64 || &out.stdout[..4] != b"\x7fELF" {
        return Err(format!("xz produced no ELF ({} bytes)", out.stdout.len()));
    }
    Ok(out.stdout)
}

#[test]
fn debian_vmlinux_pvh_start_info() {
    if !common::kvm_available("debian_vmlinux_pvh_start_info") {
        return;
    }
    let Some((kernel, initrd)) = debian_kernel() else {
        common::skip(
            "debian_vmlinux_pvh_start_info",
            "no /boot/vmlinuz-* (apt-get install linux-image-amd64)",
        );
        return;
    };
    let vmlinux = match extract_vmlinux(&std::fs::read(&kernel).unwrap()) {
        Ok(v) => v,
        Err(e) => {
            common::skip("debian_vmlinux_pvh_start_info", &e.to_string());
            return;
        }
    };
    let (_dir, path) = common::write_temp("vmlinux", &vmlinux);
    let mem_mib = 512;
    let cfg = VmResources {
        kernel: path,
        initrd: initrd.clone(),
        mem_mib,
        cmdline: "console=ttyS0 reboot=k panic=1 pci=off".into(),
        rng: false,
        ..VmResources::default()
    };
    let vmm = Vmm::build(cfg, Box::new(std::io::sink())).unwrap();

    // Every PT_LOAD segment is at its physical address.
    let u16_at = |o: usize| u16::from_le_bytes(vmlinux[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(vmlinux[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(vmlinux[o..o + 8].try_into().unwrap());
    let (phoff, phnum) = (u64_at(0x20) as usize, u16_at(0x38) as usize);
    let mut kernel_range = (u64::MAX, 0u64);
    for i in 0..phnum {
        let ph = phoff + i * 56;
        if u32_at(ph) != 1 || u64_at(ph + 32) == 0 {
            continue;
        }
        let (off, paddr, filesz) = (u64_at(ph + 8) as usize, u64_at(ph + 24), u64_at(ph + 32));
        let n = (filesz as usize).min(4096);
        let mut got = vec![0u8; n];
        vmm.memory()
            .read_slice(&mut got, GuestAddress(paddr))
            .unwrap();
        assert_eq!(&got[..], &vmlinux[off..off + n], "segment at {paddr:#x}");
        kernel_range = (
            kernel_range.0.min(paddr),
            kernel_range.1.max(paddr + u64_at(ph + 40)),
        );
    }

    // Debian builds CONFIG_PVH: the note's 32-bit entry is used, inside the kernel image.
    let BootEntry::Pvh { entry } = vmm.entry else {
        panic!("expected a PVH entry, got {:?}", vmm.entry);
    };
    assert!(
        entry >= kernel_range.0 && entry < kernel_range.1,
        "{entry:#x} in {kernel_range:x?}"
    );

    // hvm_start_info at 0x6000: magic, version, command line, memory map, initrd module.
    const SI: u64 = 0x6000;
    assert_eq!(rd::<u32>(&vmm, SI), 0x336e_c578);
    assert_eq!(rd::<u32>(&vmm, SI + 4), 1);
    let cmd_ptr = rd::<u64>(&vmm, SI + 24);
    let mut cmd = vec![0u8; 64];
    vmm.memory()
        .read_slice(&mut cmd, GuestAddress(cmd_ptr))
        .unwrap();
    assert!(cmd.starts_with(b"console=ttyS0 reboot=k panic=1 pci=off\0"));
    let (memmap, entries) = (rd::<u64>(&vmm, SI + 40), rd::<u32>(&vmm, SI + 48));
    assert_eq!(entries, 2);
    assert_eq!(rd::<u64>(&vmm, memmap + 24), 0x10_0000);
    assert_eq!(rd::<u64>(&vmm, memmap + 32), (mem_mib << 20) - 0x10_0000);
    assert_eq!(rd::<u32>(&vmm, memmap + 40), 1);
    if let Some(initrd) = initrd {
        let size = std::fs::metadata(initrd).unwrap().len();
        assert_eq!(rd::<u32>(&vmm, SI + 12), 1, "nr_modules");
        let modlist = rd::<u64>(&vmm, SI + 16);
        let (addr, msize) = (rd::<u64>(&vmm, modlist), rd::<u64>(&vmm, modlist + 8));
        assert_eq!(msize, size);
        assert_eq!(addr % 4096, 0);
        assert!(addr >= kernel_range.1 && addr + size <= mem_mib << 20);
    }
}
