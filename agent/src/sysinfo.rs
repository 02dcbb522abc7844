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
