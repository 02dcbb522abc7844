//! `hull events`: the container's resource usage in runc's `events` shape, and its OOM kills.

use std::collections::HashMap;
use std::time::Duration;

use hull_runtime::pod::{Stats, Status};
use serde_json::json;

use super::{Globals, Target};
use crate::error::{Error, Result};

/// Stats in the shape of runc's `events --stats` `data` object.
pub fn runc_stats(s: &Stats) -> serde_json::Value {
    let mem = |d: &hull_container::stats::MemoryData| json!({"usage": d.usage, "max": d.max_usage, "failcnt": d.fail_count, "limit": d.limit});
    let raw: HashMap<&String, &u64> = s.memory.stats.iter().collect();
    json!({
        "cpu": {
            "usage": {
                "total": s.cpu.usage.usage_total,
                "percpu": s.cpu.usage.per_core_usage_total,
                "kernel": s.cpu.usage.usage_kernel,
                "user": s.cpu.usage.usage_user,
            },
            "throttling": {
                "periods": s.cpu.throttling.periods,
                "throttledPeriods": s.cpu.throttling.throttled_periods,
                "throttledTime": s.cpu.throttling.throttled_time,
            }
        },
        "memory": {
            "cache": s.memory.cache,
            "usage": mem(&s.memory.memory),
            "swap": mem(&s.memory.memswap),
            "kernel": mem(&s.memory.kernel),
            "kernelTCP": mem(&s.memory.kernel_tcp),
            "raw": raw,
        },
        "pids": {"current": s.pids.current, "limit": s.pids.limit},
        "blkio": {},
        "hugetlb": {},
    })
}

fn parse_interval(s: &str) -> Result<Duration> {
    let bad = || Error::InvalidInput(format!("--interval {s:?}: expected e.g. 5s or 500ms"));
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1000)
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(Duration::from_millis(n * mul))
}

/// `hull events`: stats once (`--stats`), or stats and OOM events every interval.
pub fn run(g: &Globals, id: &str, once: bool, interval: &str) -> Result<i32> {
    let target = Target::of(g, id);
    let sandbox = target.containers();
    let every = parse_interval(interval)?;
    let mut ooms = if once { 0 } else { sandbox.oom_kills(id)? };
    loop {
        let st = sandbox.state(id)?;
        if st.status == Status::Stopped {
            return if once {
                Err(hull_runtime::Error::wrong_status(id, "stopped", "read stats").into())
            } else {
                Ok(0)
            };
        }
        if !once {
            // As runc: one {"type":"oom"} line for each OOM kill since the last look.
            let now = sandbox.oom_kills(id).unwrap_or(ooms);
            for _ in ooms..now {
                println!("{}", json!({"type": "oom", "id": id}));
            }
            ooms = now;
        }
        let stats = sandbox.stats(id)?;
        println!(
            "{}",
            json!({"type": "stats", "id": id, "data": runc_stats(&stats)})
        );
        if once {
            return Ok(0);
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
