//! `Stats`: the sandbox's cgroup statistics in containerd's cgroups metrics types
//! (`io.containerd.cgroups.v1.Metrics` on cgroup v1 and hybrid hosts,
//! `io.containerd.cgroups.v2.Metrics` on a unified hierarchy).

use std::collections::BTreeMap;

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use hull_runtime::pod::Stats;

use crate::any::pack;
use crate::error::{Error, Result};

/// Which cgroup metrics type this host's containers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// v1 controllers (also hybrid hosts: their controllers are v1).
    V1,
    /// The unified hierarchy.
    V2,
}

/// The host's cgroup mode: unified when /sys/fs/cgroup is a cgroup2 mount.
pub fn cgroup_mode() -> CgroupMode {
    match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => CgroupMode::V2,
        _ => CgroupMode::V1,
    }
}

/// Encode `stats` as containerd's metrics `Any` for `mode`.
pub fn to_any(stats: &Stats, mode: CgroupMode) -> Result<Any> {
    match mode {
        CgroupMode::V1 => pack(&to_v1(stats)),
        CgroupMode::V2 => pack(&to_v2(stats)),
    }
    .map_err(|e| Error::InvalidArgument(format!("encode metrics: {e}")))
}

/// cgroup v1 metrics.
pub fn to_v1(s: &Stats) -> v1::Metrics {
    let m = &s.memory.stats;
    let g = |k: &str| m.get(k).copied().unwrap_or(0);
    let entry = |d: &hull_container::stats::MemoryData| v1::MemoryEntry {
        limit: d.limit,
        usage: d.usage,
        max: d.max_usage,
        failcnt: d.fail_count,
        ..Default::default()
    };
    let blk = |list: &[hull_container::stats::BlkioDeviceStat]| -> Vec<v1::BlkIOEntry> {
        list.iter()
            .map(|e| v1::BlkIOEntry {
                op: e.op_type.clone().unwrap_or_default(),
                major: e.major,
                minor: e.minor,
                value: e.value,
                ..Default::default()
            })
            .collect()
    };
    let mut hugetlb: Vec<v1::HugetlbStat> = s
        .hugetlb
        .iter()
        .map(|(size, h)| v1::HugetlbStat {
            usage: h.usage,
            max: h.max_usage,
            failcnt: h.fail_count,
            pagesize: size.clone(),
            ..Default::default()
        })
        .collect();
    hugetlb.sort_by(|a, b| a.pagesize.cmp(&b.pagesize));
    v1::Metrics {
        hugetlb,
        pids: Some(v1::PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(v1::CPUStat {
            usage: Some(v1::CPUUsage {
                total: s.cpu.usage.usage_total,
                kernel: s.cpu.usage.usage_kernel,
                user: s.cpu.usage.usage_user,
                per_cpu: s.cpu.usage.per_core_usage_total.clone(),
                ..Default::default()
            })
            .into(),
            throttling: Some(v1::Throttle {
                periods: s.cpu.throttling.periods,
                throttled_periods: s.cpu.throttling.throttled_periods,
                throttled_time: s.cpu.throttling.throttled_time,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(v1::MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: Some(entry(&s.memory.memory)).into(),
            swap: Some(entry(&s.memory.memswap)).into(),
            kernel: Some(entry(&s.memory.kernel)).into(),
            kernel_tcp: Some(entry(&s.memory.kernel_tcp)).into(),
            ..Default::default()
        })
        .into(),
        blkio: Some(v1::BlkIOStat {
            io_service_bytes_recursive: blk(&s.blkio.service_bytes),
            io_serviced_recursive: blk(&s.blkio.serviced),
            io_queued_recursive: blk(&s.blkio.queued),
            io_service_time_recursive: blk(&s.blkio.service_time),
            io_wait_time_recursive: blk(&s.blkio.wait_time),
            io_merged_recursive: blk(&s.blkio.merged),
            io_time_recursive: blk(&s.blkio.time),
            sectors_recursive: blk(&s.blkio.sectors),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// cgroup v2 metrics.
pub fn to_v2(s: &Stats) -> v2::Metrics {
    let m = &s.memory.stats;
    let g = |k: &str| m.get(k).copied().unwrap_or(0);
    // Per device: (rbytes, wbytes, rios, wios).
    let mut io: BTreeMap<(u64, u64), [u64; 4]> = BTreeMap::new();
    for (list, base) in [(&s.blkio.service_bytes, 0), (&s.blkio.serviced, 2)] {
        for e in list.iter() {
            let op = e
                .op_type
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let slot = match op.as_str() {
                "read" => base,
                "write" => base + 1,
                _ => continue,
            };
            io.entry((e.major, e.minor)).or_default()[slot] += e.value;
        }
    }
    let usec = |ns: u64| ns / 1000;
    v2::Metrics {
        pids: Some(v2::PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(v2::CPUStat {
            usage_usec: usec(s.cpu.usage.usage_total),
            user_usec: usec(s.cpu.usage.usage_user),
            system_usec: usec(s.cpu.usage.usage_kernel),
            nr_periods: s.cpu.throttling.periods,
            nr_throttled: s.cpu.throttling.throttled_periods,
            throttled_usec: usec(s.cpu.throttling.throttled_time),
            ..Default::default()
        })
        .into(),
        memory: Some(v2::MemoryStat {
            anon: g("anon"),
            file: g("file"),
            kernel_stack: g("kernel_stack"),
            slab: g("slab"),
            sock: g("sock"),
            shmem: g("shmem"),
            file_mapped: g("file_mapped"),
            file_dirty: g("file_dirty"),
            file_writeback: g("file_writeback"),
            anon_thp: g("anon_thp"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            slab_reclaimable: g("slab_reclaimable"),
            slab_unreclaimable: g("slab_unreclaimable"),
            pgfault: g("pgfault"),
            pgmajfault: g("pgmajfault"),
            usage: s.memory.memory.usage,
            usage_limit: s.memory.memory.limit,
            max_usage: s.memory.memory.max_usage,
            swap_usage: s.memory.memswap.usage,
            swap_limit: s.memory.memswap.limit,
            swap_max_usage: s.memory.memswap.max_usage,
            ..Default::default()
        })
        .into(),
        io: Some(v2::IOStat {
            usage: io
                .into_iter()
                .map(
                    |((major, minor), [rbytes, wbytes, rios, wios])| v2::IOEntry {
                        major,
                        minor,
                        rbytes,
                        wbytes,
                        rios,
                        wios,
                        ..Default::default()
                    },
                )
                .collect(),
            ..Default::default()
        })
        .into(),
        memory_events: Some(v2::MemoryEvents {
            oom: s.memory.memory.fail_count,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_carry_the_numbers() {
        let mut s = Stats::default();
        s.cpu.usage.usage_total = 5_000;
        s.pids.current = 3;
        s.memory.memory.usage = 4096;
        s.memory.stats.insert("total_rss".into(), 77);
        s.memory.stats.insert("anon".into(), 88);
        let a = to_v1(&s);
        assert_eq!(a.cpu.usage.total, 5_000);
        assert_eq!(a.pids.current, 3);
        assert_eq!(a.memory.total_rss, 77);
        assert_eq!(a.memory.usage.usage, 4096);
        let b = to_v2(&s);
        assert_eq!(b.cpu.usage_usec, 5);
        assert_eq!(b.memory.anon, 88);
        let any = to_any(&s, CgroupMode::V1).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    }
}
