//! Conformance where the OCI runtime spec or runc (the reference where the spec is silent) say
//! what a container process must be, in host mode (`hull`) and vm mode (`hull --config
//! vm.toml`, the same container driver inside the pod's VM):
//! - an exec'd process gets the container's seccomp profile, and its noNewPrivileges and
//!   capabilities when its own process names none;
//! - uids and gids outside 0..=2147483647 are refused (4294967295 would mean "root");
//! - `disableOOMKiller` reaches cgroup v1's memory.oom_control (v2 has no such knob);
//! - nothing between loading the seccomp filter and exec can be denied by the profile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use hull_tests::*;
use serde_json::{json, Value};

/// Bound of one `hull` call that boots a VM.
const VM_CALL: Duration = Duration::from_secs(180);

/// What a probe prints of /proc/self/status, then whether `mkdir` was let through.
const PROBE: &str = "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/self/status; \
                     mkdir /tmp/probe-dir && echo made || echo denied";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A profile allowing everything but `names`, which fail with EPERM.
fn deny(names: &[&str]) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    })
}

/// `Name:\tvalue` lines as a map.
fn status_fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Capability sets as /proc/PID/status prints them: CAP_CHOWN (bit 0) alone.
const CHOWN_ONLY: &str = "0000000000000001";

/// A container whose process keeps CAP_CHOWN only, without noNewPrivileges (so the filter
/// must go on with CAP_SYS_ADMIN that the payload must not end up with), mkdir denied.
fn confined(args: &[&str]) -> Bundle {
    Bundle::with(args, |v| {
        v["linux"]["seccomp"] = deny(&["mkdir", "mkdirat"]);
        v["process"]
            .as_object_mut()
            .unwrap()
            .remove("noNewPrivileges");
        v["process"]["capabilities"] = json!({
            "bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]
        });
    })
}

/// Check a probe's output: filtered, mkdir denied, CAP_CHOWN alone in every set.
fn assert_confined(out: &Output, nnp: &str) {
    let text = stdout(out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(out));
    let f = status_fields(&text);
    assert_eq!(f.get("Seccomp").map(String::as_str), Some("2"), "{text}");
    assert_eq!(f.get("NoNewPrivs").map(String::as_str), Some(nnp), "{text}");
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            f.get(set).map(String::as_str),
            Some(CHOWN_ONLY),
            "{set}: {text}"
        );
    }
    assert!(text.trim_end().ends_with("denied"), "{text}");
}

/// A process.json with no capabilities, noNewPrivileges or anything else of the
/// container's: those must come from the container.
fn bare_process(dir: &Path, args: &[&str], user: Value) -> PathBuf {
    let p = dir.join(format!("process-{}.json", unique_id("p")));
    let process = json!({"terminal": false, "user": user, "args": args,
                         "env": ["PATH=/bin"], "cwd": "/"});
    std::fs::write(&p, process.to_string()).unwrap();
    p
}

/// A failed call: exit 1 and one stderr line naming every one of `needles`.
fn refused(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {err}",
        stdout(out)
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "want one error line: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
}

/// Bundles whose `process.user` has 4294967295 as uid, gid or an additional gid, each with
/// the field the error must name.
fn out_of_range_users() -> Vec<(Bundle, &'static str)> {
    [
        (
            json!({"uid": 4294967295u32, "gid": 0}),
            "process.user.uid 4294967295",
        ),
        (
            json!({"uid": 0, "gid": 4294967295u32}),
            "process.user.gid 4294967295",
        ),
        (
            json!({"uid": 0, "gid": 0, "additionalGids": [4294967295u32]}),
            "process.user.additionalGids 4294967295",
        ),
    ]
    .into_iter()
    .map(|(user, needle)| {
        (
            Bundle::with(&["id"], |v| v["process"]["user"] = user),
            needle,
        )
    })
    .collect()
}

/// The exec forms with an out-of-range id, each with the field the error must name.
fn out_of_range_execs(dir: &Path, id: &str) -> Vec<(Vec<String>, &'static str)> {
    let pf = bare_process(dir, &["id"], json!({"uid": 4294967295u32, "gid": 0}));
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            s(&["exec", "-u", "4294967295", id, "id"]),
            "process.user.uid 4294967295",
        ),
        (
            s(&["exec", "-u", "0:4294967295", id, "id"]),
            "process.user.gid 4294967295",
        ),
        (
            s(&["exec", "--additional-gids", "4294967295", id, "id"]),
            "process.user.additionalGids 4294967295",
        ),
        (
            s(&["exec", "--process", pf.to_str().unwrap(), id]),
            "process.user.uid 4294967295",
        ),
    ]
}

/// Profiles that deny what a runtime's init might still call after loading the filter
/// (`getcwd` for its cwd check; closing and stat'ing fds, talking to its parent, dropping
/// capabilities), with and without noNewPrivileges (libcontainer loads at two places), and
/// the command and output that must come through.
fn pre_exec_denials() -> Vec<(Bundle, String, &'static str)> {
    let mut out = Vec::new();
    let many = [
        "getcwd",
        "close",
        "fstat",
        "newfstatat",
        "statx",
        "read",
        "write",
        "sendmsg",
        "sendto",
        "recvmsg",
        "recvfrom",
        "capset",
        "prctl",
        "chdir",
        "openat",
        "connect",
        "accept4",
        "socket",
    ];
    for nnp in [None, Some(true)] {
        for (names, args, want) in [
            (&["getcwd"][..], &["echo", "ran"][..], "ran\n"),
            (&many[..], &["true"][..], ""),
        ] {
            let b = Bundle::with(args, |v| {
                v["linux"]["seccomp"] = deny(names);
                match nnp {
                    Some(n) => v["process"]["noNewPrivileges"] = n.into(),
                    None => {
                        v["process"]
                            .as_object_mut()
                            .unwrap()
                            .remove("noNewPrivileges");
                    }
                }
            });
            out.push((
                b,
                format!("{names:?} denied, noNewPrivileges {nnp:?}"),
                want,
            ));
        }
    }
    out
}

/// The v1 memory cgroup directory of `pid`; `None` on a cgroup v2 host.
fn memory_v1_dir(pid: i64) -> Option<PathBuf> {
    let mount = Path::new("/sys/fs/cgroup/memory");
    if !mount.join("memory.oom_control").exists() {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            c.split(',').any(|c| c == "memory").then(|| p.to_string())
        })
        .expect("a memory line in /proc/PID/cgroup");
    Some(mount.join(path.trim_start_matches('/')))
}

fn oom_kill_disable(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("memory.oom_control")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill_disable "))
        .unwrap_or("?")
        .to_string()
}

// ---------------------------------------------------------------------------------------
// host mode

#[test]
fn exec_gets_the_containers_seccomp_profile_and_capabilities() {
    let h = Hull::new();
    let b = confined(&["sleep", "1000"]);
    let id = unique_id("seccexec");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    // The init as the spec says (read from here, the host).
    let pid = h.state(&id)["pid"].as_i64().unwrap();
    let init = status_fields(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap());
    assert_eq!(init["Seccomp"], "2");
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(init[set], CHOWN_ONLY, "init {set}");
    }
    // argv form (the container's process with the flags applied).
    assert_confined(&h.run(&["exec", &id, "sh", "-c", PROBE]), "0");
    // --process with nothing of the container's in it, as containerd sends.
    let pf = bare_process(b.path(), &["sh", "-c", PROBE], json!({"uid": 0, "gid": 0}));
    assert_confined(
        &h.run(&["exec", "--process", pf.to_str().unwrap(), &id]),
        "0",
    );
    h.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_gets_the_containers_no_new_privileges() {
    let h = Hull::new();
    let b = Bundle::with(&["sleep", "1000"], |v| {
        v["process"]["noNewPrivileges"] = true.into();
        v["linux"]["seccomp"] = deny(&["mkdir", "mkdirat"]);
    });
    let id = unique_id("nnpexec");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let pf = bare_process(b.path(), &["sh", "-c", PROBE], json!({"uid": 0, "gid": 0}));
    let out = h.run(&["exec", "--process", pf.to_str().unwrap(), &id]);
    let f = status_fields(&stdout(&out));
    assert_eq!(
        f.get("NoNewPrivs").map(String::as_str),
        Some("1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        f.get("Seccomp").map(String::as_str),
        Some("2"),
        "{}",
        stdout(&out)
    );
    h.ok(&["delete", "--force", &id]);
}

#[test]
fn user_ids_out_of_range_are_refused() {
    let h = Hull::new();
    for (b, needle) in out_of_range_users() {
        let id = unique_id("bigid");
        refused(
            &h.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]),
            &[needle],
        );
        assert!(!h.has_state(&id), "{id} left state behind");
    }
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("bigidexec");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    for (args, needle) in out_of_range_execs(b.path(), &id) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&h.run(&args), &[needle]);
    }
    h.ok(&["delete", "--force", &id]);
}

#[test]
fn disable_oom_killer_reaches_memory_oom_control() {
    let h = Hull::new();
    let b = Bundle::with(&["sleep", "1000"], |v| {
        v["linux"]["resources"]["memory"] =
            json!({"limit": 64 * 1024 * 1024, "disableOOMKiller": true});
    });
    let id = unique_id("nooom");
    h.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let pid = h.state(&id)["pid"].as_i64().unwrap();
    match memory_v1_dir(pid) {
        Some(dir) => {
            // Set by create, before the process runs; an update of the memory limit keeps it.
            assert_eq!(oom_kill_disable(&dir), "1", "{}", dir.display());
            h.ok(&["start", &id]);
            h.ok(&["update", "--memory", "100000000", &id]);
            assert_eq!(oom_kill_disable(&dir), "1", "after update");
        }
        // cgroup v2: no such knob; runc ignores the field and so does hull.
        None => {
            h.ok(&["start", &id]);
        }
    }
    assert_eq!(h.state(&id)["status"], "running");
    h.ok(&["delete", "--force", &id]);

    // Without the field, the OOM killer stays on.
    let b = Bundle::with(&["sleep", "1000"], |v| {
        v["linux"]["resources"]["memory"] = json!({"limit": 64 * 1024 * 1024});
    });
    let id = unique_id("oom");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let pid = h.state(&id)["pid"].as_i64().unwrap();
    if let Some(dir) = memory_v1_dir(pid) {
        assert_eq!(oom_kill_disable(&dir), "0");
    }
    h.ok(&["delete", "--force", &id]);
}

#[test]
fn nothing_between_the_seccomp_filter_and_exec_can_be_denied() {
    let h = Hull::new();
    for (b, what, want) in pre_exec_denials() {
        let id = unique_id("prexec");
        let out = h.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
        assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
        assert_eq!(stdout(&out), want, "{what}");
    }
}

// ---------------------------------------------------------------------------------------
// vm mode: the same through a pod's VM (hull-agent runs the same container driver there)

/// A vm-isolation config naming this workspace's guest files, in a directory of its own.
struct VmConfig {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// `None` only where a person opted out of vm tests (see `guest_artefacts`).
fn vm_config() -> Option<VmConfig> {
    let a = guest_artefacts()?;
    let dir = tempfile::Builder::new()
        .prefix("hull-vmcfg-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("vm.toml");
    std::fs::write(&path, vm_config_text("vm", &a.kernel, &a.initrd)).unwrap();
    Some(VmConfig { _dir: dir, path })
}

/// `hull --config CFG ARGS...`, bounded, output captured.
fn vm(h: &Hull, c: &VmConfig, args: &[&str]) -> Output {
    let mut all = vec!["--config", c.path.to_str().unwrap()];
    all.extend_from_slice(args);
    output_with_timeout(h.cmd(&all), VM_CALL)
}

/// `hull --config CFG run --bundle B ID` (foreground, in its own VM).
fn vm_run(h: &Hull, c: &VmConfig, b: &Bundle, id: &str) -> Output {
    vm(h, c, &["run", "--bundle", b.path().to_str().unwrap(), id])
}

/// `vm` that must succeed: its stdout.
fn vm_ok(h: &Hull, c: &VmConfig, args: &[&str]) -> String {
    let out = vm(h, c, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "hull {args:?}: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// `run -d` of `b` as `id` in its own VM, with stdio on a file (the container outlives us).
fn vm_run_detached(h: &Hull, c: &VmConfig, b: &Bundle, id: &str) {
    let log = std::fs::File::create(b.path().join("run-d.log")).unwrap();
    let mut cmd: Command = h.cmd(&[
        "--config",
        c.path.to_str().unwrap(),
        "run",
        "-d",
        "--bundle",
        b.path().to_str().unwrap(),
        id,
    ]);
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    let st = cmd.spawn().unwrap().wait().unwrap();
    let text = std::fs::read_to_string(b.path().join("run-d.log")).unwrap_or_default();
    assert!(st.success(), "run -d {id}: {text}");
    assert_eq!(h.state(id)["status"], "running");
}

#[test]
fn vm_exec_gets_the_containers_seccomp_profile_and_capabilities() {
    let Some(c) = vm_config() else { return };
    let (h, _cleanup) = hull_with_cleanup();
    let b = confined(&["sleep", "1000"]);
    let id = unique_id("vmseccexec");
    vm_run_detached(&h, &c, &b, &id);
    assert_confined(&vm(&h, &c, &["exec", &id, "sh", "-c", PROBE]), "0");
    let pf = bare_process(b.path(), &["sh", "-c", PROBE], json!({"uid": 0, "gid": 0}));
    assert_confined(
        &vm(&h, &c, &["exec", "--process", pf.to_str().unwrap(), &id]),
        "0",
    );
    vm_ok(&h, &c, &["delete", "--force", &id]);
}

#[test]
fn vm_init_with_a_seccomp_profile_keeps_only_its_capabilities() {
    let Some(c) = vm_config() else { return };
    let (h, _cleanup) = hull_with_cleanup();
    let b = confined(&["sh", "-c", PROBE]);
    let id = unique_id("vmseccinit");
    let out = vm_run(&h, &c, &b, &id);
    assert_confined(&out, "0");
}

#[test]
fn vm_user_ids_out_of_range_are_refused() {
    let Some(c) = vm_config() else { return };
    let (h, _cleanup) = hull_with_cleanup();
    for (b, needle) in out_of_range_users() {
        let id = unique_id("vmbigid");
        refused(&vm_run(&h, &c, &b, &id), &[needle]);
    }
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("vmbigidexec");
    vm_run_detached(&h, &c, &b, &id);
    for (args, needle) in out_of_range_execs(b.path(), &id) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&vm(&h, &c, &args), &[needle]);
    }
    vm_ok(&h, &c, &["delete", "--force", &id]);
}

#[test]
fn vm_disable_oom_killer_is_ignored_on_the_guests_cgroup_v2() {
    let Some(c) = vm_config() else { return };
    let (h, _cleanup) = hull_with_cleanup();
    let probe = "test -e /sys/fs/cgroup/cgroup.controllers && echo cgroup2; \
                 test -e /sys/fs/cgroup/memory.oom_control || echo no-oom_control";
    let b = Bundle::with(&["sh", "-c", probe], |v| {
        v["linux"]["resources"]["memory"] =
            json!({"limit": 64 * 1024 * 1024, "disableOOMKiller": true});
    });
    let id = unique_id("vmnooom");
    let out = vm_run(&h, &c, &b, &id);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The guest has cgroup v2 only, which has no OOM-killer switch (runc ignores the field).
    assert_eq!(stdout(&out), "cgroup2\nno-oom_control\n");
}

#[test]
fn vm_nothing_between_the_seccomp_filter_and_exec_can_be_denied() {
    let Some(c) = vm_config() else { return };
    let (h, _cleanup) = hull_with_cleanup();
    for (b, what, want) in pre_exec_denials() {
        let id = unique_id("vmprexec");
        let out = vm_run(&h, &c, &b, &id);
        assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
        assert_eq!(stdout(&out), want, "{what}");
    }
}
