//! `hull check`: what this host can run (cgroups, KVM and whether it is hardware-backed,
//! vhost-vsock, block passthrough, IOMMU groups and vfio-pci devices, qemu, the guest kernel), and which hypervisor `auto` picks for a pod.

use std::path::Path;

use hull_runtime::config::{Config, RootfsMode};
use hull_runtime::pod::VmPod;

use super::Globals;
use crate::error::{chain, Result};

/// `hull check`.
pub fn run(g: &Globals) -> Result<i32> {
    print!("{}", check_report(g.config.as_deref()));
    Ok(0)
}

/// The cgroup layout of this host, as `hull check` reports it.
fn cgroup_layout() -> (bool, String) {
    use libcgroups::common::CgroupSetup;
    match libcgroups::common::get_cgroup_setup() {
        Ok(CgroupSetup::Unified) => (true, "v2 (unified)".into()),
        Ok(CgroupSetup::Hybrid) => (
            true,
            "hybrid: v1 controllers plus a v2 mount (hull manages v1)".into(),
        ),
        Ok(CgroupSetup::Legacy) => (true, "v1 (legacy)".into()),
        Err(e) => (false, format!("cannot tell: {}", chain(&e))),
    }
}

/// `hull check`: one line per capability, yes/no and why, then what `auto` picks for a pod.
fn check_report(config: Option<&Path>) -> String {
    use hull_hypervisor::detect::{pick_backend, HostReport, Probe};
    use hull_hypervisor::{Accel, Backend};
    use std::fmt::Write as _;
    let r = HostReport::probe();
    let mut out = String::from("hull check: what this host can run\n");
    let mut line = |name: &str, p: &Probe| {
        let _ = writeln!(
            out,
            "  {name:<22} {:<4} {}",
            if p.ok { "yes" } else { "no" },
            p.reason
        );
    };
    let (cg_ok, cg) = cgroup_layout();
    line(
        "host isolation",
        &Probe {
            ok: cg_ok,
            reason: format!("cgroups {cg}"),
        },
    );
    line("/dev/kvm", &r.kvm);
    line("KVM hardware-backed", &r.kvm_hardware);
    line("vhost-vsock", &r.vhost_vsock);
    line("pod networking", &r.pod_networking);
    line("vhost-net", &r.vhost_net);
    line("block passthrough", &r.block);
    line("builtin (hull-vmm)", &r.builtin);
    line("VFIO / IOMMU", &r.iommu);
    line("vfio-pci devices", &r.vfio_devices);
    line("qemu", &r.qemu);
    line("virtiofsd", &r.virtiofsd);
    line(
        "checkpoint (vm pods)",
        &Probe::yes("the whole VM is saved by QEMU, no CRIU; the pod needs rootfs = \"disk\""),
    );
    line(
        "checkpoint (host)",
        &match hull_container::checkpoint::criu_usable() {
            Ok(v) => Probe::yes(format!("criu {v} dumps here")),
            Err(why) => Probe::no(why),
        },
    );
    // What a vm pod would boot, from the config this command was given (or the default).
    let loaded = Config::load_or_default(config).map_err(|e| e.to_string());
    let accel = loaded.as_ref().map_or(Accel::Auto, |(cfg, _)| cfg.vm.accel);
    let vm_section = loaded
        .as_ref()
        .map(|(cfg, _)| cfg.vm.clone())
        .unwrap_or_default();
    let guest = loaded.and_then(|(cfg, path)| {
        let from = path.map_or("built-in defaults".to_string(), |p| p.display().to_string());
        cfg.vm
            .guest()
            .map(|(k, i, debian)| (k, i, debian, from))
            .map_err(|e| e.to_string())
    });
    match guest {
        Ok((k, i, debian, from)) => {
            let what = if debian {
                "Debian's kernel as the fallback, ACPI on; "
            } else {
                ""
            };
            line(
                "guest kernel",
                &Probe::yes(format!("{} ({what}config: {from})", k.display())),
            );
            line("guest initrd", &Probe::yes(i.display().to_string()));
        }
        Err(e) => {
            line("guest kernel", &Probe::no(e));
            line("guest kernel (cache)", &r.guest_kernel);
            line("guest initrd (cache)", &r.guest_initrd);
        }
    }
    // What `auto` picks for a pod's VM: sharing the pod's rootfs (9p), or with each
    // container's rootfs image in a disk slot (rootfs = "disk").
    for (mode, label, what) in [
        (
            RootfsMode::Share,
            "vm hypervisor (auto)",
            "a pod (its vm shares the pod's rootfs)",
        ),
        (RootfsMode::Disk, "", "a disk-rootfs pod"),
    ] {
        let auto = pick_backend(
            &VmPod::vm_needs(&vm_section, mode),
            || r.kvm_hardware.ok,
            || r.qemu.ok,
        );
        let picked = match auto.backend {
            Some(Backend::Builtin) => "builtin (hull-vmm)".to_string(),
            Some(Backend::Qemu) => {
                format!("qemu ({})", accel.resolve(|| r.kvm_hardware.ok).name())
            }
            None => "none".to_string(),
        };
        let _ = writeln!(out, "  {label:<22} {picked} for {what}: {}", auto.reason);
    }
    out
}
