//! A vm pod's network, Kata's "tcfilter" model: the network a client set up in the pod's
//! network namespace on the host (a veth from CNI, Docker or Podman) reaches the VM through a
//! tap per interface in that namespace, joined to the veth by tc redirects both ways
//! (`hull-net`); the VM has a virtio-net NIC on each tap, and the agent gives each NIC its
//! interface's name, MAC, MTU, addresses, routes and neighbours, in the pod's network
//! namespace in the guest, which the agent puts every container of the pod in (as they share
//! the pod's on the host).
//!
//! The pod's namespace on the host is the one the first container's spec names (CRI and
//! Podman make it before they create the pod). A spec asking for a new one with hooks
//! (Docker's `libnetwork-setkey` moves the endpoint in from a prestart hook) gets a new one
//! hull makes, and those hooks run before the VM boots, so that the VM boots with the network
//! it will have: microvm has no hotplug. A spec asking for a new one without hooks has no
//! network to carry (only `lo`, which the guest has of its own). No network namespace at all
//! is the host's network, which a VM cannot share: refused.
//!
//! What was set up is recorded in `network.json` in the VM dir, so that the cleanup after a
//! SIGKILLed shim or server ([`clean_up_network`]) undoes it.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hull_hypervisor::Nic;
use hull_net::PodNetwork;
use oci_spec::runtime::{Hook, LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use super::VmPod;
use crate::error::{Error, Result};

/// The record of a pod's network in its VM dir.
const RECORD: &str = "network.json";
/// The namespace hull makes for a pod, in its VM dir.
const MADE_NETNS: &str = "netns";
/// How long a hook may run when its spec sets no timeout.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a pod's network holds on the host, as recorded for the cleanup.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The pod's network namespace on the host.
    netns: PathBuf,
    /// hull made it (and removes it).
    made: bool,
    /// (interface, tap) pairs joined by redirects.
    taps: Vec<(String, String)>,
}

/// A pod's network while the pod runs.
pub(super) struct PodNet {
    record: Record,
    /// What the scan found (the guest gets it).
    pub network: PodNetwork,
    /// The taps' fds, passed to the VMM (which holds them too).
    pub taps: Vec<Arc<OwnedFd>>,
}

impl PodNet {
    /// The VM's NICs, one per tap.
    pub fn nics(&self) -> Vec<Nic> {
        self.taps.iter().map(|t| Nic { tap: t.clone() }).collect()
    }
}

/// Where the pod's network namespace on the host comes from.
#[derive(Debug, PartialEq, Eq)]
enum Netns {
    /// The spec names it.
    Named(PathBuf),
    /// The spec asks for a new one and has hooks that may fill it: hull makes it.
    Make,
    /// The spec asks for a new one and nothing can put an interface in it.
    Empty,
}

fn host_network(pod: &str) -> Error {
    Error::invalid(format!(
        "pod {pod}: a vm pod cannot use the host's network (hostNetwork, --network host): \
         its VM has a kernel and network of its own; run this pod with isolation \"host\""
    ))
}

/// Whether two namespace files name the same namespace.
fn same_namespace(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The pod's network namespace as its first container's spec says; an error for the host's.
fn netns_of(pod: &str, spec: &Spec) -> Result<Netns> {
    let net = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| nss.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    let Some(net) = net else {
        return Err(host_network(pod));
    };
    if let Some(p) = net.path() {
        // Docker names its bind mount of the host's own namespace for `--network host`.
        if same_namespace(p, Path::new("/proc/self/ns/net")) {
            return Err(host_network(pod));
        }
        return Ok(Netns::Named(p.clone()));
    }
    let hooks = spec.hooks().as_ref();
    #[allow(deprecated)]
    let has_hooks = hooks.is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    });
    Ok(if has_hooks { Netns::Make } else { Netns::Empty })
}

impl VmPod {
    /// Sets the pod's network up on the host before its VM boots: finds (or makes) the pod's
    /// namespace, runs the hooks that fill a made one, scans it and joins a tap to each
    /// interface. `None`: the pod has no network to carry. On failure nothing stays.
    pub(super) fn set_up_network(&self, bundle: &Path, spec: &Spec) -> Result<Option<PodNet>> {
        let (netns, made) = match netns_of(&self.id, spec)? {
            Netns::Empty => return Ok(None),
            Netns::Named(p) => (p, false),
            Netns::Make => {
                let p = self.dir.join(MADE_NETNS);
                fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
                hull_net::create_netns(&p).map_err(|e| net_err(&self.id, e))?;
                (p, true)
            }
        };
        let mut record = Record {
            netns,
            made,
            taps: Vec::new(),
        };
        let result = (|| {
            if made {
                run_network_hooks(&self.id, bundle, spec, &record.netns)?;
            }
            let network = hull_net::scan(&record.netns).map_err(|e| net_err(&self.id, e))?;
            let mut taps = Vec::new();
            for (i, iface) in network.interfaces.iter().enumerate() {
                let tap = hull_net::tap_name(i);
                // Recorded first: a tap half made is undone with the rest.
                record.taps.push((iface.name.clone(), tap.clone()));
                self.write_record(&record)?;
                let fd = hull_net::attach_tap(&record.netns, iface, &tap)
                    .map_err(|e| net_err(&self.id, e))?;
                taps.push(Arc::new(fd));
            }
            self.write_record(&record)?;
            tracing::info!(pod = %self.id, netns = %record.netns.display(), interfaces = network.interfaces.len(), "pod network found");
            Ok(PodNet {
                record: record.clone(),
                network,
                taps,
            })
        })();
        if result.is_err() {
            tear_down(&record);
            let _ = fs::remove_file(self.dir.join(RECORD));
        }
        result.map(Some)
    }

    fn write_record(&self, r: &Record) -> Result<()> {
        let path = self.dir.join(RECORD);
        let text = serde_json::to_vec(r).map_err(|e| Error::invalid(e.to_string()))?;
        fs::write(&path, text).map_err(|e| Error::io(&path, e))
    }

    /// Tells the agent the pod's network: NIC i is interface i.
    pub(super) fn configure_guest_network(
        &self,
        agent: &hull_agent_client::AgentClient,
        net: &PodNet,
    ) -> Result<()> {
        let macs: Vec<[u8; 6]> = (0..net.network.interfaces.len())
            .map(hull_hypervisor::nic_device_mac)
            .collect();
        let applied = agent
            .setup_network(&net.network, &macs)
            .map_err(|e| super::vm_err("set up the pod's network in the vm", e))?;
        tracing::debug!(pod = %self.id, ?applied, "pod network in the vm");
        Ok(())
    }

    /// Undoes the pod's network on the host (after its VM stopped).
    pub(super) fn tear_down_network(&self, net: PodNet) {
        drop(net.taps);
        tear_down(&net.record);
        let _ = fs::remove_file(self.dir.join(RECORD));
    }
}

/// Undoes what a pod's network left after its shim or server was killed: the redirects on
/// its interfaces, taps still there, the namespace hull made. `vm_dir` is the pod's VM dir.
pub fn clean_up_network(vm_dir: &Path) {
    let path = vm_dir.join(RECORD);
    if let Some(r) = fs::read(&path)
        .ok()
        .and_then(|t| serde_json::from_slice::<Record>(&t).ok())
    {
        tear_down(&r);
    }
    let _ = fs::remove_file(path);
}

fn tear_down(r: &Record) {
    for (iface, tap) in &r.taps {
        if let Err(e) = hull_net::detach_tap(&r.netns, iface, tap) {
            tracing::warn!(netns = %r.netns.display(), %iface, %tap, "pod network: {e}");
        }
    }
    if r.made {
        if let Err(e) = hull_net::remove_netns(&r.netns) {
            tracing::warn!(netns = %r.netns.display(), "pod network: {e}");
        }
    }
}

fn net_err(pod: &str, e: hull_net::NetError) -> Error {
    Error::Vm(format!("pod {pod}: network: {e}"))
}

/// Runs the spec's prestart and createRuntime hooks on the host, in order, with the state of
/// a process in the pod's namespace `netns` (a hook such as Docker's finds the namespace
/// through the state's pid). The VM has not booted yet: the pid is a holder's, not the
/// container's.
fn run_network_hooks(pod: &str, bundle: &Path, spec: &Spec, netns: &Path) -> Result<()> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    #[allow(deprecated)]
    let all: Vec<&Hook> = hooks
        .prestart()
        .iter()
        .flatten()
        .chain(hooks.create_runtime().iter().flatten())
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let holder =
        Holder::start(netns).map_err(|e| Error::sys("hold the pod's network namespace", e))?;
    let state = serde_json::json!({
        "ociVersion": hull_container::OCI_VERSION,
        "id": pod,
        "status": "creating",
        "pid": holder.pid(),
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    })
    .to_string();
    for h in all {
        run_hook(pod, h, &state)?;
    }
    Ok(())
}

fn run_hook(pod: &str, h: &Hook, state: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let what = format!("pod {pod}: hook {}", h.path().display());
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args() {
        if let Some((arg0, rest)) = args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Vm(format!("{what}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is fine.
        let _ = stdin.write_all(state.as_bytes());
    }
    let timeout = h
        .timeout()
        .filter(|t| *t > 0)
        .map_or(HOOK_TIMEOUT, |t| Duration::from_secs(t as u64));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Vm(format!("{what}: timed out after {timeout:?}")));
            }
            Err(e) => return Err(Error::Vm(format!("{what}: {e}"))),
        }
    };
    if !status.success() {
        let mut err = String::new();
        if let Some(mut s) = child.stderr.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut err);
        }
        return Err(Error::Vm(format!(
            "{what}: {status}: {}",
            err.trim().lines().last().unwrap_or("")
        )));
    }
    Ok(())
}

/// A child process that sits in a network namespace while hooks look it up by pid.
struct Holder {
    pid: nix::unistd::Pid,
}

impl Holder {
    fn start(netns: &Path) -> nix::Result<Holder> {
        use std::os::fd::AsRawFd;
        let ns = fs::File::open(netns)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        // SAFETY: the child calls only async-signal-safe system calls (setns, prctl, pause,
        // _exit) before it is killed; nothing of the parent's state is touched there.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                // SAFETY: plain system calls on a descriptor this process holds.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        libc::_exit(1);
                    }
                    loop {
                        libc::pause();
                    }
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let h = Holder { pid: child };
                // The hook must find the child in the namespace, not where it was forked.
                let want = fs::metadata(netns).map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino())
                });
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                loop {
                    let now = fs::metadata(format!("/proc/{child}/ns/net")).map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        (m.dev(), m.ino())
                    });
                    match (&want, now) {
                        (Ok(w), Ok(n)) if *w == n => return Ok(h),
                        _ if std::time::Instant::now() > deadline => {
                            return Err(nix::Error::ETIMEDOUT)
                        }
                        _ => std::thread::sleep(Duration::from_micros(200)),
                    }
                }
            }
        }
    }

    fn pid(&self) -> i32 {
        self.pid.as_raw()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_spec_says_where_the_pods_network_is() {
        let named = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network","path":"/var/run/netns/cni-1"}]}}"#,
        );
        assert_eq!(
            netns_of("p", &named).unwrap(),
            Netns::Named("/var/run/netns/cni-1".into())
        );
        let new = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network"}]}}"#);
        assert_eq!(netns_of("p", &new).unwrap(), Netns::Empty);
        let hooked = spec(
            r#"{"ociVersion":"1.0.2","hooks":{"prestart":[{"path":"/bin/true"}]},"linux":{"namespaces":[{"type":"network"}]}}"#,
        );
        assert_eq!(netns_of("p", &hooked).unwrap(), Netns::Make);
        let host = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"}]}}"#);
        let e = netns_of("p", &host).unwrap_err().to_string();
        assert!(e.contains("host's network") && !e.contains('\n'), "{e}");
        // Docker's `--network host`: a path to the host's own namespace.
        let named_host = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network","path":"/proc/self/ns/net"}]}}"#,
        );
        let e = netns_of("p", &named_host).unwrap_err().to_string();
        assert!(e.contains("host's network"), "{e}");
    }
}
