//! Benchmark: wall time from exec of `hull-vmm` to the tiny guest's first serial byte, and the
//! VMM's max RSS, with 64 MiB of guest memory. Prints numbers; asserts nothing.
//!
//! `cargo run --release -p hull-vmm --example first_serial_byte -- PATH/TO/hull-vmm [RUNS [ARGS...]]`
//! (ARGS go to hull-vmm, e.g. `--no-rng`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

// The child is reaped by wait4 below, which also reports its max RSS.
#[allow(clippy::zombie_processes)]
fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .expect("usage: first_serial_byte PATH/TO/hull-vmm [RUNS]");
    let runs: usize = args
        .next()
        .map(|r| r.parse().expect("RUNS must be a number"))
        .unwrap_or(20);
    let extra: Vec<String> = args.collect();
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm on this host: nothing to measure");
        std::process::exit(1);
    }
    let (_dir, kernel) = common::write_temp("bench.elf", &common::elf(common::SERIAL64, false));
    let mut first_byte = Vec::new();
    let mut total = Vec::new();
    let mut rss_kib = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = Command::new(&bin)
            .args(["--kernel", kernel.to_str().unwrap(), "--memory", "64"])
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("cannot exec hull-vmm");
        let mut out = child.stdout.take().unwrap();
        let mut b = [0u8; 1];
        out.read_exact(&mut b).expect("guest printed nothing");
        first_byte.push(start.elapsed());
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).unwrap();
        let mut status = 0;
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: waits for our own child by its pid; status and usage point at live locals.
        let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, usage.as_mut_ptr()) };
        assert_eq!(r, child.id() as i32);
        total.push(start.elapsed());
        // SAFETY: wait4 succeeded, so it filled `usage`.
        rss_kib.push(unsafe { usage.assume_init() }.ru_maxrss);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "hull-vmm failed"
        );
    }
    first_byte.sort();
    total.sort();
    rss_kib.sort();
    let med = |v: &[std::time::Duration]| v[v.len() / 2].as_secs_f64() * 1e3;
    println!("runs: {runs}, guest memory: 64 MiB, extra arguments: {extra:?}");
    println!(
        "exec -> first serial byte: min {:.2} ms, median {:.2} ms, max {:.2} ms",
        first_byte[0].as_secs_f64() * 1e3,
        med(&first_byte),
        first_byte[runs - 1].as_secs_f64() * 1e3
    );
    println!("exec -> exit (i8042 reset): median {:.2} ms", med(&total));
    println!(
        "max RSS of hull-vmm: min {} KiB, median {} KiB, max {} KiB",
        rss_kib[0],
        rss_kib[runs / 2],
        rss_kib[runs - 1]
    );
}
