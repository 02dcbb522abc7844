//! Round trips over the unix transport (median of 1000): a no-op request (Check) and an exec of
//! `true` (ExecProcess + WaitProcess); and the agent's idle RSS. Prints numbers, asserts nothing.
//!
//! Run: `cargo bench -p hull-agent --bench agent_rtt`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    const N: usize = 1000;
    let agent = common::TestAgent::start();
    let c = agent.client();
    assert!(c.check().unwrap());
    let pid = agent.agent_pid().expect("agent pid");
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss_kib(pid);

    let mut checks = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        c.check().unwrap();
        checks.push(t.elapsed());
    }

    let id = "bench";
    let rootfs = agent.busybox_rootfs(id);
    let caps = ["CAP_KILL"];
    let spec = agent.spec(id, &["/bin/sleep", "100000"], false, &caps);
    c.create_container(id, &spec, &rootfs, vec![]).unwrap();
    c.start_container(id).unwrap();
    let proc_json =
        serde_json::to_vec(&common::process_json(&["/bin/true"], false, &caps)).unwrap();
    let mut execs = Vec::with_capacity(N);
    for i in 0..N {
        let exec_id = format!("t{i}");
        let t = Instant::now();
        c.exec_process(id, &exec_id, &proc_json).unwrap();
        let code = c
            .wait_process(id, &exec_id, Duration::from_secs(30))
            .unwrap();
        execs.push(t.elapsed());
        assert_eq!(code, 0);
    }
    let busy_rss = rss_kib(pid);
    c.remove_container(id).unwrap();

    println!("hull-agent over unix, {N} samples each");
    println!(
        "  Check round trip:      median {:>9.1?}  p10 {:>9.1?}  p90 {:>9.1?}",
        median(checks.clone()),
        pct(&checks, 0.1),
        pct(&checks, 0.9)
    );
    println!(
        "  exec `true` + wait:    median {:>9.1?}  p10 {:>9.1?}  p90 {:>9.1?}",
        median(execs.clone()),
        pct(&execs, 0.1),
        pct(&execs, 0.9)
    );
    println!(
        "  agent RSS idle: {} KiB ({:.1} MiB); after {N} execs: {} KiB",
        idle_rss,
        idle_rss as f64 / 1024.0,
        busy_rss
    );
}
