//! seccomp filters for the VMM's threads (seccompiler): an allow-list of the system calls the
//! vCPU threads and the event loop make; anything else traps (SIGSYS kills the VMM).

use std::collections::BTreeMap;

use seccompiler::{SeccompAction, SeccompFilter, SeccompRule, TargetArch};

/// A compiled filter.
pub type BpfProgram = seccompiler::BpfProgram;

/// Errors while building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built.
    #[error("cannot build seccomp filter: {0}")]
    Build(seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install seccomp filter: {0}")]
    Apply(seccompiler::Error),
}

/// System calls of a vCPU thread: KVM_RUN and device emulation (eventfds, block file I/O,
/// vsock unix sockets, serial output, getrandom for virtio-rng).
const VCPU_SYSCALLS: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_exit,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_fcntl,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_rseq,
];

/// Extra system calls of the event loop thread: epoll, accepting API and vsock connections,
/// writing snapshots, stopping and joining vCPU threads, exiting.
const VMM_EXTRA_SYSCALLS: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_openat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_ftruncate,
    libc::SYS_exit_group,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_eventfd2,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_prctl,
];

/// Builds a filter allowing `syscalls` and answering anything else with `mismatch`.
pub fn build_filter(syscalls: &[i64], mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = syscalls.iter().map(|s| (*s, vec![])).collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Build)
}

/// The filter for vCPU threads.
pub fn vcpu_filter() -> Result<BpfProgram, SeccompError> {
    build_filter(VCPU_SYSCALLS, SeccompAction::Trap)
}

/// The filter for the event loop thread.
pub fn vmm_filter() -> Result<BpfProgram, SeccompError> {
    let all: Vec<i64> = VCPU_SYSCALLS
        .iter()
        .chain(VMM_EXTRA_SYSCALLS)
        .copied()
        .collect();
    build_filter(&all, SeccompAction::Trap)
}

/// Installs `filter` on the calling thread.
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        assert!(!vcpu_filter().unwrap().is_empty());
        assert!(vmm_filter().unwrap().len() > vcpu_filter().unwrap().len());
    }

    #[test]
    fn forbidden_syscall_is_refused_and_allowed_one_works() {
        // Errno instead of Trap so that the test process survives the forbidden call.
        let filter = build_filter(VCPU_SYSCALLS, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
        let r = std::thread::spawn(move || {
            apply(&filter).unwrap();
            // SAFETY: getpid has no arguments and cannot fail.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            let mut uts = std::mem::MaybeUninit::<libc::utsname>::uninit();
            // SAFETY: uname writes into the utsname buffer passed.
            let r = unsafe { libc::uname(uts.as_mut_ptr()) };
            (pid, r, std::io::Error::last_os_error().raw_os_error())
        })
        .join()
        .unwrap();
        assert!(r.0 > 0);
        assert_eq!(r.1, -1);
        assert_eq!(r.2, Some(libc::EPERM));
    }
}
