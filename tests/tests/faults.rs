//! Faults and the lifecycle's edges, through the real `hull` binary: failing poststart and
//! poststop hooks, deleting what is unknown or only created, signal 0 and real-time
//! signals, a corrupt state file, the binary guard's binds, a create killed at any moment, a
//! vm container's host stand-in (mirror) killed. After each, nothing of the
//! container is left: state dir, cgroups, processes, mounts.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use hull_tests::*;
use serde_json::{json, Value};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A container process that names `id` on its command line (so a leftover can be found)
/// and runs `script` in busybox sh (which stays, so do not `exec` from it).
fn marked(id: &str, script: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(": {id}; {script}"),
        "sh".into(),
    ]
}

/// Sleeps on, as the container's init (busybox sh would exec a last lone command).
const SLEEP: &str = "while :; do sleep 1; done";

fn bundle(args: &[String], edit: impl FnOnce(&mut Value)) -> Bundle {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Bundle::with(&args, edit)
}

/// Nothing of `id` is left: state dir, cgroups, processes, mounts of its bundle.
fn nothing_left(h: &Hull, id: &str, bundle: &Path) {
    assert!(!h.has_state(id), "state dir of {id} left behind");
    assert!(
        cgroups_named(id).is_empty(),
        "cgroups left: {:?}",
        cgroups_named(id)
    );
    assert!(
        wait_until(Duration::from_secs(5), || processes_mentioning(id)
            .is_empty()),
        "processes left: {:?}",
        processes_mentioning(id)
    );
    let b = bundle.to_string_lossy();
    assert!(
        mounts_mentioning(&b).is_empty(),
        "mounts left: {:?}",
        mounts_mentioning(&b)
    );
}

fn wait_status(h: &Hull, id: &str, want: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || h.state(id)["status"] == want),
        "{id} is not {want}: {}",
        h.state(id)
    );
}

/// A hook running `script` in the host's sh, the state JSON on its stdin.
fn sh_hook(script: &str) -> Value {
    json!({"path": "/bin/sh", "args": ["sh", "-c", script]})
}

/// A hook that writes the command line of the state's pid to `out`.
fn cmdline_hook(out: &Path) -> Value {
    sh_hook(&format!(
        "p=$(sed -n 's/.*\"pid\": *\\([0-9]*\\).*/\\1/p'); tr '\\0' ' ' < /proc/$p/cmdline > {}",
        out.display()
    ))
}

#[test]
fn a_failing_poststart_hook_is_a_warning_and_the_hooks_see_the_program() {
    let h = Hull::new();
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("cmdline");
    let after = dir.path().join("after");
    let id = unique_id("poststart");
    let b = bundle(&marked(&id, SLEEP), |v| {
        // The init takes its time between start and exec: poststart waits for the exec.
        v["hooks"] = json!({"startContainer": [sh_hook("sleep 0.3")], "poststart": [
            cmdline_hook(&seen),
            {"path": "/no/such/poststart-hook"},
            sh_hook("exit 3"),
            sh_hook(&format!("cat > {}", after.display())),
        ]});
    });
    h.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let out = h.run(&["start", &id]);
    assert_eq!(out.status.code(), Some(0), "start: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("poststart hook #1 (/no/such/poststart-hook) failed")
            && err.contains("poststart hook #2"),
        "start warns of each failing hook: {err}"
    );
    assert_eq!(h.state(&id)["status"], "running");
    // The hooks after the failing ones ran; the first saw the program, not hull's init.
    assert!(after.exists(), "the last poststart hook did not run");
    let cmdline = std::fs::read_to_string(&seen).expect("the first poststart hook ran");
    assert!(
        cmdline.starts_with(&format!("sh -c : {id}; {SLEEP}")),
        "the poststart hook saw {cmdline:?}"
    );
    h.ok(&["delete", "--force", &id]);
    nothing_left(&h, &id, b.path());
}

#[test]
fn a_failing_poststop_hook_is_a_warning_and_the_container_is_deleted() {
    let h = Hull::new();
    let dir = tempfile::tempdir().unwrap();
    let gone_hook = dir.path().join("hook.sh");
    std::fs::write(&gone_hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(
        &gone_hook,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ran = dir.path().join("ran");
    let id = unique_id("poststop");
    let b = bundle(&marked(&id, "true"), |v| {
        v["hooks"] = json!({"poststop": [
            {"path": gone_hook},
            sh_hook("exit 3"),
            sh_hook(&format!("cat > {}", ran.display())),
        ]});
    });
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    wait_status(&h, &id, "stopped");
    // The hook's binary is gone by the time of the delete (an uninstalled tool).
    std::fs::remove_file(&gone_hook).unwrap();
    let out = h.run(&["delete", &id]);
    assert_eq!(out.status.code(), Some(0), "delete: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("poststop hook #0") && err.contains("poststop hook #1"),
        "delete warns of each failing hook: {err}"
    );
    let state = std::fs::read_to_string(&ran).expect("the third poststop hook ran");
    assert!(state.contains(&format!("\"id\":\"{id}\"")), "{state}");
    nothing_left(&h, &id, b.path());
    // Gone for good: a second delete finds nothing.
    assert_eq!(h.run(&["delete", &id]).status.code(), Some(1));
}

#[test]
fn delete_force_of_an_unknown_container_is_silent_success() {
    let h = Hull::new();
    let out = h.run(&["delete", "--force", "ghost"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!((stdout(&out), stderr(&out)), (String::new(), String::new()));
    // Without --force it is still an error; a bad id is one even with it.
    assert_eq!(h.run(&["delete", "ghost"]).status.code(), Some(1));
    assert_eq!(
        h.run(&["delete", "--force", "../etc"]).status.code(),
        Some(1)
    );
}

#[test]
fn plain_delete_removes_a_created_container() {
    let h = Hull::new();
    let id = unique_id("delcreated");
    let b = bundle(&marked(&id, SLEEP), |_| {});
    h.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(h.state(&id)["status"], "created");
    let out = h.run(&["delete", &id]);
    assert_eq!(out.status.code(), Some(0), "delete: {}", stderr(&out));
    nothing_left(&h, &id, b.path());
}

/// A container whose init records each signal it traps (by number) in /tmp/got, and ends
/// on SIGRTMIN+3 (37) as systemd does.
fn signal_recorder(id: &str) -> Bundle {
    let traps: String = [34, 40, 63]
        .iter()
        .map(|n| format!("trap 'echo {n} >> /tmp/got' {n}; "))
        .collect();
    let script = format!(
        "{traps}trap 'echo 37 >> /tmp/got; exit 0' 37; echo up > /tmp/up; \
         while true; do sleep 0.05; done"
    );
    bundle(&marked(id, &script), |_| {})
}

fn got(b: &Bundle) -> Vec<String> {
    std::fs::read_to_string(b.path().join("rootfs/tmp/got"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn kill_sends_signal_zero_and_real_time_signals_by_number_and_name() {
    let h = Hull::new();
    let id = unique_id("rtsig");
    let b = signal_recorder(&id);
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(wait_until(Duration::from_secs(10), || b
        .path()
        .join("rootfs/tmp/up")
        .exists()));
    // Signal 0: is it there? Yes, and nothing happens to it.
    h.ok(&["kill", &id, "0"]);
    assert_eq!(h.state(&id)["status"], "running");
    let mut want = Vec::new();
    for (sig, n) in [("RTMIN", "34"), ("40", "40"), ("SIGRTMAX-1", "63")] {
        h.ok(&["kill", &id, sig]);
        want.push(n.to_string());
        assert!(
            wait_until(Duration::from_secs(5), || got(&b) == want),
            "after {sig}: {:?}",
            got(&b)
        );
    }
    // --all with a real-time signal reaches the init too.
    h.ok(&["kill", "--all", &id, "RTMIN+6"]);
    want.push("40".into());
    assert!(
        wait_until(Duration::from_secs(5), || got(&b) == want),
        "{:?}",
        got(&b)
    );
    assert_eq!(h.state(&id)["status"], "running");
    // systemd's stop signal ends it.
    h.ok(&["kill", &id, "SIGRTMIN+3"]);
    wait_status(&h, &id, "stopped");
    want.push("37".into());
    assert_eq!(got(&b), want);
    // Out of range is still refused.
    assert_eq!(h.run(&["kill", &id, "65"]).status.code(), Some(1));
    h.ok(&["delete", &id]);
    nothing_left(&h, &id, b.path());
}

/// Runs a container and breaks its state file with `corrupt` (given the state dir).
fn corrupted(h: &Hull, id: &str, corrupt: impl FnOnce(&Path)) -> (Bundle, i32) {
    let b = bundle(&marked(id, SLEEP), |_| {});
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), id]);
    let pid = h.state(id)["pid"].as_i64().unwrap() as i32;
    assert!(!cgroups_named(id).is_empty());
    assert!(!processes_mentioning(id).is_empty());
    corrupt(&h.root.path().join(id));
    (b, pid)
}

fn gone(pid: i32, id: &str) -> bool {
    // The init is reparented and reaped elsewhere; a reused pid would not name the id.
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| !String::from_utf8_lossy(&c).contains(id))
        .unwrap_or(true)
}

#[test]
fn a_corrupt_state_file_is_listed_reported_and_cleaned_up_by_delete_force() {
    let h = Hull::new();
    let id = unique_id("corrupt");
    let (b, pid) = corrupted(&h, &id, |dir| {
        std::fs::write(dir.join("state.json"), "{\"ociVersion\": \"1.0.2\", \"id").unwrap();
    });
    // list: there, status unknown, and said why on stderr.
    let out = h.run(&["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = stdout(&out)
        .lines()
        .find(|l| l.starts_with(&id))
        .map(String::from);
    assert!(
        line.as_deref().is_some_and(|l| l.contains("unknown")),
        "list: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.lines().count() == 1 && err.contains(&id) && err.contains("corrupt"),
        "one warning naming it: {err}"
    );
    let json: Value = serde_json::from_str(&h.ok(&["list", "--format", "json"])).unwrap();
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["status"] == "unknown"),
        "{json}"
    );
    // state: one line naming the file and what is wrong.
    let out = h.run(&["state", &id]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("state.json") && err.contains("corrupt"),
        "{err}"
    );
    // Only a forced delete acts on it, and leaves nothing.
    assert_eq!(h.run(&["delete", &id]).status.code(), Some(1));
    let out = h.run(&["delete", "--force", &id]);
    assert_eq!(out.status.code(), Some(0), "delete -f: {}", stderr(&out));
    assert!(wait_until(Duration::from_secs(5), || gone(pid, &id)));
    nothing_left(&h, &id, b.path());
}

#[test]
fn delete_force_finds_the_cgroup_when_the_whole_state_is_gone() {
    let h = Hull::new();
    let id = unique_id("nostate");
    // Both records unreadable: the cgroup is found by the name create gives it.
    let (b, pid) = corrupted(&h, &id, |dir| {
        std::fs::write(dir.join("state.json"), "").unwrap();
        std::fs::remove_file(dir.join("youki_config.json")).unwrap();
    });
    let out = h.run(&["delete", "--force", &id]);
    assert_eq!(out.status.code(), Some(0), "delete -f: {}", stderr(&out));
    assert!(wait_until(Duration::from_secs(5), || gone(pid, &id)));
    nothing_left(&h, &id, b.path());
}

/// The `/run/hull-exe` binds whose mount source mentions `needle`.
fn guard_binds_of(needle: &str) -> Vec<String> {
    mounts_mentioning(needle)
        .into_iter()
        .filter(|l| l.contains("/run/hull-exe/"))
        .collect()
}

fn copy_of_hull(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("hull");
    std::fs::copy(bin("hull"), &p).unwrap();
    p
}

#[test]
fn the_binary_guard_drops_the_bind_of_a_deleted_binary() {
    let dir = tempfile::Builder::new()
        .prefix("hull-guard-e2e-")
        .tempdir()
        .unwrap();
    let root = dir.path().join("root");
    // `create` re-execs from the guard's bind before it looks at its (missing) bundle.
    let create = |hull: &Path| {
        let out = output_with_timeout(
            {
                let mut c = std::process::Command::new(hull);
                c.arg("--root")
                    .arg(&root)
                    .args(["create", "--bundle", "/nonexistent", "g1"]);
                c
            },
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("/nonexistent"), "{}", stderr(&out));
    };
    let old = copy_of_hull(dir.path(), "old");
    let old_dir = old.parent().unwrap().to_string_lossy().into_owned();
    create(&old);
    assert_eq!(guard_binds_of(&old_dir).len(), 1, "the first binary's bind");
    // An upgrade: the old binary goes, a new one runs.
    std::fs::remove_file(&old).unwrap();
    let new = copy_of_hull(dir.path(), "new");
    let new_dir = new.parent().unwrap().to_string_lossy().into_owned();
    create(&new);
    assert_eq!(
        guard_binds_of(&old_dir),
        Vec::<String>::new(),
        "the deleted binary is still pinned"
    );
    let new_binds = guard_binds_of(&new_dir);
    assert_eq!(new_binds.len(), 1, "{new_binds:?}");
    // Ours to remove: its binary goes with this test's directory.
    let mount_point = new_binds[0].split(' ').nth(4).unwrap().to_string();
    nix::mount::umount2(mount_point.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(&mount_point).unwrap();
}

/// `hull --config CFG ARGS...`, bounded as a call that boots a VM.
fn with_config(h: &Hull, cfg: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    output_with_timeout(h.cmd(&all), Duration::from_secs(180))
}

/// vm mode: the hooks run on the host, leniently, around the container in the pod's VM;
/// a real-time signal reaches it; a created container is deleted without --force.
#[test]
fn vm_hooks_are_lenient_and_real_time_signals_reach_the_guest() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let Some(cfg) = hull_tests::docker::vm_config(cfg_dir.path()) else {
        return;
    };
    let h = Hull::new();
    let with_cfg = |args: &[&str]| with_config(&h, &cfg, args);
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let stopped = dir.path().join("stopped");
    let id = unique_id("vmhooks");
    let b = signal_recorder(&id);
    b.edit(|v| {
        v["hooks"] = json!({
            "poststart": [{"path": "/no/such/hook"}, sh_hook(&format!("cat > {}", started.display()))],
            "poststop": [sh_hook("exit 3"), sh_hook(&format!("cat > {}", stopped.display()))],
        });
    });
    let out = with_cfg(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(0), "create: {}", stderr(&out));
    let out = h.run(&["start", &id]);
    assert_eq!(out.status.code(), Some(0), "start: {}", stderr(&out));
    assert!(
        std::fs::read_to_string(&started).is_ok_and(|s| s.contains(&id)),
        "the poststart hook after the failing one ran on the host"
    );
    assert!(wait_until(Duration::from_secs(30), || b
        .path()
        .join("rootfs/tmp/up")
        .exists()));
    h.ok(&["kill", &id, "0"]);
    h.ok(&["kill", &id, "40"]);
    assert!(
        wait_until(Duration::from_secs(10), || got(&b) == ["40"]),
        "{:?}",
        got(&b)
    );
    h.ok(&["kill", &id, "SIGRTMIN+3"]);
    assert!(
        wait_until(Duration::from_secs(30), || h.state(&id)["status"]
            == "stopped"),
        "{}",
        h.state(&id)
    );
    let out = h.run(&["delete", &id]);
    assert_eq!(out.status.code(), Some(0), "delete: {}", stderr(&out));
    assert!(
        std::fs::read_to_string(&stopped).is_ok_and(|s| s.contains(&id)),
        "the poststop hook after the failing one ran on the host"
    );
    assert!(!h.has_state(&id));
    assert!(mounts_mentioning(&b.path().to_string_lossy()).is_empty());
    assert!(wait_until(Duration::from_secs(10), || {
        processes_mentioning(&h.root.path().to_string_lossy()).is_empty()
    }));

    // A created vm container goes with a plain delete.
    let id = unique_id("vmcreated");
    let b = bundle(&marked(&id, SLEEP), |_| {});
    let out = with_cfg(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(0), "create: {}", stderr(&out));
    h.ok(&["delete", &id]);
    assert!(!h.has_state(&id));
}

#[test]
fn a_create_killed_at_any_moment_is_reported_truly_and_delete_force_removes_it() {
    let h = Hull::new();
    let mut killed = Vec::new();
    for i in 0..24u64 {
        let id = unique_id(&format!("killcreate{i}"));
        let b = bundle(&marked(&id, SLEEP), |_| {});
        let mut child = h
            .cmd(&["create", "--bundle", b.path().to_str().unwrap(), &id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kills over a create's ~15-40 ms.
        std::thread::sleep(Duration::from_millis(2 + (i * 7) % 45));
        let _ = child.kill();
        let _ = child.wait();
        killed.push((id, b));
    }
    let mut seen = std::collections::HashMap::new();
    for (id, b) in &killed {
        if !h.has_state(id) {
            // Killed before anything was recorded: nothing may run either.
            nothing_left(&h, id, b.path());
            continue;
        }
        let out = h.run(&["state", id]);
        if !out.status.success() {
            // Killed before the record was written (no state file: nothing runs yet), or
            // while libcontainer rewrote it (an empty file, said to be corrupt): either way
            // one line saying so, and delete --force removes whatever is there.
            let err = stderr(&out);
            let kind = if err.contains("does not exist") {
                assert!(processes_mentioning(id).is_empty(), "{id}: runs unrecorded");
                "unrecorded"
            } else {
                assert!(
                    err.contains("is corrupt") && err.contains("--force"),
                    "{err}"
                );
                "corrupt"
            };
            h.ok(&["delete", "--force", id]);
            nothing_left(&h, id, b.path());
            *seen.entry(kind.to_string()).or_insert(0) += 1;
            continue;
        }
        let st: Value = serde_json::from_slice(&out.stdout).unwrap();
        let status = st["status"].as_str().unwrap().to_string();
        let pid = st["pid"].as_i64().unwrap();
        // What state says is true: a live init has its pid, and a pid 0 means none runs.
        let alive = !processes_mentioning(id).is_empty();
        match status.as_str() {
            "created" | "creating" => {
                assert!(pid > 0 && alive, "{id}: {st} (processes alive: {alive})")
            }
            "stopped" => assert!(pid == 0 && !alive, "{id}: {st} but a process runs"),
            other => panic!("{id}: status {other}: {st}"),
        }
        *seen.entry(status).or_insert(0) += 1;
        h.ok(&["delete", "--force", id]);
        nothing_left(&h, id, b.path());
    }
    eprintln!("states after the kills: {seen:?}");
}

#[test]
fn a_killed_mirror_of_a_vm_container_ends_it_and_state_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = hull_tests::docker::vm_config(dir.path()) else {
        return;
    };
    let h = Hull::new();
    let with_cfg = |args: &[&str]| with_config(&h, &cfg, args);
    let id = unique_id("vmmirror");
    let b = bundle(&marked(&id, SLEEP), |_| {});
    let out = with_cfg(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(0), "create: {}", stderr(&out));
    h.ok(&["start", &id]);
    let st = h.state(&id);
    assert_eq!(st["status"], "running");
    // The pid state shows is the init's stand-in on the host: kill -9 it, as one would a
    // host container's init.
    let pid = st["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || h.state(&id)["status"]
            == "stopped"),
        "after the mirror's death: {}",
        h.state(&id)
    );
    assert_eq!(h.state(&id)["pid"], 0);
    h.ok(&["delete", &id]);
    assert!(!h.has_state(&id));
    assert!(wait_until(Duration::from_secs(10), || {
        processes_mentioning(&h.root.path().to_string_lossy()).is_empty()
    }));
}

#[test]
fn a_foreground_vm_run_is_listed_and_a_killed_one_is_cleaned_up_by_delete() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = hull_tests::docker::vm_config(dir.path()) else {
        return;
    };
    let h = Hull::new();
    let id = unique_id("vmfg");
    let b = bundle(&marked(&id, SLEEP), |_| {});
    let mut run = h
        .cmd(&[
            "--config",
            cfg.to_str().unwrap(),
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Running in the foreground, it is a container like any other: listed, with a state.
    assert!(
        wait_until(Duration::from_secs(60), || h
            .run(&["state", &id])
            .status
            .success()
            && h.state(&id)["status"] == "running"),
        "the foreground vm container never showed as running"
    );
    assert!(h.ok(&["list", "-q"]).lines().any(|l| l == id));
    // `hull run` killed: the container stays reachable, and delete removes all of it.
    let _ = run.kill();
    let _ = run.wait();
    assert_eq!(h.state(&id)["status"], "running");
    h.ok(&["delete", "--force", &id]);
    assert!(!h.has_state(&id));
    assert!(wait_until(Duration::from_secs(10), || {
        processes_mentioning(&h.root.path().to_string_lossy()).is_empty()
    }));
    let root = h.root.path().to_string_lossy().into_owned();
    assert!(
        mounts_mentioning(&root).is_empty(),
        "{:?}",
        mounts_mentioning(&root)
    );
    assert!(
        std::fs::read_dir(h.root.path()).unwrap().next().is_none(),
        "the state root is empty"
    );
}
