//! The CRI path: containerd's CRI plugin with a `hull` runtime handler, driven the way
//! kubelet drives it (RunPodSandbox with the handler, CreateContainer, StartContainer,
//! ExecSync, StopContainer, StopPodSandbox, RemovePodSandbox) by a Python client on the
//! PyPI `container-runtime-interface-api` CRI v1 stubs.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Containerd;

fn python_cri_client() -> bool {
    common::assert_python_cri_client();
    true
}

#[test]
fn cri_pod_with_the_hull_handler() {
    if !common::usable() || !python_cri_client() {
        return;
    }
    let c = Containerd::start_cri("cri");
    let seen = drive_pod(&c, "hull", "node", || {
        assert!(
            std::fs::read_dir(&c.hull_root).unwrap().count() >= 3,
            "ConfigPath's state root not used"
        );
    });
    assert!(
        seen.iter()
            .any(|l| l == &format!("kernel {}", host_kernel())),
        "{seen:?}"
    );
}

/// The `hull-vm` runtime class: the pod's sandbox and containers in one VM.
#[test]
fn cri_pod_in_a_vm_with_the_hull_vm_handler() {
    if !common::usable() || !python_cri_client() {
        return;
    }
    let c = Containerd::start_cri("crivm");
    c.write_vm_handler_config();
    // A vm pod cannot have the host's network: its own, from CNI on a private bridge.
    let net = hull_tests::net::Subnet::reserve();
    c.use_cni(&net);
    let root = c.hull_root.to_string_lossy().into_owned();
    let seen = drive_pod(&c, "hull-vm", "pod", || {
        let vms = common::processes_mentioning(&root);
        assert_eq!(vms.len(), 1, "one VM for the pod, got {vms:?}");
    });
    let kernel = seen
        .iter()
        .find_map(|l| l.strip_prefix("kernel "))
        .unwrap_or_default();
    assert!(
        !kernel.is_empty() && kernel != host_kernel(),
        "not the guest kernel: {seen:?}"
    );
    assert!(common::processes_mentioning(&root).is_empty());
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// Runs tests/support/cri.py with `handler` and `network` ("node" or "pod"); `while_ready`
/// checks the running pod. Returns
/// the client's lines.
fn drive_pod(
    c: &Containerd,
    handler: &str,
    network: &str,
    while_ready: impl FnOnce(),
) -> Vec<String> {
    let logs = c.dir.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "120", "python3"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/cri.py"))
        .arg(&c.sock)
        .arg(handler)
        .arg(format!("/{}", c.cgroup_parent))
        .arg(&logs)
        .arg(network)
        .stderr(Stdio::piped());
    let (mut client, rx) = common::spawn_lines(cmd);
    let mut seen = Vec::new();
    let wait_for = |want: &str, seen: &mut Vec<String>| loop {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => {
                seen.push(line.clone());
                if line == want {
                    return true;
                }
            }
            Err(_) => return false,
        }
    };
    let ready = wait_for("READY", &mut seen);
    if !ready {
        let _ = client.kill();
        let out = client.wait_with_output().unwrap();
        panic!(
            "CRI client failed before READY: {seen:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        seen.iter().any(|l| l == "execsync exit=3 stdout=exec-ok"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == "status CONTAINER_RUNNING"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == "pod-pids 2"),
        "pod pid namespace not shared: {seen:?}"
    );
    // The sandbox and both containers: one shim.
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "one shim per pod, got {shims:?}");
    while_ready();

    client.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    let done = wait_for("DONE", &mut seen);
    let out = client.wait_with_output().unwrap();
    assert!(
        done && out.status.success(),
        "CRI client failed: {seen:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("stopped CONTAINER_EXITED")),
        "{seen:?}"
    );
    c.assert_clean();
    seen
}
