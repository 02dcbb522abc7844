//! `hull check`: what this host can run (cgroups, KVM and whether it is hardware-backed,
//! vhost-vsock, block passthrough, IOMMU groups and vfio-pci devices, qemu, the guest kernel), and which hypervisor `auto` picks for a pod.

use std::path::Path;

use hull_hypervisor::detect::Probe;
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

/// Whether a cgroup hierarchy in `mountinfo` (`/proc/self/mountinfo`'s text) is mounted with
/// `favordynmods`; `None` when there is no cgroup mount. The option switches the kernel's
/// one `cgroup_threadgroup_rwsem` to a mode where moving a process into a cgroup (each
/// container start does, runc's too) takes no RCU grace period, at some cost to every
/// fork and exit: one hierarchy with it is enough, for all of them. Measured here (6.18,
/// hybrid, 2 cores): a `cgroup.procs` write took 5-20 ms without it, 0.3 ms with it. From
/// 6.18 the kernel keeps the fast mode once it has been on, even after a remount drops the
/// option (it warns "can't be disabled"), so a `false` here can be pessimistic.
fn favordynmods(mountinfo: &str) -> Option<bool> {
    let mut any = None;
    for l in mountinfo.lines() {
        // "... - FSTYPE SOURCE SUPER_OPTIONS"
        let Some((_, tail)) = l.split_once(" - ") else {
            continue;
        };
        let mut f = tail.split_whitespace();
        let (Some(fstype), Some(_), Some(opts)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if fstype == "cgroup" || fstype == "cgroup2" {
            let on = opts.split(',').any(|o| o == "favordynmods");
            any = Some(any.unwrap_or(false) || on);
        }
    }
    any
}

/// `hull check`'s line on what a container start waits for when it joins its cgroups.
fn cgroup_moves() -> Probe {
    match std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .as_deref()
        .and_then(favordynmods)
    {
        Some(true) => {
            Probe::yes("favordynmods is on: joining a cgroup waits for no RCU grace period")
        }
        Some(false) => Probe::no(
            "each container start (runc's too) waits for an RCU grace period, 5-20 ms \
             measured, as it joins its cgroups: `mount -o remount,favordynmods` of the \
             cgroup2 mount removes the wait, at some cost to every fork and exit on the host",
        ),
        None => Probe::no("no cgroup mount"),
    }
}

/// `hull check`: one line per capability, yes/no and why, then what `auto` picks for a pod.
fn check_report(config: Option<&Path>) -> String {
    use hull_hypervisor::detect::{pick_backend, HostReport};
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
    line("fast cgroup joins", &cgroup_moves());
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

#[cfg(test)]
mod tests {
    use super::favordynmods;

    #[test]
    fn favordynmods_is_read_from_any_cgroup_mount() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(favordynmods(hybrid), Some(false));
        let on = hybrid.replace("cgroup2 cgroup2 rw", "cgroup2 cgroup2 rw,favordynmods");
        assert_eq!(favordynmods(&on), Some(true));
        let v1_on = hybrid.replace("cgroup cgroup rw,cpu", "cgroup cgroup rw,cpu,favordynmods");
        assert_eq!(favordynmods(&v1_on), Some(true));
        assert_eq!(favordynmods("22 1 0:21 / /proc rw - proc proc rw\n"), None);
        // A mount point that merely names the option is not the option.
        assert_eq!(
            favordynmods("9 1 0:5 / /favordynmods rw - tmpfs tmpfs rw\n"),
            None
        );
    }
}
