//! Facts about the guest for GetGuestDetails, and the hostname.

use hull_protocols::agent::GuestDetailsResponse;

use crate::error::{AgentError, Result};

/// cgroup2 filesystem magic.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Sets the (UTS namespace's) hostname.
pub fn set_hostname(name: &str) -> Result<()> {
    if name.len() > 64
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(AgentError::InvalidArgument(format!(
            "bad hostname {name:?}"
        )));
    }
    // SAFETY: the pointer and length describe `name`'s bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(AgentError::last_os("sethostname"));
    }
    Ok(())
}

/// Sets CLOCK_REALTIME (a guest restored from a VM template wakes with the template's time).
pub fn set_realtime(unix_ns: i64) -> Result<()> {
    if unix_ns <= 0 {
        return Err(AgentError::InvalidArgument(format!(
            "bad host time {unix_ns}"
        )));
    }
    let ts = libc::timespec {
        tv_sec: unix_ns / 1_000_000_000,
        tv_nsec: unix_ns % 1_000_000_000,
    };
    // SAFETY: a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(AgentError::last_os("clock_settime"));
    }
    Ok(())
}

/// `_IOW('R', 0x03, int[2])`: add bytes to the input pool, crediting their entropy.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes host randomness into the kernel's pool, credited, and reseeds the CRNG at once:
/// VMs restored from one template would otherwise share the template's random state.
pub fn add_entropy(bytes: &[u8]) -> Result<()> {
    use std::os::fd::AsRawFd;
    if bytes.is_empty() || bytes.len() > 4096 {
        return Err(AgentError::InvalidArgument(format!(
            "entropy of {} bytes",
            bytes.len()
        )));
    }
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| AgentError::io("open /dev/urandom", e))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    info.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a rand_pool_info whose buffer holds buf_size bytes; it outlives the call.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        return Err(AgentError::last_os("ioctl RNDADDENTROPY"));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(AgentError::last_os("ioctl RNDRESEEDCRNG"));
    }
    Ok(())
}

/// Whether /sys/fs/cgroup is a cgroup2 mount.
pub fn cgroup_v2() -> bool {
    let Ok(path) = std::ffi::CString::new("/sys/fs/cgroup") else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out buffer for statfs(2).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// Kernel, memory, CPUs and cgroup version of the guest.
pub fn guest_details() -> GuestDetailsResponse {
    let mut r = GuestDetailsResponse::new();
    r.agent_version = env!("CARGO_PKG_VERSION").to_string();
    r.kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    r.mem_total_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    r.cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    r.cgroup_v2 = cgroup_v2();
    r
}
