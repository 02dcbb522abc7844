//! Checkpoint of host containers: through CRIU, which `hull check` probes for real (a dump of
//! a process of its own). On a host where CRIU cannot dump (Debian 12's criu 3.17 on a 6.18
//! kernel: "vdso: Unexpected rt vDSO area bounds"), `hull checkpoint` says so in one line and
//! the container runs on untouched; this file asserts which of the two this host is.

use std::path::Path;
use std::time::Duration;

use hull_tests::*;

/// `hull check`'s line on host checkpoints: (CRIU dumps here, the line).
fn criu_line(h: &Hull) -> (bool, String) {
    let out = h.ok(&["check"]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("checkpoint (host)"))
        .unwrap_or_else(|| panic!("hull check has no host checkpoint line: {out}"))
        .to_string();
    let yes = line.split_whitespace().nth(2) == Some("yes");
    (yes, line)
}

/// The number a host counter last wrote (its rootfs is the bundle's).
fn host_count(b: &Bundle) -> u64 {
    std::fs::read_to_string(b.path().join("rootfs/count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A failed call: exit 1 and one stderr line containing every needle.
fn fails_with(out: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "want one error line: {err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
}

#[test]
fn a_host_checkpoint_needs_a_criu_that_dumps_and_says_so_when_there_is_none() {
    let h = Hull::new();
    let (criu_dumps, line) = criu_line(&h);
    let b = Bundle::new(&[
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.1; done",
    ]);
    let id = unique_id("hostck");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(wait_until(Duration::from_secs(10), || host_count(&b) >= 3));
    let images = tempfile::tempdir().unwrap();
    let dir = images.path().join("ck");
    let out = h.run(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        dir.to_str().unwrap(),
        &id,
    ]);
    if criu_dumps {
        eprintln!("this host's CRIU dumps ({line}): the checkpoint must work");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dir.join("inventory.img").is_file(), "CRIU's images");
    } else {
        eprintln!("this host's CRIU cannot dump ({line}): the checkpoint must be refused");
        fails_with(
            &out,
            &["checkpoint of host container", &id, "needs CRIU", "criu"],
        );
        assert!(!dir.exists(), "a refused checkpoint writes nothing");
    }
    // Either way the container runs on, counting.
    assert_eq!(h.state(&id)["status"], "running");
    let n = host_count(&b);
    assert!(
        wait_until(Duration::from_secs(10), || host_count(&b) > n),
        "the container runs on after the checkpoint"
    );
    h.ok(&["delete", "-f", &id]);
    assert!(!h.has_state(&id));
}

#[test]
fn host_checkpoint_and_restore_refuse_bad_input_in_one_line() {
    let h = Hull::new();
    let images = tempfile::tempdir().unwrap();
    let b = Bundle::new(&["true"]);
    let out = h.run(&[
        "checkpoint",
        "--image-path",
        images.path().to_str().unwrap(),
        "nosuch",
    ]);
    fails_with(&out, &["nosuch"]);
    let missing = images.path().join("missing");
    let out = h.run(&[
        "restore",
        "--image-path",
        missing.to_str().unwrap(),
        "--bundle",
        b.path().to_str().unwrap(),
        "r1",
    ]);
    fails_with(&out, &["restore of r1", "not a directory"]);
    // A directory that is no vm checkpoint is a host one, which hull does not restore.
    let out = h.run(&[
        "restore",
        "--image-path",
        images.path().to_str().unwrap(),
        "--bundle",
        b.path().to_str().unwrap(),
        "r1",
    ]);
    fails_with(&out, &["restore of host container r1", "not implemented"]);
    assert!(!h.has_state("r1"));
    assert!(Path::new(images.path())
        .read_dir()
        .unwrap()
        .next()
        .is_none());
}
