//! Host containers on a pure cgroup v2 machine (Debian 12's default; this project's machines
//! are hybrid): run in the nested machine (`scripts/nested-machine`, cgroup2 alone on
//! /sys/fs/cgroup). Metrics, a memory and pids update, pause (the v2 freezer) and delete,
//! through the real `hull` binary, end to end.

use hull_tests::*;
use serde_json::Value;

#[test]
fn metrics_update_pause_and_delete_work_on_a_pure_cgroup_v2_host() {
    let b = Bundle::new(&["sh", "-c", "while :; do sleep 1; done"]);
    let text = in_nested_machine(
        &format!(
            r#"hull="{hull} --root /run/hull-v2"
echo "== fs $(stat -fc %T /sys/fs/cgroup)"
$hull run -d --bundle {bundle} v2c || exit 1
pid=$($hull state v2c | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
cg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/$pid/cgroup)
echo "== stats $($hull events --stats v2c)"
$hull update --memory 67108864 --pids-limit 55 v2c || exit 2
echo "== limits $(cat $cg/memory.max) $(cat $cg/pids.max)"
$hull pause v2c || exit 3
echo "== paused $($hull state v2c | grep -o '"status": *"[a-z]*"') $(cat $cg/cgroup.freeze) $(sed -n 's/^State:\s*//p' /proc/$pid/status)"
$hull resume v2c || exit 4
$hull delete --force v2c || exit 5
echo "== left $(ls /run/hull-v2 | wc -l) $([ -d $cg ] && echo cgroup || echo none)"
"#,
            hull = bin("hull").display(),
            bundle = b.path().display(),
        ),
        &[b.path()],
    );
    let line = |name: &str| reported(&text, name);
    assert_eq!(line("fs"), "cgroup2fs", "the machine has cgroup v2 alone");
    let ev: Value = serde_json::from_str(&line("stats")).unwrap();
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    assert!(
        ev["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert_eq!(line("limits"), "67108864 55");
    let paused = line("paused");
    assert!(
        paused.contains("\"paused\"") && paused.contains(" 1 "),
        "{paused}"
    );
    assert_eq!(line("left"), "0 none");
}
