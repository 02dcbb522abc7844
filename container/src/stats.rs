//! Resource usage of a container's cgroup, and its OOM kill count.
//!
//! [`Stats`] is hull's one statistics type: what the host pod reads from a cgroup, what the
//! agent reads in a guest and sends over, what the sandbox server passes on, and what the
//! fronts render (containerd's metrics, `runc events`). It mirrors libcgroups' `Stats`
//! field for field (minus pressure stall information), so it is made from one by serde
//! alone, and it can be sent and received.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{chain, Error, Result};

/// A cgroup's resource usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// CPU time and throttling.
    pub cpu: CpuStats,
    /// Processes.
    pub pids: PidStats,
    /// Huge pages, by page size.
    pub hugetlb: HashMap<String, HugeTlbStats>,
    /// Block I/O.
    pub blkio: BlkioStats,
    /// Memory.
    pub memory: MemoryStats,
}

/// CPU time and throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuStats {
    /// Time used, in nanoseconds.
    pub usage: CpuUsage,
    /// CFS bandwidth throttling.
    pub throttling: CpuThrottling,
}

/// CPU time used, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuUsage {
    /// All CPU time.
    pub usage_total: u64,
    /// In user mode.
    pub usage_user: u64,
    /// In kernel mode.
    pub usage_kernel: u64,
    /// All CPU time, per core.
    pub per_core_usage_total: Vec<u64>,
    /// In user mode, per core.
    pub per_core_usage_user: Vec<u64>,
    /// In kernel mode, per core.
    pub per_core_usage_kernel: Vec<u64>,
}

/// CFS bandwidth throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuThrottling {
    /// Enforcement periods that passed.
    pub periods: u64,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: u64,
    /// Time throttled, in nanoseconds.
    pub throttled_time: u64,
}

/// Memory use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    /// Memory.
    pub memory: MemoryData,
    /// Memory and swap.
    pub memswap: MemoryData,
    /// Kernel memory.
    pub kernel: MemoryData,
    /// Kernel TCP buffers.
    pub kernel_tcp: MemoryData,
    /// Page cache, in bytes.
    pub cache: u64,
    /// Whether the hierarchy is accounted as a whole (cgroup v1).
    pub hierarchy: bool,
    /// The raw counters of memory.stat.
    pub stats: HashMap<String, u64>,
}

/// One memory counter set, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryData {
    /// In use now.
    pub usage: u64,
    /// The most ever in use.
    pub max_usage: u64,
    /// How often the limit was hit.
    pub fail_count: u64,
    /// The limit.
    pub limit: u64,
}

/// Processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PidStats {
    /// Processes now.
    pub current: u64,
    /// The limit (0: none).
    pub limit: u64,
}

/// Block I/O, per device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioStats {
    /// Bytes transferred.
    pub service_bytes: Vec<BlkioDeviceStat>,
    /// I/O operations.
    pub serviced: Vec<BlkioDeviceStat>,
    /// Time with access to the device, in milliseconds.
    pub time: Vec<BlkioDeviceStat>,
    /// Sectors transferred.
    pub sectors: Vec<BlkioDeviceStat>,
    /// Time from dispatch to completion.
    pub service_time: Vec<BlkioDeviceStat>,
    /// Time waiting in the scheduler queues.
    pub wait_time: Vec<BlkioDeviceStat>,
    /// Requests queued.
    pub queued: Vec<BlkioDeviceStat>,
    /// Requests merged.
    pub merged: Vec<BlkioDeviceStat>,
}

/// One block I/O counter of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioDeviceStat {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// The operation (Read, Write, ...), if the counter is per operation.
    pub op_type: Option<String>,
    /// The counter.
    pub value: u64,
}

/// Huge page use of one page size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HugeTlbStats {
    /// In use now, in bytes.
    pub usage: u64,
    /// The most ever in use.
    pub max_usage: u64,
    /// How often the limit was hit.
    pub fail_count: u64,
}

impl From<libcgroups::stats::Stats> for Stats {
    /// The same fields, through serde (libcgroups' type is `Serialize` only).
    fn from(s: libcgroups::stats::Stats) -> Self {
        serde_json::to_value(&s)
            .and_then(serde_json::from_value)
            .unwrap_or_default()
    }
}

/// A container's OOM kill count, found once (its memory cgroup's directory) and read as often
/// as wanted: the agent polls it.
#[derive(Debug, Clone)]
pub struct OomCounter {
    dir: PathBuf,
}

impl OomCounter {
    /// The counter of the memory cgroup at `cgroup_path` (as in the spec) for the cgroupfs
    /// driver; with systemd there is none to read directly.
    pub(crate) fn find(id: &str, cgroup_path: &Path, systemd: bool) -> Result<Self> {
        if systemd {
            return Err(Error::Unsupported(format!(
                "container {id}: OOM counts are read through cgroupfs; this container's cgroup is managed by systemd"
            )));
        }
        let cg_err = |message: String| Error::Cgroup {
            id: id.to_string(),
            message,
        };
        let root = match libcgroups::common::get_cgroup_setup().map_err(|e| cg_err(chain(&e)))? {
            libcgroups::common::CgroupSetup::Unified => {
                PathBuf::from(libcgroups::common::DEFAULT_CGROUP_ROOT)
            }
            _ => libcgroups::v1::util::get_subsystem_mount_point(
                &libcgroups::v1::ControllerType::Memory,
            )
            .map_err(|e| cg_err(chain(&e)))?,
        };
        Ok(OomCounter {
            dir: cgroupfs_dir(&root, cgroup_path),
        })
    }

    /// How many processes the OOM killer has killed in the cgroup so far: the `oom_kill`
    /// line of v1 `memory.oom_control` or v2 `memory.events`.
    pub fn read(&self) -> Result<u64> {
        for file in ["memory.oom_control", "memory.events"] {
            let p = self.dir.join(file);
            match fs::read_to_string(&p) {
                Ok(text) => {
                    return Ok(text
                        .lines()
                        .find_map(|l| l.strip_prefix("oom_kill "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(p, e)),
            }
        }
        Err(Error::Unsupported(format!(
            "{}: no memory.oom_control or memory.events",
            self.dir.display()
        )))
    }
}

/// The directory of the cgroup at `cgroup_path` (as in the spec) under a cgroupfs mount.
fn cgroupfs_dir(mount: &Path, cgroup_path: &Path) -> PathBuf {
    mount.join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path))
}

/// The cgroup v2 directory of the cgroup at `cgroup_path` (cgroupfs driver), if it is one.
pub(crate) fn v2_dir(cgroup_path: &Path) -> Option<PathBuf> {
    let dir = cgroupfs_dir(
        Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT),
        cgroup_path,
    );
    dir.join("cgroup.controllers").exists().then_some(dir)
}

/// A cgroup v2 directory's usage from its plain files alone.
///
/// What it works around: libcgroups' v2 stats read the pressure files (`cpu.pressure`,
/// `memory.pressure`, `io.pressure`) unconditionally and fail without them, and a kernel built
/// without `CONFIG_PSI` (hull's guest kernel) or booted with `psi=0` has none. Fewer fields
/// than libcgroups fills (no per-core CPU, block I/O or huge pages), but the ones the fronts
/// show.
pub(crate) fn v2_stats(dir: &Path) -> Stats {
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
    let num = |f: &str| read(f).trim().parse::<u64>().unwrap_or(0);
    let keyed = |f: &str, k: &str| -> u64 {
        read(f)
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut s = Stats::default();
    s.cpu.usage.usage_total = keyed("cpu.stat", "usage_usec") * 1000;
    s.cpu.usage.usage_user = keyed("cpu.stat", "user_usec") * 1000;
    s.cpu.usage.usage_kernel = keyed("cpu.stat", "system_usec") * 1000;
    s.cpu.throttling.periods = keyed("cpu.stat", "nr_periods");
    s.cpu.throttling.throttled_periods = keyed("cpu.stat", "nr_throttled");
    s.cpu.throttling.throttled_time = keyed("cpu.stat", "throttled_usec") * 1000;
    s.memory.memory.usage = num("memory.current");
    s.memory.memory.max_usage = num("memory.peak");
    s.memory.memory.limit = num("memory.max"); // "max" reads as 0: no limit
    s.memory.memory.fail_count = keyed("memory.events", "max");
    s.memory.cache = keyed("memory.stat", "file");
    s.pids.current = num("pids.current");
    s.pids.limit = num("pids.max");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcgroups_stats_carry_over_field_for_field() {
        let mut lc = libcgroups::stats::Stats::default();
        lc.cpu.usage.usage_total = 7;
        lc.cpu.usage.per_core_usage_total = vec![3, 4];
        lc.cpu.throttling.throttled_time = 9;
        lc.memory.memory.limit = 1 << 20;
        lc.memory.cache = 5;
        lc.memory.stats.insert("rss".into(), 11);
        lc.pids.current = 2;
        lc.blkio
            .service_bytes
            .push(libcgroups::stats::BlkioDeviceStat {
                major: 8,
                minor: 0,
                op_type: Some("Read".into()),
                value: 4096,
            });
        lc.hugetlb.insert(
            "2MB".into(),
            libcgroups::stats::HugeTlbStats {
                usage: 1,
                max_usage: 2,
                fail_count: 3,
            },
        );
        let s = Stats::from(lc);
        assert_eq!(s.cpu.usage.usage_total, 7);
        assert_eq!(s.cpu.usage.per_core_usage_total, vec![3, 4]);
        assert_eq!(s.cpu.throttling.throttled_time, 9);
        assert_eq!(s.memory.memory.limit, 1 << 20);
        assert_eq!(s.memory.cache, 5);
        assert_eq!(s.memory.stats.get("rss"), Some(&11));
        assert_eq!(s.pids.current, 2);
        assert_eq!(s.blkio.service_bytes[0].op_type.as_deref(), Some("Read"));
        assert_eq!(s.hugetlb["2MB"].fail_count, 3);
        let back: Stats = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn plain_v2_files_and_oom_counts() {
        let d = std::env::temp_dir().join(format!("hull-ut-stats-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let files = [
            ("cpu.stat", "usage_usec 5\nuser_usec 3\nsystem_usec 2\nnr_periods 4\nnr_throttled 1\nthrottled_usec 7\n"),
            ("memory.current", "4096\n"),
            ("memory.peak", "8192\n"),
            ("memory.max", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
            ("memory.stat", "anon 1\nfile 512\n"),
            ("pids.current", "3\n"),
            ("pids.max", "100\n"),
        ];
        for (f, text) in files {
            fs::write(d.join(f), text).unwrap();
        }
        let s = v2_stats(&d);
        assert_eq!(s.cpu.usage.usage_total, 5000);
        assert_eq!(s.cpu.usage.usage_user, 3000);
        assert_eq!(s.cpu.usage.usage_kernel, 2000);
        assert_eq!(s.cpu.throttling.throttled_time, 7000);
        assert_eq!(s.memory.memory.usage, 4096);
        assert_eq!(s.memory.memory.max_usage, 8192);
        assert_eq!(s.memory.memory.limit, 0);
        assert_eq!(s.memory.memory.fail_count, 2);
        assert_eq!(s.memory.cache, 512);
        assert_eq!((s.pids.current, s.pids.limit), (3, 100));
        let oom = OomCounter { dir: d.clone() };
        assert_eq!(oom.read().unwrap(), 1);
        // cgroup v1 keeps the count in memory.oom_control, read first
        fs::write(
            d.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(oom.read().unwrap(), 3);
        fs::remove_dir_all(&d).unwrap();
        assert!(matches!(oom.read(), Err(Error::Unsupported(_))));
    }
}
