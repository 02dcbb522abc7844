//! seccomp filters for the VMM's threads (seccompiler): an allow-list of the system calls the
//! vCPU threads and the event loop make; anything else traps (SIGSYS kills the VMM).

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

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

/// System calls of a vCPU thread besides `ioctl`: KVM_RUN exits are dispatched to the buses
/// (UART output, eventfd writes for interrupts, i8042 and queue notifications); device queues
/// are processed on the event loop thread, not here.
const VCPU_SYSCALLS: &[i64] = &[
    // F_GETFD: std checks an fd is open before closing it in debug builds.
    libc::SYS_fcntl,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
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
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_rseq,
];

/// System calls of the event loop thread besides the vCPU ones: epoll, device back-ends (block
/// file I/O, tap, vsock unix sockets, getrandom), the API socket, snapshots, kicking and
/// joining vCPU threads, exiting.
const VMM_EXTRA_SYSCALLS: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_lseek,
    libc::SYS_getrandom,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_tgkill,
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
    libc::SYS_renameat2,
    libc::SYS_prctl,
];

const KVMIO: u64 = 0xae;

const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}

const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// The only ioctls a vCPU thread may make: KVM_RUN and reading its own state for snapshots.
pub fn vcpu_ioctls() -> Vec<u64> {
    use kvm_bindings::*;
    use std::mem::size_of;
    vec![
        io(0x80),                                // KVM_RUN
        ior(0x81, size_of::<kvm_regs>()),        // KVM_GET_REGS
        ior(0x83, size_of::<kvm_sregs>()),       // KVM_GET_SREGS
        iowr(0x88, size_of::<kvm_msrs>()),       // KVM_GET_MSRS
        ior(0x8c, size_of::<kvm_fpu>()),         // KVM_GET_FPU
        ior(0x8e, size_of::<kvm_lapic_state>()), // KVM_GET_LAPIC
        ior(0x98, size_of::<kvm_mp_state>()),    // KVM_GET_MP_STATE
        ior(0x9f, size_of::<kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
        ior(0xa1, size_of::<kvm_debugregs>()),   // KVM_GET_DEBUGREGS
        ior(0xa4, size_of::<kvm_xsave>()),       // KVM_GET_XSAVE
        ior(0xa6, size_of::<kvm_xcrs>()),        // KVM_GET_XCRS
    ]
}

/// Builds a filter allowing `syscalls` (any arguments), `ioctl` with the requests in
/// `ioctls` (any request when `None`), and answering anything else with `mismatch`.
pub fn build_filter(
    syscalls: &[i64],
    ioctls: Option<&[u64]>,
    mismatch: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        syscalls.iter().map(|s| (*s, vec![])).collect();
    if let Some(requests) = ioctls {
        let mut ioctl_rules = Vec::new();
        for req in requests {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *req)
                .map_err(SeccompError::Build)?;
            ioctl_rules.push(SeccompRule::new(vec![cond]).map_err(SeccompError::Build)?);
        }
        rules.insert(libc::SYS_ioctl, ioctl_rules);
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Build)
}

/// The filter for vCPU threads.
pub fn vcpu_filter() -> Result<BpfProgram, SeccompError> {
    build_filter(VCPU_SYSCALLS, Some(&vcpu_ioctls()), SeccompAction::Trap)
}

/// The filter for the event loop thread.
pub fn vmm_filter() -> Result<BpfProgram, SeccompError> {
    let all: Vec<i64> = VCPU_SYSCALLS
        .iter()
        .chain(VMM_EXTRA_SYSCALLS)
        .copied()
        .collect();
    build_filter(&all, None, SeccompAction::Trap)
}

/// Installs `filter` on the calling thread.
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_abi() {
        let ioctls = vcpu_ioctls();
        assert_eq!(ioctls[0], 0xae80); // KVM_RUN
        assert_eq!(ioctls[1], 0x8090_ae81); // KVM_GET_REGS
        assert_eq!(ioctls[2], 0x8138_ae83); // KVM_GET_SREGS
        assert_eq!(ioctls[3], 0xc008_ae88); // KVM_GET_MSRS
        assert_eq!(ioctls[4], 0x81a0_ae8c); // KVM_GET_FPU
        assert_eq!(ioctls[5], 0x8400_ae8e); // KVM_GET_LAPIC
        assert_eq!(ioctls[6], 0x8004_ae98); // KVM_GET_MP_STATE
        assert_eq!(ioctls[7], 0x8040_ae9f); // KVM_GET_VCPU_EVENTS
        assert_eq!(ioctls[8], 0x8080_aea1); // KVM_GET_DEBUGREGS
        assert_eq!(ioctls[9], 0x9000_aea4); // KVM_GET_XSAVE
        assert_eq!(ioctls[10], 0x8188_aea6); // KVM_GET_XCRS
    }

    #[test]
    fn filters_compile() {
        assert!(!vcpu_filter().unwrap().is_empty());
        assert!(vmm_filter().unwrap().len() > vcpu_filter().unwrap().len());
    }

    #[test]
    fn forbidden_syscall_is_refused_and_allowed_one_works() {
        // Errno instead of Trap so that the test process survives the forbidden call.
        let filter = build_filter(
            VCPU_SYSCALLS,
            Some(&vcpu_ioctls()),
            SeccompAction::Errno(libc::EPERM as u32),
        )
        .unwrap();
        let r = std::thread::spawn(move || {
            apply(&filter).unwrap();
            // SAFETY: getpid has no arguments and cannot fail.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            let mut uts = std::mem::MaybeUninit::<libc::utsname>::uninit();
            // SAFETY: uname writes into the utsname buffer passed.
            let r = unsafe { libc::uname(uts.as_mut_ptr()) };
            let uname_err = std::io::Error::last_os_error().raw_os_error();
            // An ioctl outside the vCPU list (FIONBIO on stdin) is refused too.
            let mut one: libc::c_int = 1;
            // SAFETY: FIONBIO reads one int from the pointer, which points at `one`.
            let io = unsafe { libc::ioctl(0, libc::FIONBIO, &mut one) };
            let ioctl_err = std::io::Error::last_os_error().raw_os_error();
            (pid, r, uname_err, io, ioctl_err)
        })
        .join()
        .unwrap();
        assert!(r.0 > 0);
        assert_eq!(r.1, -1);
        assert_eq!(r.2, Some(libc::EPERM));
        assert_eq!(r.3, -1);
        assert_eq!(r.4, Some(libc::EPERM));
    }
}
