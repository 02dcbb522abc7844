//! Checkpoint of host containers through CRIU: libcontainer's checkpoint, which drives CRIU
//! over its RPC, after a real probe that CRIU can dump on this host at all (a CRIU too old
//! for the kernel fails every dump: Debian 12's 3.17 on Linux 6.18 says "vdso: Unexpected rt
//! vDSO area bounds"). A host that cannot dump is told so in one line, before the container
//! is touched. (A vm pod is checkpointed whole, with no CRIU: hull-runtime's VmPod.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::root::ContainerRoot;

/// What `checkpoint` is asked (runc's flags).
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Where CRIU's images go.
    pub image_path: PathBuf,
    /// Where CRIU's logs and work files go (default: the image path).
    pub work_path: Option<PathBuf>,
    /// The container runs on afterwards.
    pub leave_running: bool,
    /// Open TCP connections are saved.
    pub tcp_established: bool,
    /// File locks are saved.
    pub file_locks: bool,
    /// External unix sockets are allowed.
    pub ext_unix_sk: bool,
    /// A shell job (a process whose session is outside) is allowed.
    pub shell_job: bool,
}

/// The version CRIU reports (`criu --version`), or why there is none.
fn criu_version() -> std::result::Result<String, String> {
    let out = Command::new("criu")
        .arg("--version")
        .output()
        .map_err(|e| format!("criu is not installed (apt-get install criu): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("criu --version said {:?}", text.trim()))
}

/// The first error line of a CRIU log, without its source location.
fn first_error(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.starts_with("Error ("))?;
    Some(match line.split_once("): ") {
        Some((_, msg)) => msg.trim().to_string(),
        None => line.trim().to_string(),
    })
}

/// Whether CRIU can checkpoint host containers here: its version, or one line saying why not.
/// The probe is real: CRIU dumps a process of its own (`sleep`, left running, then killed).
pub fn criu_usable() -> std::result::Result<String, String> {
    let version = criu_version()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let dir = std::env::temp_dir().join(format!("hull-criu-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let probed = (|| {
        let mut cmd = Command::new("sleep");
        cmd.arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // A session of its own: CRIU dumps a session leader without --shell-job.
        // SAFETY: setsid(2) between fork and exec touches no memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start a probe process: {e}"))?;
        let dumped = Command::new("criu")
            .args(["dump", "--leave-running", "-o", "dump.log", "-t"])
            .arg(child.id().to_string())
            .arg("-D")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
        match dumped {
            Ok(s) if s.success() => Ok(version.clone()),
            Ok(_) => {
                let log = std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default();
                Err(format!(
                    "criu {version} cannot dump on this host (kernel {kernel}): {}",
                    first_error(&log).unwrap_or_else(|| "its dump failed".into())
                ))
            }
            Err(e) => Err(format!("run criu dump: {e}")),
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    probed
}

/// Checkpoints host container `id` under `root` into `opts.image_path` with CRIU (stopping
/// it unless `leave_running`). Where CRIU cannot dump, one line says so and names why, and
/// the container is left running and untouched (nothing is written).
pub fn checkpoint(root: &ContainerRoot, id: &str, opts: &CheckpointOptions) -> Result<()> {
    let mut c = root.load(id)?;
    if let Err(why) = criu_usable() {
        return Err(Error::Unsupported(format!(
            "checkpoint of host container {id} needs CRIU: {why}"
        )));
    }
    let lc = libcontainer::container::CheckpointOptions {
        ext_unix_sk: opts.ext_unix_sk,
        file_locks: opts.file_locks,
        image_path: opts.image_path.clone(),
        leave_running: opts.leave_running,
        shell_job: opts.shell_job,
        tcp_established: opts.tcp_established,
        work_path: opts.work_path.clone(),
        manage_cgroups_mode: rust_criu::CgMode::SOFT,
        link_remap: false,
    };
    c.checkpoint(&lc).map_err(|e| Error::Container {
        op: "checkpoint",
        id: id.to_string(),
        message: crate::error::chain(&e),
    })
}

/// Restoring a host container from a CRIU checkpoint: libcontainer has no restore, and no
/// host here can dump to test one; one line says so (vm checkpoints restore: VmPod).
pub fn restore(id: &str, image_path: &Path) -> Result<i32> {
    Err(Error::Unsupported(format!(
        "restore of host container {id} from {}: hull restores vm pod checkpoints; a CRIU \
         restore of host containers is not implemented",
        image_path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_criu_error_is_named_without_its_source_location() {
        let log = "(00.001) Version: 3.17.1\n\
                   Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n\
                   Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\n";
        assert_eq!(
            first_error(log).as_deref(),
            Some("vdso: Unexpected rt vDSO area bounds")
        );
        assert_eq!(first_error("all fine\n"), None);
    }

    #[test]
    fn the_probe_answers_with_a_version_or_one_line() {
        match criu_usable() {
            Ok(v) => assert!(!v.is_empty()),
            Err(why) => {
                assert_eq!(why.lines().count(), 1, "{why}");
                assert!(why.contains("criu"), "{why}");
            }
        }
    }
}
