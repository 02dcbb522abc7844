//! Bad input gets one clear error line, a non-zero exit, and leaves nothing behind.

use std::time::Duration;

use hull_tests::*;
use serde_json::Value;

/// Assert a failed call: exit 1, exactly one stderr line that contains `needle`.
fn fails_with(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "want one error line, got: {err}");
    assert!(err.starts_with("hull: "), "{err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
}

/// Nothing of `id` remains: state dir, cgroup, mounts, processes.
fn nothing_left(h: &Hull, id: &str, bundle: &std::path::Path) {
    assert!(!h.has_state(id), "state dir of {id} left behind");
    assert!(
        cgroups_named(id).is_empty(),
        "cgroup left: {:?}",
        cgroups_named(id)
    );
    let b = bundle.to_string_lossy();
    assert!(
        mounts_mentioning(&b).is_empty(),
        "mounts left: {:?}",
        mounts_mentioning(&b)
    );
}

#[test]
fn missing_bundle() {
    let h = Hull::new();
    let id = unique_id("nobundle");
    let out = h.run(&["create", "--bundle", "/nonexistent/bundle", &id]);
    fails_with(&out, "/nonexistent/bundle");
    nothing_left(&h, &id, std::path::Path::new("/nonexistent/bundle"));
}

#[test]
fn malformed_and_invalid_config() {
    let h = Hull::new();
    let b = Bundle::new(&["true"]);
    let id = unique_id("badcfg");
    std::fs::write(
        b.path().join("config.json"),
        b"{\"ociVersion\": \"1.0.2\", ",
    )
    .unwrap();
    fails_with(
        &h.run(&["create", "--bundle", b.path().to_str().unwrap(), &id]),
        "config.json",
    );
    nothing_left(&h, &id, b.path());

    // Well-formed JSON, but the process has no args.
    let b = Bundle::with(&["true"], |v| v["process"]["args"] = Value::Array(vec![]));
    fails_with(
        &h.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]),
        "args",
    );
    nothing_left(&h, &id, b.path());

    // A root that does not exist.
    let b = Bundle::with(&["true"], |v| v["root"]["path"] = "no-such-rootfs".into());
    fails_with(
        &h.run(&["create", "--bundle", b.path().to_str().unwrap(), &id]),
        "no-such-rootfs",
    );
    nothing_left(&h, &id, b.path());

    // An unsupported spec version.
    let b = Bundle::with(&["true"], |v| v["ociVersion"] = "2.0.0".into());
    fails_with(
        &h.run(&["create", "--bundle", b.path().to_str().unwrap(), &id]),
        "2.0.0",
    );
    nothing_left(&h, &id, b.path());
}

#[test]
fn a_process_that_cannot_start_leaves_nothing() {
    let h = Hull::new();
    let b = Bundle::new(&["/bin/no-such-binary"]);
    let id = unique_id("noexec");
    let out = h.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_ne!(out.status.code(), Some(0));
    assert!(wait_until(Duration::from_secs(5), || !h.has_state(&id)));
    nothing_left(&h, &id, b.path());
}

#[test]
fn unknown_id() {
    let h = Hull::new();
    for verb in ["start", "state", "delete", "pause", "resume", "ps"] {
        fails_with(&h.run(&[verb, "ghost"]), "ghost");
    }
    fails_with(&h.run(&["kill", "ghost", "KILL"]), "ghost");
    fails_with(&h.run(&["exec", "ghost", "true"]), "ghost");
    // Ids that would be paths are refused before anything is touched.
    fails_with(&h.run(&["state", "../etc"]), "invalid container id");
}

#[test]
fn duplicate_id_keeps_the_first_container() {
    let h = Hull::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("dup");
    h.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let pid = h.state(&id)["pid"].clone();
    fails_with(
        &h.run(&["create", "--bundle", b.path().to_str().unwrap(), &id]),
        "already exists",
    );
    fails_with(
        &h.run(&["run", "--bundle", b.path().to_str().unwrap(), &id]),
        "already exists",
    );
    assert_eq!(h.state(&id)["pid"], pid);
    assert_eq!(h.state(&id)["status"], "created");
    h.ok(&["delete", "--force", &id]);
    nothing_left(&h, &id, b.path());
}

#[test]
fn unknown_signal_is_refused_and_the_container_keeps_running() {
    let h = Hull::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("badsig");
    h.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    fails_with(&h.run(&["kill", &id, "SIGNOPE"]), "SIGNOPE");
    fails_with(&h.run(&["kill", &id, "99"]), "99");
    assert_eq!(h.state(&id)["status"], "running");
    h.ok(&["delete", "--force", &id]);
    nothing_left(&h, &id, b.path());
}

#[test]
fn errors_reach_the_log_file_as_json() {
    let h = Hull::new();
    let log = h.root.path().join("log.json");
    let out = h.run(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "create",
        "--bundle",
        "/nonexistent/b2",
        "c1",
    ]);
    fails_with(&out, "/nonexistent/b2");
    let text = std::fs::read_to_string(&log).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert!(last["msg"].as_str().unwrap().contains("/nonexistent/b2"));
    assert!(last["time"].is_string());
}

#[test]
fn systemd_cgroup_without_systemd_is_a_clear_error() {
    if std::path::Path::new("/run/systemd/system").exists() {
        skip(
            "systemd_cgroup_without_systemd_is_a_clear_error",
            "this host runs systemd; the refusal path is not reachable here",
        );
        return;
    }
    let h = Hull::new();
    let b = Bundle::new(&["true"]);
    let id = unique_id("sysd");
    let out = h.run(&[
        "--systemd-cgroup",
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    fails_with(&out, "systemd");
    nothing_left(&h, &id, b.path());
}

#[test]
fn each_error_names_the_thing_in_one_line_and_runc_s_leniencies_hold() {
    let h = Hull::new();
    let b = Bundle::new(&["pwd"]);
    let bundle = b.path().to_str().unwrap();
    // An over-long id: the limit, not the whole id echoed back.
    let long = "a".repeat(2000);
    let out = h.run(&["run", "--bundle", bundle, &long]);
    fails_with(&out, "(2000 characters): longer than 255");
    assert!(out.stderr.len() < 200, "the id is not echoed whole");
    // An id of 255 characters is a file name: it works.
    assert_eq!(
        h.ok(&["run", "--bundle", bundle, &"b".repeat(255)]).trim(),
        "/"
    );
    // A cwd missing in the rootfs is made (runc does), an AppArmor profile on a host without
    // AppArmor is not applied (runc's rule; a host with AppArmor would need the profile).
    let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y");
    b.edit(|v| {
        v["process"]["cwd"] = "/made/by/hull".into();
        if !apparmor {
            v["process"]["apparmorProfile"] = "no-such-profile".into();
        }
    });
    assert_eq!(
        h.ok(&["run", "--bundle", bundle, &unique_id("cwd")]).trim(),
        "/made/by/hull"
    );
    // A bind mount whose source is missing names it.
    b.edit(|v| {
        v["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/mnt", "type": "bind", "source": "/nonexistent/src", "options": ["rbind"]}
        ))
    });
    fails_with(
        &h.run(&["run", "--bundle", bundle, &unique_id("bindsrc")]),
        "/mnt: bind source /nonexistent/src does not exist",
    );
    b.edit(|v| {
        v["mounts"].as_array_mut().unwrap().pop();
        v["process"]["args"] = serde_json::json!(["sleep", "100"]);
    });
    // exec: a missing cwd and a missing program are named, without libcontainer's wrapping.
    let id = unique_id("execmsg");
    h.ok(&["run", "-d", "--bundle", bundle, &id]);
    fails_with(
        &h.run(&["exec", "--cwd", "/nonexistent", &id, "true"]),
        "cwd /nonexistent",
    );
    let out = h.run(&["exec", &id, "/nonexistent-binary"]);
    fails_with(&out, "'/nonexistent-binary' not found");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("failed to create container"), "{err}");
    h.ok(&["delete", "--force", &id]);
}
