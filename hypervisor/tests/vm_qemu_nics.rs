//! The qemu backend's NICs end to end under TCG: a VM booted with two taps (made here, in a
//! fresh network namespace, as hull makes a pod's) has two virtio-net NICs with
//! `nic_device_mac(0)` and `(1)` on those taps, and so does a VM restored from a template with
//! NICs, on its own taps.
//!
//! Needs what vm_qemu.rs needs (qemu-system-x86_64, the guest kernel and initrd) and
//! /dev/net/tun with the right to make network namespaces; without them it fails, saying what
//! is missing.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hull_hypervisor::{nic_device_mac, Accel, Hypervisor, Nic, QemuHypervisor, VmConfig};
// Opens a tap as hull's pod taps are made: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, not persistent.
use hull_vmm::devices::virtio::net::open_tap;

/// Taps `<prefix>0..n` in a fresh network namespace (made by a thread that ends; the taps'
/// fds keep the namespace), as hull's NICs.
fn pod_taps(prefix: &'static str, n: usize) -> Vec<Nic> {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) moves only the calling thread, which ends after making the taps.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) (this test needs it): {}",
            std::io::Error::last_os_error()
        );
        (0..n)
            .map(|i| Nic {
                tap: Arc::new(
                    open_tap(&format!("{prefix}{i}"))
                        .unwrap_or_else(|e| panic!("tap (this test needs /dev/net/tun): {e}"))
                        .into(),
                ),
            })
            .collect()
    })
    .join()
    .unwrap()
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

fn config(state: &Path, nics: Vec<Nic>) -> VmConfig {
    let a = hull_tests::guest_artefacts()
        .expect("this test boots a VM: it needs qemu-system-x86_64 and the guest kernel");
    let mut c = VmConfig::new(&a.kernel, &a.initrd, state);
    c.accel = Accel::Tcg;
    c.boot_timeout = Duration::from_secs(120);
    c.agent_call_timeout = Duration::from_secs(30);
    c.nics = nics;
    c
}

/// Boots `cfg` to its agent and checks that QEMU has its NICs: both device MACs in QMP
/// `query-rx-filter`, and the taps QEMU holds at the fds its command line names are the
/// config's (`/proc/<qemu>/fdinfo` names each tap). `restored`: QEMU was started to restore
/// a template (`-incoming`), else to boot.
fn boot_and_check_nics(cfg: VmConfig, tap_names: &[&str], restored: bool) -> QemuHypervisor {
    let fds: Vec<i32> = cfg.nics.iter().map(|n| n.tap.as_raw_fd()).collect();
    let mut vm = QemuHypervisor::new(cfg);
    let booted = vm.boot().unwrap_or_else(|e| panic!("boot: {e}"));
    let agent = vm
        .wait_for_agent(&booted)
        .unwrap_or_else(|e| panic!("agent: {e}"));
    assert!(agent.check().unwrap());
    let mut macs: Vec<String> = vm.query_nics().unwrap().into_iter().map(|n| n.1).collect();
    macs.sort();
    assert_eq!(macs, vec![mac(nic_device_mac(0)), mac(nic_device_mac(1))]);
    let qemu = vm.pid().unwrap();
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
    let incoming = cmdline.split(|b| *b == 0).any(|a| a == b"-incoming");
    assert_eq!(incoming, restored, "restored from a template");
    for (fd, name) in fds.iter().zip(tap_names) {
        let info = std::fs::read_to_string(format!("/proc/{qemu}/fdinfo/{fd}"))
            .unwrap_or_else(|e| panic!("qemu holds no fd {fd}: {e}"));
        assert!(
            info.lines()
                .any(|l| l.split_whitespace().eq(["iff:", name])),
            "qemu's fd {fd} is not tap {name}: {info}"
        );
    }
    vm
}

#[test]
fn a_booted_vm_has_a_nic_on_each_tap_with_its_device_mac() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("vm"), pod_taps("hulltap", 2));
    let mut vm = boot_and_check_nics(cfg, &["hulltap0", "hulltap1"], false);
    vm.stop(false).unwrap();
}

#[test]
fn vms_restored_from_a_template_with_nics_have_them_on_their_own_taps() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    // The first pod's VM makes the template (booting on its taps), then is restored from it.
    let mut first = config(&dir.path().join("vm1"), pod_taps("podatap", 2));
    first.template_dir = Some(templates.clone());
    let mut a = boot_and_check_nics(first, &["podatap0", "podatap1"], true);
    let made: Vec<_> = std::fs::read_dir(&templates)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(made.len(), 1, "one template: {made:?}");
    // The second pod's VM is only restored, with its own taps behind the same devices.
    let mut second = config(&dir.path().join("vm2"), pod_taps("podbtap", 2));
    second.template_dir = Some(templates.clone());
    let mut b = boot_and_check_nics(second, &["podbtap0", "podbtap1"], true);
    a.stop(false).unwrap();
    b.stop(false).unwrap();
}
