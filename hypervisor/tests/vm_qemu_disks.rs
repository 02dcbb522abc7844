//! The qemu backend's disks end to end under TCG: a VM booted with a loop device (made here on
//! a sparse file, as a pod's host block device) and a read-only image file has both as
//! virtio-blk drives (QMP `query-block`): on those files, read-only where asked, without the
//! host cache (O_DIRECT), with serials `disk_serial(0)` and `(1)`; and it booted cold though a
//! template directory was configured. The loop device is detached even when the test fails.
//!
//! Needs what vm_qemu.rs needs (qemu-system-x86_64, the guest kernel and initrd) and the right
//! to make loop devices (`losetup`); without them it fails, saying what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_hypervisor::{disk_serial, Accel, Disk, Hypervisor, QemuHypervisor, VmConfig};

/// A loop device on a file, detached on drop (a failing test leaves none behind).
struct LoopDevice(PathBuf);

impl LoopDevice {
    /// `losetup -f --show FILE`.
    fn attach(file: &Path) -> LoopDevice {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("losetup (this test needs util-linux): {e}"));
        assert!(
            out.status.success(),
            "losetup -f --show {file:?} (this test needs the right to make loop devices): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        LoopDevice(String::from_utf8(out.stdout).unwrap().trim().into())
    }

    /// `losetup -d`: Ok unless it failed (a holder left, such as a QEMU still running).
    fn detach(&self) -> Result<(), String> {
        let out = Command::new("losetup")
            .arg("-d")
            .arg(&self.0)
            .output()
            .map_err(|e| e.to_string())?;
        match out.status.success() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            eprintln!("losetup -d {:?}: {e}", self.0);
        }
    }
}

#[test]
fn a_vm_has_a_virtio_blk_drive_on_each_disk_read_only_where_asked_and_boots_cold() {
    let a = hull_tests::guest_artefacts()
        .expect("this test boots a VM: it needs qemu-system-x86_64 and the guest kernel");
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap();
    let image = dir.path().join("ro.img");
    std::fs::write(&image, vec![0x5a; 1 << 20]).unwrap();
    let lo = LoopDevice::attach(&backing);

    let templates = dir.path().join("templates");
    let mut c = VmConfig::new(&a.kernel, &a.initrd, dir.path().join("vm"));
    c.accel = Accel::Tcg;
    c.boot_timeout = Duration::from_secs(120);
    c.agent_call_timeout = Duration::from_secs(30);
    c.template_dir = Some(templates.clone());
    // The guest kernel's notices on the console: virtio_blk names each disk it found.
    c.extra_cmdline = "loglevel=6".into();
    c.disks = vec![
        Disk {
            path: lo.0.clone(),
            read_only: false,
            shared: false,
        },
        Disk {
            path: image.clone(),
            read_only: true,
            shared: false,
        },
    ];
    let mut vm = QemuHypervisor::new(c);
    let booted = vm.boot().unwrap_or_else(|e| panic!("boot: {e}"));
    let agent = vm
        .wait_for_agent(&booted)
        .unwrap_or_else(|e| panic!("agent: {e}"));
    assert!(agent.check().unwrap());

    let mut drives = vm.query_drives().unwrap();
    drives.sort_by(|x, y| x.id.cmp(&y.id));
    let seen: Vec<(&str, &str, bool, bool, &str)> = drives
        .iter()
        .map(|d| {
            let (id, file, serial) = (d.id.as_str(), d.file.as_str(), d.serial.as_str());
            (id, file, d.read_only, d.direct, serial)
        })
        .collect();
    let (s0, s1) = (disk_serial(0), disk_serial(1));
    assert_eq!(
        seen,
        vec![
            ("disk0", lo.0.to_str().unwrap(), false, true, s0.as_str()),
            ("disk1", image.to_str().unwrap(), true, true, s1.as_str()),
        ]
    );

    // Booted cold: QEMU was not started to restore a template, and none was made.
    let qemu = vm.pid().unwrap();
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
    assert!(
        !cmdline.split(|b| *b == 0).any(|a| a == b"-incoming"),
        "a vm with disks was restored from a template"
    );
    let made = std::fs::read_dir(&templates).map_or(0, |d| d.count());
    assert_eq!(made, 0, "a vm with disks made a template");

    // The guest's virtio_blk driver found both disks, by their sizes in 512-byte blocks.
    let console = std::fs::read_to_string(vm.console_log()).unwrap();
    let mut found: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("virtio_blk") && l.contains("512-byte logical blocks"))
        .collect();
    found.sort_by_key(|l| l.contains("2048 512-byte"));
    assert_eq!(found.len(), 2, "{console}");
    assert!(found[0].contains(" 32768 512-byte"), "{found:?}");
    assert!(found[1].contains(" 2048 512-byte"), "{found:?}");

    drop(agent);
    vm.stop(false).unwrap();
    // Nothing holds the loop device once the VM stopped.
    lo.detach()
        .unwrap_or_else(|e| panic!("losetup -d after stop: {e}"));
    std::mem::forget(lo);
}
