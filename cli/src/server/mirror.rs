//! Mirrors: a vm container's processes live in the guest, but callers of a runc-style
//! runtime wait for the host pid in `--pid-file`, as subreapers (containerd's runc shim;
//! Podman's conmon, a new one per exec). For each guest process the calling verb (`create`
//! for the init, `exec` for the others) therefore forks a *mirror*: an orphan, so that
//! caller adopts it, which exits with the guest process' exit status.
//!
//! One mechanism for all: the verb forks the mirror ([`fork`]) and registers it with the
//! server; the mirror then asks the server for the exit status with a blocking `Wait`, and
//! exits 255 if the server goes away. The server keeps its [`Mirrors`]: which guest
//! process each stands for, and the exit statuses its waits hand out.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, IntoRawFd};

use hull_runtime::error::{Error, Result};
use parking_lot::{Condvar, Mutex};

/// The exit status of a mirror whose guest process' status never arrived.
pub const LOST: i32 = 255;

/// Forks an orphaned mirror (call from a verb that runs no thread holding a lock: `create`
/// and `exec` run at most a thread draining a pipe). `register` runs here with the mirror's
/// pid and tells the server; only then does the mirror run `wait`, which asks the server for
/// the exit status (`LOST` if it cannot), and exits with it. Returns the mirror's pid.
pub fn fork(
    register: impl FnOnce(i32) -> Result<()>,
    wait: impl FnOnce(i32) -> i32,
) -> Result<i32> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("pipe for a mirror", e))
    };
    let (go_r, go_w) = pipe()?;
    let (pid_r, pid_w) = pipe()?;
    // SAFETY: the children run ordinary code: no thread of this process holds a lock they
    // take (see above), and glibc's malloc is fork-safe.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork a mirror", e))? {
        nix::unistd::ForkResult::Child => {
            drop(go_w);
            drop(pid_r);
            // SAFETY: as above.
            if let Ok(nix::unistd::ForkResult::Parent { child }) = unsafe { nix::unistd::fork() } {
                let _ = nix::unistd::write(&pid_w, &child.as_raw().to_ne_bytes());
                // SAFETY: leave without running the parent's destructors or atexit handlers.
                unsafe { libc::_exit(0) };
            }
            drop(pid_w);
            // The verb's log file is closed below: its fd number may be reused.
            let _quiet = tracing::dispatcher::set_default(&tracing::Dispatch::none());
            let go = become_mirror(go_r.into_raw_fd());
            let mut b = [0u8; 1];
            let code = match nix::unistd::read(go, &mut b) {
                Ok(1) => wait(std::process::id() as i32),
                _ => LOST,
            };
            // SAFETY: as above.
            unsafe { libc::_exit(code & 0xff) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(go_r);
            drop(pid_w);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut buf = [0u8; 4];
            let n = nix::unistd::read(pid_r.as_raw_fd(), &mut buf)
                .map_err(|e| Error::sys("read a mirror's pid", e))?;
            let mirror = i32::from_ne_bytes(buf);
            if n != 4 || mirror <= 0 {
                return Err(Error::Vm("the mirror process did not start".into()));
            }
            // A mirror not registered reads end-of-file instead of the go, and exits.
            register(mirror)?;
            let _ = nix::unistd::write(&go_w, b"g");
            Ok(mirror)
        }
    }
}

/// Makes this process a mirror: named `hull-mirror`, /dev/null on its stdio, no fd of the
/// verb's but `keep` (the caller's pipes stay the caller's). Returns `keep`'s new number.
fn become_mirror(keep: i32) -> i32 {
    const KEEP: i32 = 3;
    // SAFETY: prctl renames this process; dup2 and close_range act on this process' own fd
    // table, on fds it holds (the OwnedFds of the verb are never dropped in a mirror, which
    // leaves by `_exit`).
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"hull-mirror".as_ptr());
        if keep != KEEP {
            libc::dup2(keep, KEEP);
        }
        libc::syscall(libc::SYS_close_range, KEEP as u32 + 1, u32::MAX, 0u32);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
    }
    KEEP
}

/// A registered mirror.
struct Entry {
    /// The guest process it stands for.
    guest_pid: i32,
    /// Its exit code, once known.
    exit: Option<i32>,
}

#[derive(Default)]
struct Table {
    /// By mirror (host) pid.
    by_pid: HashMap<i32, Entry>,
    /// The init's mirror.
    init: Option<i32>,
}

/// The server's mirrors: what each stands for, and the exit statuses their waits get.
#[derive(Default)]
pub struct Mirrors {
    table: Mutex<Table>,
    changed: Condvar,
}

impl Mirrors {
    /// Records `mirror` as standing for the guest process `guest_pid` (the init's if `init`).
    pub fn register(&self, mirror: i32, guest_pid: i32, init: bool) -> Result<()> {
        let mut t = self.table.lock();
        if init && t.init.is_some() {
            return Err(Error::invalid("the container's init has a mirror already"));
        }
        if t.by_pid.contains_key(&mirror) {
            return Err(Error::invalid(format!(
                "mirror {mirror} is registered already"
            )));
        }
        t.by_pid.insert(
            mirror,
            Entry {
                guest_pid,
                exit: None,
            },
        );
        if init {
            t.init = Some(mirror);
        }
        Ok(())
    }

    /// The init's mirror, once registered.
    pub fn init(&self) -> Option<i32> {
        self.table.lock().init
    }

    /// The guest process `mirror` stands for.
    pub fn guest_pid(&self, mirror: i32) -> Option<i32> {
        self.table.lock().by_pid.get(&mirror).map(|e| e.guest_pid)
    }

    /// The process behind `mirror` exited with `code` (the first report wins).
    pub fn exited(&self, mirror: i32, code: i32) {
        if let Some(e) = self.table.lock().by_pid.get_mut(&mirror) {
            e.exit.get_or_insert(code);
        }
        self.changed.notify_all();
    }

    /// Whether the process behind `mirror` has reported its exit.
    pub fn has_exited(&self, mirror: i32) -> bool {
        self.table
            .lock()
            .by_pid
            .get(&mirror)
            .is_some_and(|e| e.exit.is_some())
    }

    /// Every process not reported yet ends with `code` (the pod stops).
    pub fn end_all(&self, code: i32) {
        for e in self.table.lock().by_pid.values_mut() {
            e.exit.get_or_insert(code);
        }
        self.changed.notify_all();
    }

    /// Blocks until the process behind `mirror` exits: its code, or `None` for a mirror
    /// not registered.
    pub fn wait(&self, mirror: i32) -> Option<i32> {
        let mut t = self.table.lock();
        loop {
            match t.by_pid.get(&mirror)?.exit {
                Some(code) => return Some(code),
                None => self.changed.wait(&mut t),
            }
        }
    }
}

/// Blocks until process `pid` (not a child: a mirror is an orphan) has exited; an error
/// when it cannot be watched (already gone: `pidfd_open` fails with ESRCH).
pub fn wait_gone(pid: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the descriptor pidfd_open just returned, owned here alone.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd; a pidfd becomes readable when its process exits.
        match unsafe { libc::poll(&mut p, 1, -1) } {
            n if n > 0 => return Ok(()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_wait_gets_the_first_status_reported() {
        let m = Arc::new(Mirrors::default());
        m.register(10, 1, true).unwrap();
        m.register(11, 5, false).unwrap();
        assert_eq!(m.init(), Some(10));
        assert_eq!(m.guest_pid(11), Some(5));
        let waiter = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.wait(11))
        };
        m.exited(11, 9);
        m.end_all(137);
        assert_eq!(waiter.join().unwrap(), Some(9));
        assert_eq!(m.wait(10), Some(137));
        assert!(m.wait(12).is_none());
    }

    #[test]
    fn a_second_init_or_a_known_mirror_is_refused() {
        let m = Mirrors::default();
        m.register(10, 1, true).unwrap();
        assert!(m.register(11, 2, true).is_err());
        assert!(m.register(10, 3, false).is_err());
    }
}
