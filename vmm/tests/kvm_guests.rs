//! Tiny guests on the real /dev/kvm: serial output, i8042 reset, PVH entry, MMIO dispatch,
//! irqfd delivery, pause/resume and snapshot/restore. Every run is bounded by a timeout.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hull_vmm::arch::regs::BootEntry;
use hull_vmm::devices::BusDevice;
use hull_vmm::{VmExit, VmResources, Vmm};
use vmm_sys_util::eventfd::EventFd;

const TIMEOUT: Duration = Duration::from_secs(60);

fn config(kernel: &std::path::Path) -> VmResources {
    VmResources {
        kernel: kernel.to_path_buf(),
        mem_mib: 16,
        rng: false,
        cmdline: "Zcmd".into(),
        ..VmResources::default()
    }
}

#[test]
fn serial_output_and_i8042_reset_end_the_vm() {
    if !kvm_available("serial_output_and_i8042_reset_end_the_vm") {
        return;
    }
    let (_d, kernel) = write_temp("serial.elf", &elf(SERIAL64, false));
    let out = Capture::default();
    let mut vmm = Vmm::build(config(&kernel), Box::new(out.clone())).unwrap();
    assert_eq!(vmm.entry, BootEntry::Linux64 { entry: LOAD });
    assert_eq!(vmm.run(Some(TIMEOUT)).unwrap(), VmExit::Reset);
    // 'U' is the zero page's boot_flag (0xaa55) read through RSI.
    assert_eq!(out.text(), "HU\n");
}

#[test]
fn pvh_entry_gets_start_info_and_cmdline() {
    if !kvm_available("pvh_entry_gets_start_info_and_cmdline") {
        return;
    }
    let (_d, kernel) = write_temp("pvh.elf", &elf(PVH32, true));
    let out = Capture::default();
    let mut vmm = Vmm::build(config(&kernel), Box::new(out.clone())).unwrap();
    assert_eq!(vmm.entry, BootEntry::Pvh { entry: LOAD });
    assert_eq!(vmm.run(Some(TIMEOUT)).unwrap(), VmExit::Reset);
    assert_eq!(out.text(), "PVZ");
}

/// Records writes; reads return 'T'.
type WriteLog = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

struct Recorder(WriteLog);

impl BusDevice for Recorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(b'T');
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().push((offset, data.to_vec()));
    }
}

#[test]
fn mmio_exits_reach_the_right_device() {
    if !kvm_available("mmio_exits_reach_the_right_device") {
        return;
    }
    let (_d, kernel) = write_temp("mmio.elf", &elf(MMIO64, false));
    let out = Capture::default();
    let cfg = VmResources {
        rng: true,
        ..config(&kernel)
    };
    let mut vmm = Vmm::build(cfg, Box::new(out.clone())).unwrap();
    assert!(
        vmm.cmdline.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{}",
        vmm.cmdline
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    vmm.mmio_bus_mut()
        .insert(
            Arc::new(Mutex::new(Recorder(log.clone()))),
            0xd010_0000,
            0x1000,
        )
        .unwrap();
    assert_eq!(vmm.run(Some(TIMEOUT)).unwrap(), VmExit::Reset);
    // "virt" from the virtio-mmio magic, '4' = virtio-rng's device id, 'T' from the recorder.
    assert_eq!(out.text(), "virt4T");
    assert_eq!(*log.lock().unwrap(), vec![(0x10, vec![0x42, 0, 0, 0])]);
}

#[test]
fn irqfd_interrupt_is_delivered_to_the_guest() {
    if !kvm_available("irqfd_interrupt_is_delivered_to_the_guest") {
        return;
    }
    let (_d, kernel) = write_temp("irq.elf", &elf(&irq64(), false));
    let out = Capture::default();
    let mut vmm = Vmm::build(config(&kernel), Box::new(out.clone())).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vmm.vm().fd().register_irqfd(&irq, 3).unwrap();
    // Fire IRQ3 once the guest says it is ready ('R').
    out.on_byte(b'R', irq.try_clone().unwrap());
    assert_eq!(vmm.run(Some(TIMEOUT)).unwrap(), VmExit::Reset);
    assert_eq!(out.text(), "RIS");
}

fn wait_for(out: &Capture, what: &str) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !out.text().contains(what) {
        assert!(
            std::time::Instant::now() < deadline,
            "guest never printed {what:?}: {:?}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pause_resume_then_snapshot_restore_continue_where_stopped() {
    if !kvm_available("pause_resume_then_snapshot_restore_continue_where_stopped") {
        return;
    }
    let (dir, kernel) = write_temp("irq.elf", &elf(&irq64(), false));
    let snap = dir.as_path().join("snap");

    // VM A: run to 'R' (PIC programmed, IDT loaded, r12 = 'S', halted), pause, resume, pause,
    // snapshot, and drop it without ever raising the interrupt.
    let out_a = Capture::default();
    let mut a = Vmm::build(config(&kernel), Box::new(out_a.clone())).unwrap();
    a.start().unwrap();
    wait_for(&out_a, "R");
    a.pause().unwrap();
    assert!(a.is_paused());
    a.resume().unwrap();
    a.pause().unwrap();
    a.snapshot(&snap).unwrap();
    assert!(snap.join("vm.json").exists());
    assert_eq!(
        std::fs::metadata(snap.join("memory.bin")).unwrap().len(),
        16 << 20
    );
    a.stop();
    drop(a);
    assert_eq!(out_a.text(), "R");

    // VM B: restored; the interrupt is handled by the IDT, PIC programming and r12 that VM A
    // set up, so the guest prints "IS" and never re-runs its start ('R').
    let out_b = Capture::default();
    let mut b = Vmm::restore(&snap, config(&kernel), Box::new(out_b.clone())).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    b.vm().fd().register_irqfd(&irq, 3).unwrap();
    b.start().unwrap();
    irq.write(1).unwrap();
    assert_eq!(b.run(Some(TIMEOUT)).unwrap(), VmExit::Reset);
    assert_eq!(out_b.text(), "IS");

    // A configuration with other devices than the snapshot's is refused.
    let other = VmResources {
        rng: true,
        ..config(&kernel)
    };
    let e = Vmm::restore(&snap, other, Box::new(std::io::sink()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("snapshot has 0 virtio devices, configuration 1"),
        "{e}"
    );
}

#[test]
fn resumed_vm_still_takes_interrupts() {
    if !kvm_available("resumed_vm_still_takes_interrupts") {
        return;
    }
    let (_d, kernel) = write_temp("irq.elf", &elf(&irq64(), false));
    let out = Capture::default();
    let mut vmm = Vmm::build(config(&kernel), Box::new(out.clone())).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vmm.vm().fd().register_irqfd(&irq, 3).unwrap();
    vmm.start().unwrap();
    wait_for(&out, "R");
    vmm.pause().unwrap();
    irq.write(1).unwrap();
    // Paused: the interrupt is pending in the PIC but no vCPU runs to take it.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(out.text(), "R");
    vmm.resume().unwrap();
    assert_eq!(vmm.run(Some(TIMEOUT)).unwrap(), VmExit::Reset);
    assert_eq!(out.text(), "RIS");
}

#[test]
fn two_vcpus_boot_with_an_mp_table() {
    if !kvm_available("two_vcpus_boot_with_an_mp_table") {
        return;
    }
    let (_d, kernel) = write_temp("serial.elf", &elf(SERIAL64, false));
    let out = Capture::default();
    let cfg = VmResources {
        vcpus: 2,
        ..config(&kernel)
    };
    let mut vmm = Vmm::build(cfg, Box::new(out.clone())).unwrap();
    assert_eq!(vmm.run(Some(TIMEOUT)).unwrap(), VmExit::Reset);
    assert_eq!(out.text(), "HU\n");
    let mut sig = [0u8; 4];
    vm_memory::Bytes::read_slice(vmm.memory(), &mut sig, vm_memory::GuestAddress(0x9fc00)).unwrap();
    assert_eq!(&sig, b"_MP_");
}

#[test]
fn bad_configurations_fail_with_clear_errors() {
    let missing = VmResources {
        kernel: "/nonexistent/vmlinux".into(),
        ..VmResources::default()
    };
    if kvm_available("bad_configurations_fail_with_clear_errors") {
        let e = Vmm::build(missing, Box::new(std::io::sink()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot open kernel /nonexistent/vmlinux"), "{e}");
        let (_d, garbage) = write_temp("garbage", b"not a kernel at all, just bytes");
        let e = Vmm::build(
            VmResources {
                mem_mib: 16,
                ..config(&garbage)
            },
            Box::new(std::io::sink()),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("cannot load kernel image"), "{e}");
    }
    let e = Vmm::build(
        VmResources {
            vcpus: 0,
            ..VmResources::default()
        },
        Box::new(std::io::sink()),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("0 vCPUs"), "{e}");
}

#[test]
fn guest_driver_uses_virtio_rng_over_mmio_with_interrupt() {
    if !kvm_available("guest_driver_uses_virtio_rng_over_mmio_with_interrupt") {
        return;
    }
    let (_d, kernel) = write_temp("virtio.elf", &elf(&virtio_rng64(), false));
    let out = Capture::default();
    let cfg = VmResources {
        rng: true,
        ..config(&kernel)
    };
    let mut vmm = Vmm::build(cfg, Box::new(out.clone())).unwrap();
    assert_eq!(vmm.run(Some(TIMEOUT)).unwrap(), VmExit::Reset);
    // Status 0xf ('?'); in the IRQ5 handler: used idx 1, used len 8, interrupt status 1, then 0
    // after the ack.
    assert_eq!(out.text(), "?I1810");
    let mut buf = [0u8; 8];
    vm_memory::Bytes::read_slice(vmm.memory(), &mut buf, vm_memory::GuestAddress(0x20_1000))
        .unwrap();
    assert_ne!(
        buf, [0u8; 8],
        "the device filled the buffer with random bytes"
    );
}

#[test]
fn pause_right_after_start_is_not_lost() {
    if !kvm_available("pause_right_after_start_is_not_lost") {
        return;
    }
    // The command may reach a vCPU thread before it ever entered KVM_RUN.
    let (_d, kernel) = write_temp("irq.elf", &elf(&irq64(), false));
    for _ in 0..20 {
        let mut vmm = Vmm::build(config(&kernel), Box::new(std::io::sink())).unwrap();
        vmm.start().unwrap();
        vmm.pause().unwrap();
        vmm.resume().unwrap();
        vmm.pause().unwrap();
        vmm.stop();
    }
}

#[test]
fn each_net_fd_is_a_net_device_with_its_mac_on_the_command_line() {
    use std::os::fd::AsRawFd;
    if !kvm_available("each_net_fd_is_a_net_device_with_its_mac_on_the_command_line") {
        return;
    }
    let (_d, kernel) = write_temp("serial.elf", &elf(SERIAL64, false));
    // Datagram socket pairs stand in for taps: one frame a message.
    let (a, _a_host) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let (b, _b_host) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let macs = [
        [0x02, 0x68, 0x75, 0x6c, 0, 0],
        [0x02, 0x68, 0x75, 0x6c, 0, 1],
    ];
    let net_fds: Vec<hull_vmm::NetFdConfig> = [&a, &b]
        .iter()
        .zip(macs)
        .map(|(fd, mac)| hull_vmm::NetFdConfig {
            fd: fd.as_raw_fd(),
            mac: Some(mac),
        })
        .collect();
    let cfg = VmResources {
        net_fds: net_fds.clone(),
        ..config(&kernel)
    };
    let out = Capture::default();
    let mut vmm = Vmm::build(cfg, Box::new(out.clone())).unwrap();
    let devices = vmm.virtio_devices();
    assert_eq!(devices.len(), 2);
    for (slot, mac) in devices.iter().zip(macs) {
        let t = slot.transport.lock().unwrap();
        assert_eq!(
            t.device().device_type(),
            hull_vmm::devices::virtio::TYPE_NET
        );
        let mut got = [0u8; 6];
        t.device().read_config(0, &mut got);
        assert_eq!(got, mac);
    }
    assert_eq!(
        vmm.cmdline.matches("virtio_mmio.device=").count(),
        2,
        "{}",
        vmm.cmdline
    );
    assert_eq!(vmm.run(Some(TIMEOUT)).unwrap(), VmExit::Reset);
    assert_eq!(out.text(), "HU\n");

    // One fd for two devices is refused before anything is built.
    let twice = VmResources {
        net_fds: vec![net_fds[0], net_fds[0]],
        ..config(&kernel)
    };
    let e = Vmm::build(twice, Box::new(std::io::sink())).err().unwrap();
    assert!(e.to_string().contains("is given twice"), "{e}");
}

/// A guest's armed TSC-deadline timer survives a snapshot: restored into a fresh vCPU, the
/// deadline is still there. (KVM drops a write of IA32_TSC_DEADLINE while the LAPIC timer is
/// not in TSC-deadline mode; restoring MSRs before the LAPIC lost it, and a restored guest
/// sleeping on that timer never woke: agent calls into pods from templates timed out.)
#[test]
fn an_armed_tsc_deadline_timer_survives_save_and_restore() {
    use hull_vmm::arch::msr::MSR_IA32_TSC_DEADLINE as MSR_TSC_DEADLINE;
    use hull_vmm::vstate::vcpu::{ExitNotifier, SnapshotCaps, Vcpu};
    if !kvm_available("an_armed_tsc_deadline_timer_survives_save_and_restore") {
        return;
    }
    const APIC_LVTT: usize = 0x320;
    const LVTT_TSC_DEADLINE: u32 = 2 << 17;
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let caps = Arc::new(SnapshotCaps::detect(&kvm));
    assert!(
        caps.msrs.contains(&MSR_TSC_DEADLINE),
        "this host's KVM does not save IA32_TSC_DEADLINE"
    );
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let vcpu_in_new_vm = || {
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let exit = ExitNotifier::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let vcpu = Vcpu::new(&vm, 0, exit, caps.clone()).unwrap();
        (vm, vcpu)
    };
    let deadline_of = |v: &Vcpu| {
        v.save_state()
            .unwrap()
            .msrs
            .iter()
            .find(|m| m.index == MSR_TSC_DEADLINE)
            .map(|m| m.data)
    };

    // VM A: the timer in TSC-deadline mode, vector 0xec, armed far ahead.
    let (_vm_a, a) = vcpu_in_new_vm();
    hull_vmm::arch::cpuid::setup_cpuid(a.fd(), &cpuid, 0, 1).unwrap();
    let mut lapic = a.fd().get_lapic().unwrap();
    for (i, b) in (LVTT_TSC_DEADLINE | 0xec).to_le_bytes().iter().enumerate() {
        lapic.regs[APIC_LVTT + i] = *b as libc::c_char;
    }
    a.fd().set_lapic(&lapic).unwrap();
    let armed = 1u64 << 62;
    hull_vmm::arch::msr::set_msrs(
        a.fd(),
        &[kvm_bindings::kvm_msr_entry {
            index: MSR_TSC_DEADLINE,
            data: armed,
            ..Default::default()
        }],
    )
    .unwrap();
    assert_eq!(deadline_of(&a), Some(armed));
    let state = a.save_state().unwrap();

    // VM B: a fresh vCPU loaded with A's state has the same deadline.
    let (_vm_b, b) = vcpu_in_new_vm();
    b.restore(&cpuid, 1, &state).unwrap();
    assert_eq!(
        deadline_of(&b),
        Some(armed),
        "the restored timer is disarmed"
    );
}
