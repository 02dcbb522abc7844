//! Checkpoint and restore of host containers: through CRIU, which `hull check` probes for real
//! (a dump of a process of its own). On a host where CRIU cannot dump (Debian 12's criu 3.17
//! on a 6.18 kernel: "vdso: Unexpected rt vDSO area bounds"), `hull checkpoint` says so in one
//! line and the container runs on untouched; where it dumps, a counter is checkpointed, stops,
//! is restored and counts on from its number. The round trip always runs once in the nested
//! machine (`scripts/nested-machine`, Debian's own 6.1 kernel, where Debian's CRIU dumps),
//! and here as well when this host's CRIU dumps; each test says which branch it ran.

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

/// The counter: writes an increasing number to /count ten times a second.
const COUNTER: &str =
    "i=0; while :; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.1; done";

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

/// No cgroup of container `id` is frozen (v1 freezer or v2 cgroup.freeze).
fn not_frozen(id: &str) {
    for cg in cgroups_named(id) {
        if let Ok(s) = std::fs::read_to_string(cg.join("freezer.state")) {
            assert_eq!(s.trim(), "THAWED", "{}", cg.display());
        }
        if let Ok(s) = std::fs::read_to_string(cg.join("cgroup.freeze")) {
            assert_eq!(s.trim(), "0", "{}", cg.display());
        }
    }
}

/// The entries of `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The round trip on this host, where CRIU dumps: checkpoint stops the counter and deletes
/// the container, restore brings it back under its id and it counts on from its number.
fn round_trip_here(h: &Hull, b: &Bundle, id: &str, dir: &Path) {
    let out = h.run(&["checkpoint", "--image-path", dir.to_str().unwrap(), id]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("inventory.img").is_file(), "CRIU's images");
    assert!(
        !h.has_state(id),
        "a checkpoint without --leave-running deletes"
    );
    let saved = host_count(b);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        host_count(b),
        saved,
        "the counter stopped at the checkpoint"
    );
    h.ok(&[
        "restore",
        "-d",
        "--image-path",
        dir.to_str().unwrap(),
        "--bundle",
        b.path().to_str().unwrap(),
        id,
    ]);
    assert_eq!(h.state(id)["status"], "running");
    assert!(
        wait_until(Duration::from_secs(10), || host_count(b) > saved),
        "the restored counter counts"
    );
    let n = host_count(b);
    assert!(
        n > saved && n < saved + 50,
        "it counts on from {saved}, not from 1: {n}"
    );
}

#[test]
fn a_host_checkpoint_needs_a_criu_that_dumps_and_says_so_when_there_is_none() {
    let h = Hull::new();
    let (criu_dumps, line) = criu_line(&h);
    let b = Bundle::new(&["sh", "-c", COUNTER]);
    let id = unique_id("hostck");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(wait_until(Duration::from_secs(10), || host_count(&b) >= 3));
    let images = tempfile::tempdir().unwrap();
    let dir = images.path().join("ck");
    if criu_dumps {
        eprintln!("RAN the working-CRIU branch: this host's CRIU dumps ({line})");
        round_trip_here(&h, &b, &id, &dir);
    } else {
        eprintln!("RAN the refusal branch: this host's CRIU cannot dump ({line})");
        // Into a new directory and into one that holds a file already: refused both times,
        // and neither is touched.
        let kept = images.path().join("kept");
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join("note"), "mine").unwrap();
        for (target, leave) in [(&dir, true), (&kept, false)] {
            let mut args = vec!["checkpoint", "--image-path", target.to_str().unwrap()];
            if leave {
                args.push("--leave-running");
            }
            args.push(&id);
            let out = h.run(&args);
            fails_with(
                &out,
                &["checkpoint of host container", &id, "needs CRIU", "criu"],
            );
        }
        assert!(!dir.exists(), "a refused checkpoint writes nothing");
        assert_eq!(
            listing(&kept),
            ["note"],
            "nor touches a directory it is given"
        );
        not_frozen(&id);
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
    assert!(cgroups_named(&id).is_empty(), "{:?}", cgroups_named(&id));
}

#[test]
fn host_checkpoint_and_restore_refuse_bad_input_in_one_line() {
    let h = Hull::new();
    let images = tempfile::tempdir().unwrap();
    let b = Bundle::new(&["sleep", "600"]);
    let bundle = b.path().to_str().unwrap();
    let out = h.run(&[
        "checkpoint",
        "--image-path",
        images.path().to_str().unwrap(),
        "nosuch",
    ]);
    fails_with(&out, &["nosuch"]);
    let restore = |dir: &Path, id: &str| {
        h.run(&[
            "restore",
            "--image-path",
            dir.to_str().unwrap(),
            "--bundle",
            bundle,
            id,
        ])
    };
    let missing = images.path().join("missing");
    fails_with(
        &restore(&missing, "r1"),
        &["restore of r1", "not a directory"],
    );
    // An empty directory holds no checkpoint.
    fails_with(
        &restore(images.path(), "r1"),
        &["restore of host container r1", "no CRIU checkpoint"],
    );
    assert!(listing(images.path()).is_empty());
    // A corrupt one: an inventory that is not CRIU's.
    let corrupt = images.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("inventory.img"), "not an image").unwrap();
    fails_with(
        &restore(&corrupt, "r1"),
        &["restore of host container r1", "not a CRIU image"],
    );
    // One whose inventory starts right and ends there: CRIU itself refuses it (or, where
    // CRIU cannot run, says why), and what the restore made is gone again.
    std::fs::write(corrupt.join("inventory.img"), 0x5831_3116u32.to_le_bytes()).unwrap();
    let out = restore(&corrupt, "r1");
    fails_with(&out, &["restore container r1", "CRIU"]);
    eprintln!(
        "a truncated checkpoint: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert_eq!(
        listing(&corrupt),
        ["inventory.img"],
        "nothing written there"
    );
    assert!(!h.has_state("r1"));
    assert!(cgroups_named("r1").is_empty());
    assert!(mounts_mentioning(h.root.path().to_str().unwrap()).is_empty());
    // A restore under the id of a container that exists (the original, still running).
    let id = unique_id("exists");
    h.ok(&["run", "-d", "--bundle", bundle, &id]);
    fails_with(&restore(&corrupt, &id), &[&id, "already exists"]);
    assert_eq!(h.state(&id)["status"], "running");
    // A container that does not run cannot be checkpointed.
    h.ok(&["kill", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(10), || h.state(&id)
        ["status"]
        == "stopped"));
    let out = h.run(&[
        "checkpoint",
        "--image-path",
        images.path().join("ck").to_str().unwrap(),
        &id,
    ]);
    fails_with(&out, &[&id, "stopped", "checkpoint"]);
    assert!(!images.path().join("ck").exists());
    h.ok(&["delete", &id]);
}

/// The round trip where CRIU dumps for sure: the nested machine boots Debian's own 6.1
/// kernel, which Debian's criu 3.17 knows. There: `hull check` says yes; a `--leave-running`
/// checkpoint leaves the counter counting and a restore under its running id is refused; a
/// checkpoint stops it and deletes the container; `restore -d` brings it back in its cgroup,
/// counting on from its number; a foreground restore waits for it and deletes it after.
#[test]
fn a_host_counter_is_checkpointed_and_restored_where_criu_dumps() {
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        skip(
            "a_host_counter_is_checkpointed_and_restored_where_criu_dumps",
            "the nested machine needs qemu-system-x86_64",
        );
        return;
    }
    let b = Bundle::new(&["sh", "-c", COUNTER]);
    let text = in_nested_machine(
        &format!(
            r#"hull="{hull} --root /run/hull-ck"
b={bundle}
count() {{ cat $b/rootfs/count; }}
counts() {{ a=$(count); sleep 0.5; [ "$(count)" -gt "$a" ]; }}
echo "== check $($hull check | grep 'checkpoint (host)')"
# stdio of its own: the serial console is a tty CRIU would not dump
$hull run -d --bundle $b ck </dev/null >/dev/null 2>&1 || exit 1
sleep 1
$hull checkpoint --leave-running --image-path /run/img1 ck || exit 2
echo "== leave-running $(counts && echo counting) $($hull state ck | grep -o '"status": *"[a-z]*"')"
same=$($hull restore -d --image-path /run/img1 --bundle $b ck 2>&1)
echo "== same-id $same exit $?"
$hull checkpoint --image-path /run/img2 ck || exit 3
saved=$(count); sleep 0.5
echo "== stopped $saved $(count) $(ls /run/hull-ck | wc -l)"
$hull restore -d --image-path /run/img2 --bundle $b ck </dev/null >/dev/null || exit 4
pid=$($hull state ck | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
sleep 0.3
echo "== restored $saved $(count) $($hull state ck | grep -o '"status": *"[a-z]*"')"
echo "== cgroup $(sed -n 's/^0:://p' /proc/$pid/cgroup)"
echo "== counting $(counts && echo yes)"
$hull checkpoint --image-path /run/img3 ck || exit 5
saved=$(count)
$hull restore --image-path /run/img3 --bundle $b ck </dev/null >/dev/null 2>&1 &
fg=$!
# `state` waits for the restore (it holds the container's lock), then the count goes on
$hull state ck > /dev/null
for i in $(seq 50); do [ "$(count)" -gt "$saved" ] && break; sleep 0.1; done
echo "== foreground $saved $(count) $($hull state ck | grep -o '"status": *"[a-z]*"')"
$hull kill ck KILL
wait $fg
echo "== foreground-exit $? $(ls /run/hull-ck | wc -l)"
mkdir /run/bad && printf '\026\061\061\130' > /run/bad/inventory.img
echo "== truncated $($hull restore -d --image-path /run/bad --bundle $b bad 2>&1 | tr '\n' '|') $(ls /run/bad)"
echo "== left $(ls /sys/fs/cgroup | grep -c -e ck -e bad) $(grep -c /run/hull-ck /proc/self/mountinfo) $(ls /run/hull-ck | wc -l)"
"#,
            hull = bin("hull").display(),
            bundle = b.path().display(),
        ),
        &[b.path()],
    );
    eprintln!("RAN the working-CRIU round trip in the nested machine");
    let line = |name: &str| reported(&text, name);
    let nums = |name: &str| -> Vec<u64> {
        line(name)
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    assert!(
        line("check").contains(" yes "),
        "CRIU dumps there: {}",
        line("check")
    );
    assert_eq!(line("leave-running"), "counting \"status\": \"running\"");
    let same = line("same-id");
    assert!(
        same.contains("container ck already exists") && same.ends_with("exit 1"),
        "{same}"
    );
    // Stopped at the checkpoint (the same number half a second on), the container gone.
    let [saved, later, left] = nums("stopped")[..] else {
        panic!("{}", line("stopped"))
    };
    assert!(
        saved > 3 && later == saved && left == 0,
        "{}",
        line("stopped")
    );
    // Restored (detached, then in the foreground): running, on from its number, not from 1.
    for (name, slack) in [("restored", 20), ("foreground", 30)] {
        let n = nums(name);
        assert!(
            n[1] > n[0] && n[1] < n[0] + slack && line(name).contains("\"running\""),
            "{}",
            line(name)
        );
    }
    assert_eq!(line("cgroup"), "/:youki:ck", "restored into its own cgroup");
    assert_eq!(line("counting"), "yes");
    assert_eq!(
        line("foreground-exit"),
        "137 0",
        "killed, waited for, deleted"
    );
    // A checkpoint cut short: CRIU itself refuses it, in one line, and nothing is left.
    let truncated = line("truncated");
    assert!(
        truncated.starts_with("hull: restore container bad: CRIU ")
            && truncated.ends_with("| inventory.img")
            && truncated.matches('|').count() == 1,
        "{truncated}"
    );
    assert_eq!(line("left"), "0 0 0", "no cgroup, mount or state left");
}
