//! What a served container keeps in its state dir `<root>/<id>`: the server's record
//! (`sandbox.json`: its pid, the bundle, the VM's dir, the mirrors handed out) and its
//! socket; and what a verb makes of them when the server is gone (a stopped state, and a
//! clean-up that leaves nothing).

use std::path::{Path, PathBuf};

use hull_runtime::error::{Error, Result};
use hull_runtime::pod::{ContainerState, Status};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

/// The server's socket in the container's state dir.
const SOCKET: &str = "sandbox.sock";
/// What the server records about itself (for verbs that find it dead).
const RECORD: &str = "sandbox.json";

/// A vm container's server, as recorded in its state dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The server's pid.
    pub server_pid: i32,
    /// The bundle.
    pub bundle: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The VM's directory (sockets, console log, shared dir).
    pub vm_dir: PathBuf,
    /// Mirror pids handed out, for `delete --force` after a server died.
    #[serde(default)]
    pub mirrors: Vec<i32>,
}

impl ServerRecord {
    /// Reads the record of the container whose state dir is `dir`.
    pub fn read(dir: &Path) -> Result<ServerRecord> {
        let path = dir.join(RECORD);
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
    }

    /// Writes (atomically) the record into the state dir `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RECORD);
        let tmp = dir.join(".sandbox.json.tmp");
        let text = serde_json::to_vec(self)
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Adds a mirror to the record in `dir` (the server alone writes it).
    pub fn add_mirror(dir: &Path, pid: i32) -> Result<()> {
        let mut r = Self::read(dir)?;
        r.mirrors.push(pid);
        r.write(dir)
    }

    /// The state of container `id` whose server is gone: stopped.
    pub fn dead_state(&self, id: &str) -> ContainerState {
        ContainerState {
            oci_version: hull_container::OCI_VERSION.into(),
            id: id.to_string(),
            pid: 0,
            status: Status::Stopped,
            bundle: self.bundle.clone(),
            rootfs: self.bundle.join("rootfs"),
            created: self.created.clone(),
            owner: String::new(),
            annotations: Default::default(),
        }
    }
}

/// The server's socket for the container state dir `dir`: in the dir, or (a unix socket
/// path has at most 108 bytes; Docker's state dirs are long) under /run/hull/sock.
pub fn socket_path(dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let p = dir.join(SOCKET);
    if p.as_os_str().len() < 100 {
        return p;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    PathBuf::from(format!("/run/hull/sock/{:016x}.sock", h.finish()))
}

/// Whether `<root>/<id>` is a vm container served by a sandbox server.
pub fn is_vm_container(root: &Path, id: &str) -> bool {
    hull_container::validate_id(id).is_ok() && root.join(id).join(RECORD).exists()
}

/// Removes what a server left in and beside the state dir `dir`: its socket and the dir.
pub fn remove_state(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_file(socket_path(dir));
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Removes what a dead server left: the server and mirrors if they still run, mounts under
/// the VM dir and the state dir, the VM dir, the socket and the state dir.
pub fn clean_up_dead(dir: &Path) -> Result<()> {
    if let Ok(r) = ServerRecord::read(dir) {
        for pid in r.mirrors.iter().chain(std::iter::once(&r.server_pid)) {
            if *pid > 0 && pid_is(*pid, &["hull"]) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        hull_runtime::pod::vm::clean_up_network(&r.vm_dir);
        unmount_under(&r.vm_dir);
        let _ = std::fs::remove_dir_all(&r.vm_dir);
    }
    unmount_under(dir);
    remove_state(dir)
}

/// Whether `pid` runs one of `names` (so a recycled pid is never killed).
fn pid_is(pid: i32, names: &[&str]) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| names.iter().any(|n| c.trim().starts_with(n)))
        .unwrap_or(false)
}

/// Unmounts everything mounted under `dir` (deepest first).
fn unmount_under(dir: &Path) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}
