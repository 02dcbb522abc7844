//! The spec's poststart and poststop hooks, run in the runtime's namespace once the
//! container's program runs and once the container is deleted. Unlike the hooks before
//! them, a failing one fails nothing: the OCI runtime spec wants a warning and the rest of
//! the hooks and of the lifecycle carry on (runc deletes and warns).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use libcontainer::container::{ContainerStatus, State};
use oci_spec::runtime::Hook;

use crate::error::chain;
use crate::state::{ContainerState, Status};

/// How long `start` waits for the container's init to exec its program (startContainer
/// hooks run in between) before it goes on (to the poststart hooks) anyway.
pub const EXEC_WAIT: Duration = Duration::from_secs(10);

/// Which of the lenient hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// After the container's program started.
    Poststart,
    /// After the container was deleted.
    Poststop,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Poststart => "poststart",
            Phase::Poststop => "poststop",
        })
    }
}

/// Run `hooks` in order with the container's `state` on their stdin; a failing one is
/// logged as a warning and the next one still runs. Returns the warnings.
pub fn run_lenient(phase: Phase, hooks: &[Hook], state: &ContainerState) -> Vec<String> {
    let status = match state.status {
        Status::Creating => ContainerStatus::Creating,
        Status::Created => ContainerStatus::Created,
        Status::Running => ContainerStatus::Running,
        Status::Paused => ContainerStatus::Paused,
        Status::Stopped | Status::Unknown => ContainerStatus::Stopped,
    };
    let pid = (state.pid > 0).then_some(state.pid);
    let mut lc = State::new(&state.id, status, pid, state.bundle.clone());
    lc.annotations = Some(state.annotations.clone());
    run_with(phase, hooks, &lc, None)
}

/// [`run_lenient`] with libcontainer's record of the container; hooks run in `cwd` if given.
pub(crate) fn run_with(
    phase: Phase,
    hooks: &[Hook],
    state: &State,
    cwd: Option<&Path>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        let one = vec![hook.clone()];
        if let Err(e) = libcontainer::hooks::run_hooks(Some(&one), Some(state), cwd, None, None) {
            let w = format!(
                "container {}: {phase} hook #{i} ({}) failed, carrying on: {}",
                state.id,
                hook.path().display(),
                chain(&e)
            );
            tracing::warn!(target: crate::USER_WARNING, container = %state.id, "{w}");
            warnings.push(w);
        }
    }
    warnings
}

/// The (device, inode) of the program `pid` runs, `None` once it has exited.
pub(crate) fn program_of(pid: i32) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Wait until `pid` no longer runs `before` (it exec'd its program, or exited), up to
/// `limit`. Returns whether it did.
pub(crate) fn wait_for_exec(pid: i32, before: Option<(u64, u64)>, limit: Duration) -> bool {
    let Some(before) = before else {
        return true;
    };
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        if program_of(pid) != Some(before) {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn hook(path: &str, args: &[&str]) -> Hook {
        let mut h = Hook::default();
        h.set_path(PathBuf::from(path));
        h.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        h
    }

    fn state(dir: &Path) -> ContainerState {
        ContainerState {
            oci_version: crate::OCI_VERSION.into(),
            id: "c1".into(),
            pid: 0,
            status: Status::Stopped,
            bundle: dir.to_path_buf(),
            rootfs: dir.join("rootfs"),
            created: String::new(),
            owner: String::new(),
            annotations: Default::default(),
        }
    }

    #[test]
    fn a_failing_hook_is_a_warning_and_the_next_one_runs() {
        let dir = std::env::temp_dir().join(format!("hull-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mark = dir.join("second-ran");
        let hooks = [
            hook("/no/such/hook", &["hook"]),
            hook("/bin/sh", &["sh", "-c", "exit 3"]),
            hook(
                "/bin/sh",
                &["sh", "-c", &format!("cat > {}", mark.display())],
            ),
        ];
        let w = run_lenient(Phase::Poststop, &hooks, &state(&dir));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("poststop hook #0 (/no/such/hook)"), "{w:?}");
        assert!(w[1].contains("#1"), "{w:?}");
        let got = std::fs::read_to_string(&mark).unwrap();
        assert!(got.contains("\"id\":\"c1\""), "the state on stdin: {got}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exec_is_seen_as_a_new_program() {
        // A shell that execs sleep after a moment: the wait ends once it has.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read x; exec sleep 5"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let before = program_of(pid);
        assert!(before.is_some());
        assert!(!wait_for_exec(pid, before, Duration::from_millis(50)));
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(wait_for_exec(pid, before, Duration::from_secs(5)));
        assert_ne!(program_of(pid), before);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
