//! What the agent does as PID 1 of the guest: early mounts, reaping, power-off.

use std::ffi::CString;

use crate::error::{AgentError, Result};

/// The list of kernel modules an initrd for a distribution kernel carries (one path per
/// line, dependencies first), written by guest-kernel/initrd.sh --modules.
pub const MODULE_LIST: &str = "/etc/hull-modules";

/// Loads the modules named in [`MODULE_LIST`], if any: a distribution kernel (Debian's)
/// has virtio, 9p and the console ports as modules. Returns how many were loaded.
pub fn load_modules() -> Result<usize> {
    let Ok(list) = std::fs::read_to_string(MODULE_LIST) else {
        return Ok(0);
    };
    let mut loaded = 0;
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = std::fs::File::open(path)
            .map_err(|e| AgentError::io(format!("open module {path}"), e))?;
        let params = CString::default();
        // SAFETY: finit_module reads the open module file and a NUL-terminated parameter
        // string that outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                params.as_ptr(),
                0,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(AgentError::io(format!("load module {path}"), e));
            }
        } else {
            loaded += 1;
        }
    }
    Ok(loaded)
}

/// One early mount of the guest.
struct EarlyMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

const EARLY_MOUNTS: &[EarlyMount] = &[
    EarlyMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    EarlyMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    // DEVTMPFS_MOUNT does not apply to an initramfs: mount it ourselves.
    EarlyMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    EarlyMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620",
    },
    EarlyMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777",
    },
    EarlyMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    EarlyMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
    EarlyMount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
];

fn c(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| AgentError::InvalidArgument(format!("NUL in {s:?}")))
}

/// Mounts proc, sys, dev (devtmpfs), devpts, shm, cgroup2, /run and /tmp; what is already
/// mounted stays.
pub fn early_mounts() -> Result<()> {
    for m in EARLY_MOUNTS {
        std::fs::create_dir_all(m.target)
            .map_err(|e| AgentError::io(format!("create {}", m.target), e))?;
        let (src, tgt, fst, data) = (c(m.source)?, c(m.target)?, c(m.fstype)?, c(m.data)?);
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fst.as_ptr(),
                m.flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(AgentError::io(
                format!("mount {} on {}", m.fstype, m.target),
                e,
            ));
        }
    }
    // /dev/ptmx needs no symlink: since Linux 4.7 it opens the devpts instance mounted at
    // the `pts` next to it. (devtmpfs is one instance per kernel: never modify its nodes.)
    Ok(())
}

/// Whether `/` is the initramfs (`rootfs`), where pivot_root cannot work.
pub fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|t| mountinfo_root_is_rootfs(&t))
}

/// Whether the `/` entry of a mountinfo text is the initramfs (`rootfs`).
pub fn mountinfo_root_is_rootfs(text: &str) -> bool {
    text.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        left.split(' ').nth(4) == Some("/") && right.split(' ').next() == Some("rootfs")
    })
}

/// Makes the agent the reaper of orphans below it when it is not PID 1.
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(AgentError::last_os("PR_SET_CHILD_SUBREAPER"));
    }
    Ok(())
}

/// Ends the VM: as PID 1, reboot(RB_AUTOBOOT) (in a child pid namespace the namespace ends);
/// otherwise the agent just exits. A reboot, not RB_POWER_OFF: hull's VMs have no ACPI, so
/// the kernel has no way to power off and turns a power-off into a halt ("reboot: System
/// halted"), which leaves the VMM running until it is killed (hull-vmm's stop waited its whole
/// 3 s grace for every pod). A reboot ends every backend's VM at once: hull-vmm exits on the
/// i8042 reset of `reboot=k`, QEMU on the triple fault of `reboot=t` under `-no-reboot`.
pub fn power_off(is_init: bool) -> ! {
    tracing::info!(is_init, "ending the vm");
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    // SAFETY: getpid(2) takes no arguments.
    if is_init && unsafe { libc::getpid() } == 1 {
        // SAFETY: reboot(2) with a valid command; only reached as PID 1.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        tracing::error!(error = %std::io::Error::last_os_error(), "reboot(RB_AUTOBOOT) failed");
    }
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_root_is_detected() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=60k\n\
                         15 1 0:14 / /proc rw,nosuid - proc proc rw\n";
        let disk = "23 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    30 23 0:5 / /run rw - tmpfs tmpfs rw\n";
        assert!(mountinfo_root_is_rootfs(initramfs));
        assert!(!mountinfo_root_is_rootfs(disk));
    }
}
