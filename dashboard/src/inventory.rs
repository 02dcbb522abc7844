//! What the page shows: every container of every state root, from the `hull` binary.
//!
//! The state roots are the `--root` ones (the CLI's, `/run/hull` by default) and one per
//! containerd namespace under `--containerd-root` (the shim's, `/run/hull/containerd/<ns>`),
//! those that exist. Per root `hull --root R list --format json` gives each container's
//! state; per running one `hull --root R events --stats ID` its CPU and memory use.
//!
//! Isolation, decided from what really runs rather than from what was asked: a container
//! whose state dir holds a sandbox server's record (`sandbox.json`, what `hull create`
//! leaves for a vm container) is `vm`, any other container `hull list` shows is `host` (its
//! `io.hull.isolation` annotation only said what was wanted; the config may have chosen).
//! The containerd shim keeps a vm pod's containers in its own memory, not in a state dir:
//! such a pod shows as one row for its VM directory (`<root>/vm-*`), with its VM but no
//! container details (`ctr -n NS task ls` has those).
//!
//! A vm pod's guest (kernel, vCPUs, memory) comes from its VMM's command line (QEMU's
//! `-kernel -smp -m` or hull-vmm's `--kernel --vcpus --memory`), found among the children
//! of the sandbox server; the kernel's release from the guest's console log, else from the
//! kernel file. Without a running VMM the config's `[vm]` values are shown instead (the
//! file the sandbox server was given with `--config`, else the default config).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::error::{Error, Result};

/// What a sandbox server records in a vm container's state dir (hull-cli's
/// `server/record.rs`).
pub const SERVER_RECORD: &str = "sandbox.json";
/// Annotations naming a container's pod sandbox (containerd's CRI, CRI-O).
pub const SANDBOX_ID_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
];
/// Bound of one `hull` call.
const HULL_CALL: Duration = Duration::from_secs(15);
/// A snapshot younger than this is served again (the page polls every 2 s).
const FRESH: Duration = Duration::from_millis(1500);
/// Memory limits above this are "no limit".
const NO_LIMIT: u64 = 1 << 60;

/// Where a pod's containers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// On the host kernel.
    Host,
    /// In the pod's VM.
    Vm,
}

/// Where a VM's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmSource {
    /// The running VMM's command line.
    Vmm,
    /// The config's `[vm]` values (no VMM running).
    Config,
}

/// A pod's VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VmView {
    /// The guest kernel file.
    pub kernel: Option<PathBuf>,
    /// The guest kernel's release (`uname -r` in the guest).
    pub kernel_release: Option<String>,
    /// vCPUs.
    pub vcpus: Option<u32>,
    /// Guest memory, MiB.
    pub memory_mib: Option<u32>,
    /// Where the figures come from.
    pub source: Option<VmSource>,
    /// The VMM's pid on the host.
    pub vmm_pid: Option<i32>,
}

/// One row of the page.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    /// The container id (for a shim's vm pod: its VM directory's name).
    pub id: String,
    /// The state root it was found in.
    pub root: PathBuf,
    /// The pod: its sandbox id where an annotation names it, else the container itself.
    pub pod: String,
    /// host or vm.
    pub isolation: Isolation,
    /// created, running, paused, stopped.
    pub status: String,
    /// Its init's pid on the host (a vm container's is hull's mirror of it).
    pub pid: i32,
    /// Creation time, RFC 3339.
    pub created: Option<String>,
    /// Seconds since creation.
    pub uptime_s: Option<u64>,
    /// CPU use since the previous look, percent of one CPU.
    pub cpu_percent: Option<f64>,
    /// Memory in use, bytes.
    pub memory_bytes: Option<u64>,
    /// Memory limit, bytes (none: unlimited).
    pub memory_limit: Option<u64>,
    /// The pod's VM (vm isolation).
    pub vm: Option<VmView>,
    /// Whether the page may open a terminal into it.
    pub terminal: bool,
    /// Anything the row cannot show, one line.
    pub note: Option<String>,
}

/// One state root.
#[derive(Debug, Clone, Serialize)]
pub struct RootView {
    /// The directory.
    pub path: PathBuf,
    /// `cli`, or `containerd:NS` for the shim's root of namespace NS.
    pub kind: String,
    /// Why it could not be listed.
    pub error: Option<String>,
}

/// Everything the page shows at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// This host's name.
    pub host: String,
    /// When it was taken, RFC 3339.
    pub taken: String,
    /// The state roots looked at.
    pub roots: Vec<RootView>,
    /// Every container, by root then id.
    pub containers: Vec<ContainerView>,
}

/// A container's state as `hull list --format json` prints it (OCI state).
#[derive(Debug, Clone, Deserialize)]
pub struct Listed {
    /// Container id.
    pub id: String,
    /// Init pid.
    pub pid: i32,
    /// Status.
    pub status: String,
    /// Creation time.
    pub created: String,
    /// Annotations of config.json.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ServerRecord {
    server_pid: i32,
    vm_dir: PathBuf,
}

/// The containers hull knows, looked up through the `hull` binary.
#[derive(Debug)]
pub struct Inventory {
    hull: PathBuf,
    roots: Vec<PathBuf>,
    containerd_root: PathBuf,
    /// CPU total (ns) at the previous look, per (root, id).
    cpu: Mutex<HashMap<(PathBuf, String), (Instant, u64)>>,
    /// Kernel releases read from kernel files, per (path, mtime).
    releases: Mutex<HashMap<PathBuf, (SystemTime, Option<String>)>>,
    last: tokio::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl Inventory {
    /// An inventory of `roots` and the namespaces under `containerd_root`, through `hull`.
    pub fn new(hull: PathBuf, roots: Vec<PathBuf>, containerd_root: PathBuf) -> Self {
        Self {
            hull,
            roots,
            containerd_root,
            cpu: Mutex::new(HashMap::new()),
            releases: Mutex::new(HashMap::new()),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The `hull` binary.
    pub fn hull(&self) -> &Path {
        &self.hull
    }

    /// The state roots, each with its kind: the `--root` ones, then one per containerd
    /// namespace that has a directory.
    pub fn roots(&self) -> Vec<(PathBuf, String)> {
        let mut out: Vec<(PathBuf, String)> = self
            .roots
            .iter()
            .map(|r| (r.clone(), "cli".to_string()))
            .collect();
        if let Ok(entries) = std::fs::read_dir(&self.containerd_root) {
            let mut ns: Vec<_> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
                .collect();
            ns.sort();
            for (path, name) in ns {
                if !out.iter().any(|(p, _)| *p == path) {
                    out.push((path, format!("containerd:{name}")));
                }
            }
        }
        out
    }

    /// The current snapshot (taken again when the last is older than 1.5 s; concurrent
    /// callers share one).
    pub async fn snapshot(&self) -> Arc<Snapshot> {
        let mut last = self.last.lock().await;
        if let Some((at, snap)) = last.as_ref() {
            if at.elapsed() < FRESH {
                return Arc::clone(snap);
            }
        }
        let snap = Arc::new(self.collect().await);
        *last = Some((Instant::now(), Arc::clone(&snap)));
        snap
    }

    /// The container `id` of state root `root`, as listed now; the root must be one shown.
    pub async fn find(&self, root: &Path, id: &str) -> Result<Listed> {
        if !self.roots().iter().any(|(r, _)| r == root) {
            return Err(Error::UnknownRoot(root.to_path_buf()));
        }
        self.list(root)
            .await?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| Error::UnknownContainer {
                id: id.to_string(),
                root: root.to_path_buf(),
            })
    }

    /// Whether container `id` of `root` runs in a VM (see the module doc).
    pub fn isolation(root: &Path, id: &str) -> Isolation {
        if root.join(id).join(SERVER_RECORD).is_file() {
            Isolation::Vm
        } else {
            Isolation::Host
        }
    }

    async fn collect(&self) -> Snapshot {
        let mut roots = Vec::new();
        let mut containers = Vec::new();
        let mut seen = Vec::new();
        for (root, kind) in self.roots() {
            let listed = match self.list(&root).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(root = %root.display(), "{e}");
                    roots.push(RootView {
                        path: root,
                        kind,
                        error: Some(e.to_string()),
                    });
                    continue;
                }
            };
            seen.extend(listed.iter().map(|c| (root.clone(), c.id.clone())));
            // Files and /proc read here (a kernel file once): off the async workers' way.
            let mut rows: Vec<ContainerView> = tokio::task::block_in_place(|| {
                listed.into_iter().map(|c| self.view(&root, c)).collect()
            });
            // Stats of the running ones, all at once.
            let stats = futures_util::future::join_all(rows.iter().map(|r| async {
                if r.status == "running" || r.status == "paused" {
                    Some(self.stats(&root, &r.id).await)
                } else {
                    None
                }
            }))
            .await;
            for (row, st) in rows.iter_mut().zip(stats) {
                match st {
                    Some(Ok(s)) => self.apply_stats(&root, row, s),
                    Some(Err(e)) => row.note = Some(e.to_string()),
                    None => {}
                }
            }
            containers.extend(rows);
            if kind.starts_with("containerd:") {
                containers.extend(tokio::task::block_in_place(|| shim_vm_pods(&root, self)));
            }
            roots.push(RootView {
                path: root,
                kind,
                error: None,
            });
        }
        self.cpu.lock().retain(|k, _| seen.contains(k));
        Snapshot {
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            taken: chrono::Utc::now().to_rfc3339(),
            roots,
            containers,
        }
    }

    /// The row of a listed container, without its stats.
    fn view(&self, root: &Path, c: Listed) -> ContainerView {
        let isolation = Self::isolation(root, &c.id);
        let pod = SANDBOX_ID_ANNOTATIONS
            .iter()
            .find_map(|k| c.annotations.get(*k))
            .cloned()
            .unwrap_or_else(|| c.id.clone());
        let vm = (isolation == Isolation::Vm).then(|| self.served_vm(&root.join(&c.id)));
        ContainerView {
            uptime_s: uptime(&c.created),
            terminal: c.status == "running",
            root: root.to_path_buf(),
            pod,
            isolation,
            status: c.status,
            pid: c.pid,
            created: Some(c.created),
            cpu_percent: None,
            memory_bytes: None,
            memory_limit: None,
            vm,
            note: None,
            id: c.id,
        }
    }

    /// The VM of the vm container whose state dir is `dir`: its VMM's, else its config's.
    fn served_vm(&self, dir: &Path) -> VmView {
        let record: Option<ServerRecord> = std::fs::read(dir.join(SERVER_RECORD))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        let Some(record) = record else {
            return self.config_vm(None);
        };
        let found = children(record.server_pid)
            .into_iter()
            .find_map(|pid| vmm_view(pid, &cmdline(pid)));
        match found {
            Some(mut v) => {
                v.kernel_release = console_release(&record.vm_dir)
                    .or_else(|| v.kernel.as_deref().and_then(|k| self.file_release(k)));
                v
            }
            None => self.config_vm(config_arg(&cmdline(record.server_pid)).as_deref()),
        }
    }

    /// The `[vm]` values of config `path` (else the default config).
    fn config_vm(&self, path: Option<&Path>) -> VmView {
        let loaded = match path {
            Some(p) => hull_runtime::config::Config::load(p),
            None => hull_runtime::config::Config::load_or_default(None).map(|(c, _)| c),
        };
        let Ok(config) = loaded else {
            return VmView::default();
        };
        let kernel = config
            .vm
            .guest()
            .ok()
            .map(|(k, _, _)| k)
            .or(config.vm.kernel.clone());
        VmView {
            kernel_release: kernel.as_deref().and_then(|k| self.file_release(k)),
            kernel,
            vcpus: Some(config.vm.vcpus),
            memory_mib: Some(config.vm.memory_mib),
            source: Some(VmSource::Config),
            vmm_pid: None,
        }
    }

    /// The release of kernel file `path`, read once per version of the file.
    fn file_release(&self, path: &Path) -> Option<String> {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        if let Some((t, r)) = self.releases.lock().get(path) {
            if *t == mtime {
                return r.clone();
            }
        }
        let r = kernel_file_release(path);
        self.releases
            .lock()
            .insert(path.to_path_buf(), (mtime, r.clone()));
        r
    }

    fn apply_stats(&self, root: &Path, row: &mut ContainerView, s: Usage) {
        let now = Instant::now();
        let key = (root.to_path_buf(), row.id.clone());
        let prev = self.cpu.lock().insert(key, (now, s.cpu_ns));
        if let Some((at, ns)) = prev {
            let wall = now.duration_since(at).as_nanos() as f64;
            if wall > 0.0 && s.cpu_ns >= ns {
                row.cpu_percent = Some((s.cpu_ns - ns) as f64 / wall * 100.0);
            }
        }
        row.memory_bytes = Some(s.memory);
        row.memory_limit = s.limit.filter(|l| *l > 0 && *l < NO_LIMIT);
    }

    /// `hull --root ROOT ARGS`, bounded; its stdout, or its stderr's last line as the error.
    async fn run_hull(&self, root: &Path, args: &[&str]) -> Result<Vec<u8>> {
        let mut cmd = Command::new(&self.hull);
        cmd.arg("--root").arg(root).args(args);
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let out = match tokio::time::timeout(HULL_CALL, cmd.output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(Error::hull(args, e.to_string())),
            Err(_) => return Err(Error::hull(args, format!("no answer in {HULL_CALL:?}"))),
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err.lines().last().unwrap_or("").trim();
            return Err(Error::hull(
                args,
                format!("{} ({})", line.trim_start_matches("hull: "), out.status),
            ));
        }
        Ok(out.stdout)
    }

    /// `hull list --format json` of `root`.
    pub async fn list(&self, root: &Path) -> Result<Vec<Listed>> {
        let args = ["list", "--format", "json"];
        let out = self.run_hull(root, &args).await?;
        if out.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&out).map_err(|e| Error::hull(&args, format!("its output: {e}")))
    }

    /// CPU and memory of container `id` of `root` (`hull events --stats`).
    async fn stats(&self, root: &Path, id: &str) -> Result<Usage> {
        let args = ["events", "--stats", id];
        let out = self.run_hull(root, &args).await?;
        let text = String::from_utf8_lossy(&out);
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["type"] == "stats")
            .map(|v| Usage::from_runc(&v["data"]))
            .ok_or_else(|| Error::hull(&args, "printed no stats"))
    }
}

/// CPU and memory use, from runc's `events --stats` data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    cpu_ns: u64,
    memory: u64,
    limit: Option<u64>,
}

impl Usage {
    fn from_runc(data: &serde_json::Value) -> Self {
        Usage {
            cpu_ns: data["cpu"]["usage"]["total"].as_u64().unwrap_or(0),
            memory: data["memory"]["usage"]["usage"].as_u64().unwrap_or(0),
            limit: data["memory"]["usage"]["limit"].as_u64(),
        }
    }
}

/// Seconds since the RFC 3339 time `created`.
fn uptime(created: &str) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(created).ok()?;
    let secs = chrono::Utc::now()
        .signed_duration_since(t.with_timezone(&chrono::Utc))
        .num_seconds();
    u64::try_from(secs).ok()
}

/// The argv of process `pid` (empty when it is gone).
fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The children of process `pid` (of all its threads).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

/// The value of `--config` in a hull command line.
fn config_arg(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// The VM that VMM process `pid` with command line `args` runs (QEMU's or hull-vmm's
/// flags); `None` when it is not a VMM.
pub fn vmm_view(pid: i32, args: &[String]) -> Option<VmView> {
    let mut v = VmView {
        source: Some(VmSource::Vmm),
        vmm_pid: Some(pid),
        ..VmView::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-kernel" | "--kernel" => v.kernel = it.next().map(PathBuf::from),
            "-smp" | "--vcpus" => {
                v.vcpus = it.next().and_then(|n| {
                    let first = n.split(',').next().unwrap_or(n);
                    first.trim_start_matches("cpus=").parse().ok()
                })
            }
            "-m" => {
                v.memory_mib = it.next().and_then(|m| {
                    let size = m.split(',').next().unwrap_or(m);
                    let size = size.trim_start_matches("size=");
                    let (num, mul) = match size.char_indices().last() {
                        Some((i, 'G' | 'g')) => (&size[..i], 1024),
                        Some((i, 'M' | 'm')) => (&size[..i], 1),
                        _ => (size, 1),
                    };
                    num.parse::<u32>().ok().map(|n| n * mul)
                })
            }
            "--memory" => v.memory_mib = it.next().and_then(|m| m.parse().ok()),
            _ => {}
        }
    }
    (v.kernel.is_some() && (v.vcpus.is_some() || v.memory_mib.is_some())).then_some(v)
}

/// The kernel release the guest's console log of VM dir `vm_dir` printed at boot.
fn console_release(vm_dir: &Path) -> Option<String> {
    let mut head = Vec::new();
    std::fs::File::open(vm_dir.join("vm").join("console.log"))
        .ok()?
        .take(256 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    banner_release(&head)
}

/// The release in a `Linux version X ...` banner inside `bytes`.
fn banner_release(bytes: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let at = bytes.windows(BANNER.len()).position(|w| w == BANNER)? + BANNER.len();
    let rest = &bytes[at..];
    let end = rest
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == 0)
        .unwrap_or(rest.len().min(64));
    let r = String::from_utf8_lossy(&rest[..end]).into_owned();
    (!r.is_empty() && r.len() < 64 && r.starts_with(|c: char| c.is_ascii_digit())).then_some(r)
}

/// The release of kernel file `path`: a bzImage's header names it; an ELF vmlinux holds
/// the banner.
fn kernel_file_release(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = vec![0u8; 0x400];
    f.read_exact(&mut head).ok()?;
    if &head[0x202..0x206] == b"HdrS" {
        // boot protocol: kernel_version at 0x20e, a pointer to a C string (minus 0x200).
        let off = u16::from_le_bytes([head[0x20e], head[0x20f]]) as u64 + 0x200;
        let mut s = vec![0u8; 128];
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut s).ok()?;
        let end = s.iter().position(|b| *b == b' ' || *b == 0).unwrap_or(0);
        return (end > 0).then(|| String::from_utf8_lossy(&s[..end]).into_owned());
    }
    // Stream through the file, keeping an overlap so a banner across two reads is found.
    let mut buf = head;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        if let Some(r) = banner_release(&buf) {
            return Some(r);
        }
        let keep = buf.len().saturating_sub(128);
        buf.drain(..keep);
        let n = f.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The vm pods of the containerd shim under `root`: one row per VM directory (`vm-*`),
/// with its VMM found by its command line (which names the directory).
fn shim_vm_pods(root: &Path, inv: &Inventory) -> Vec<ContainerView> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("vm-"))
        .map(|e| e.path())
        .collect();
    if dirs.is_empty() {
        return Vec::new();
    }
    let procs: Vec<(i32, Vec<String>)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
                .map(|pid| (pid, cmdline(pid)))
                .collect()
        })
        .unwrap_or_default();
    dirs.into_iter()
        .map(|dir| {
            let needle = dir.to_string_lossy().into_owned();
            let vm = procs
                .iter()
                .filter(|(_, a)| a.iter().any(|x| x.contains(&needle)))
                .find_map(|(pid, a)| vmm_view(*pid, a))
                .map(|mut v| {
                    v.kernel_release = console_release(&dir)
                        .or_else(|| v.kernel.as_deref().and_then(|k| inv.file_release(k)));
                    v
                });
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            ContainerView {
                pod: name.clone(),
                id: name,
                root: root.to_path_buf(),
                isolation: Isolation::Vm,
                status: if vm.is_some() { "running" } else { "stopped" }.into(),
                pid: vm.as_ref().and_then(|v| v.vmm_pid).unwrap_or(0),
                created: None,
                uptime_s: None,
                cpu_percent: None,
                memory_bytes: None,
                memory_limit: None,
                vm,
                terminal: false,
                note: Some(
                    "a vm pod of the containerd shim: its containers live in the shim \
                     (ctr -n NS task ls)"
                        .into(),
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn qemu_and_hull_vmm_command_lines() {
        let q = vmm_view(
            7,
            &args(
                "qemu-system-x86_64 -M microvm -accel tcg -m 384M -smp 2 -kernel /k/vmlinux \
                 -initrd /k/initrd",
            ),
        )
        .unwrap();
        assert_eq!(q.kernel.as_deref(), Some(Path::new("/k/vmlinux")));
        assert_eq!(
            (q.vcpus, q.memory_mib, q.vmm_pid),
            (Some(2), Some(384), Some(7))
        );
        let h = vmm_view(8, &args("hull-vmm --kernel /k --memory 512 --vcpus 3")).unwrap();
        assert_eq!((h.vcpus, h.memory_mib), (Some(3), Some(512)));
        assert_eq!(
            vmm_view(1, &args("qemu -m 1G -smp cpus=4,cores=4 -kernel /k"))
                .map(|v| (v.vcpus, v.memory_mib)),
            Some((Some(4), Some(1024)))
        );
        assert!(vmm_view(9, &args("hull --root /r exec -t c1 /bin/sh")).is_none());
    }

    #[test]
    fn banners_and_config_args() {
        let log = b"\x1b[0m[    0.000000] Linux version 6.1.99-hull (root@x) (gcc) #1 SMP\n";
        assert_eq!(banner_release(log).as_deref(), Some("6.1.99-hull"));
        assert_eq!(banner_release(b"no banner"), None);
        assert_eq!(
            config_arg(&args("hull --root /r --config /c/vm.toml sandbox-server")),
            Some(PathBuf::from("/c/vm.toml"))
        );
        assert_eq!(config_arg(&args("hull sandbox-server")), None);
    }

    #[test]
    fn runc_stats_and_uptime() {
        let data = serde_json::json!({"cpu": {"usage": {"total": 1500}},
            "memory": {"usage": {"usage": 4096, "limit": 9223372036854771712u64}}});
        let u = Usage::from_runc(&data);
        assert_eq!((u.cpu_ns, u.memory), (1500, 4096));
        let past = (chrono::Utc::now() - chrono::Duration::seconds(90)).to_rfc3339();
        let up = uptime(&past).unwrap();
        assert!((89..=92).contains(&up), "{up}");
        assert_eq!(uptime("yesterday"), None);
    }

    #[test]
    fn a_shim_vm_pod_shows_as_its_vm_directory_with_its_vmm() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("vm-0123456789ab");
        std::fs::create_dir_all(dir.join("vm")).unwrap();
        std::fs::write(
            dir.join("vm/console.log"),
            "[    0.000000] Linux version 6.1.77-guest (b@h) #1\n",
        )
        .unwrap();
        let inv = Inventory::new("hull".into(), vec![], root.path().into());
        let rows = shim_vm_pods(root.path(), &inv);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].status.as_str(), rows[0].vm.is_none()),
            ("stopped", true)
        );
        // A stand-in VMM: its command line names the VM's directory, as QEMU's does.
        let console = format!("path={}/vm/console.log", dir.display());
        let mut vmm = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "sleep 30",
                "-m",
                "384M",
                "-smp",
                "2",
                "-kernel",
                "/k/vmlinux",
            ])
            .arg(&console)
            .spawn()
            .unwrap();
        // Until it has exec'd, its command line is ours.
        for _ in 0..500 {
            if cmdline(vmm.id() as i32).contains(&console) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let rows = shim_vm_pods(root.path(), &inv);
        let _ = vmm.kill();
        let _ = vmm.wait();
        let r = &rows[0];
        assert_eq!(
            (r.id.as_str(), r.isolation),
            ("vm-0123456789ab", Isolation::Vm)
        );
        assert_eq!(r.status, "running");
        let vm = r.vm.as_ref().unwrap();
        assert_eq!((vm.vcpus, vm.memory_mib), (Some(2), Some(384)));
        assert_eq!(vm.kernel_release.as_deref(), Some("6.1.77-guest"));
        assert_eq!(vm.vmm_pid, Some(vmm.id() as i32));
    }

    #[test]
    fn isolation_follows_the_sandbox_server_record() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a")).unwrap();
        std::fs::create_dir_all(root.path().join("b")).unwrap();
        std::fs::write(root.path().join("b").join(SERVER_RECORD), "{}").unwrap();
        assert_eq!(Inventory::isolation(root.path(), "a"), Isolation::Host);
        assert_eq!(Inventory::isolation(root.path(), "b"), Isolation::Vm);
    }
}
