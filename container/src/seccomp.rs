//! A container's seccomp profile (`linux.seccomp`) compiled to the BPF program the kernel runs,
//! so that [`crate::launch`] can install it itself as the very last step before `execve`.
//!
//! Why hull compiles it rather than let libcontainer load it: libcontainer 0.7 loads the filter
//! and then still runs its own code (without `noNewPrivileges`: capset, chdir, `getcwd` for its
//! cwd check, then a write to its parent, a read of the start socket, HOME from /etc/passwd,
//! `execvp`'s search), so a profile that denies any of those kills the container before its
//! process runs; and it drops the profile altogether for an exec'd process. Compiling here (in
//! the caller, before the container process is cloned) also reports a bad profile at create.
//!
//! The translation follows libcontainer's (`libcontainer::seccomp`) and runc's: a rule whose
//! action is the default action is dropped, a syscall this libseccomp does not know is skipped,
//! argument conditions on the same argument become separate rules.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::error::{Error, Result};

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

/// A compiled profile: the program and the `seccomp(2)` flags it asks for.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

/// Whether the profile hands syscalls to a user-space listener (`SCMP_ACT_NOTIFY`): only
/// libcontainer can pass the listener its fd (from the parent, outside the container).
pub(crate) fn is_notify(profile: &LinuxSeccomp) -> bool {
    profile.default_action() == LinuxSeccompAction::ScmpActNotify
        || profile
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify)
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("linux.seccomp: {what}"))
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction> {
    let errno = errno.map_or(libc::EPERM, |e| e as i32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno).map_err(|_| bad(format!("errnoRet {errno} of SCMP_ACT_TRACE")))?,
        ),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

fn op(o: LinuxSeccompOperator, value_two: Option<u64>) -> ScmpCompareOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value_two.unwrap_or(0)),
    }
}

impl Filter {
    /// Compile `profile` (one without `SCMP_ACT_NOTIFY`: see [`is_notify`]).
    pub(crate) fn compile(profile: &LinuxSeccomp) -> Result<Self> {
        if is_notify(profile) {
            return Err(bad(
                "SCMP_ACT_NOTIFY is loaded by libcontainer, not compiled here",
            ));
        }
        let default = action(profile.default_action(), profile.default_errno_ret())?;
        let mut ctx = ScmpFilterContext::new(default).map_err(bad)?;
        let mut flags = 0;
        for flag in profile.flags().iter().flatten() {
            flags |= match flag {
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                    libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
                }
                // Only meaningful with a notify listener, which such a profile does not have.
                LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
            };
        }
        for a in profile.architectures().iter().flatten() {
            ctx.add_arch(arch(*a))
                .map_err(|e| bad(format!("architecture {a:?}: {e}")))?;
        }
        for rule in profile.syscalls().iter().flatten() {
            let act = action(rule.action(), rule.errno_ret())?;
            if act == default {
                continue;
            }
            let args = rule.args().as_deref().unwrap_or_default();
            let conds: Vec<ScmpArgCompare> = args
                .iter()
                .map(|a| {
                    ScmpArgCompare::new(a.index() as u32, op(a.op(), a.value_two()), a.value())
                })
                .collect();
            // libseccomp compares each argument once per rule: conditions on one argument
            // become one rule each (runc does the same).
            let mut seen = HashSet::new();
            let groups: Vec<&[ScmpArgCompare]> = if args.iter().all(|a| seen.insert(a.index())) {
                vec![&conds]
            } else {
                conds.chunks(1).collect()
            };
            for name in rule.names() {
                let Ok(nr) = ScmpSyscall::from_name(name) else {
                    tracing::debug!(syscall = %name, "seccomp: syscall unknown here, rule skipped");
                    continue;
                };
                for group in &groups {
                    ctx.add_rule_conditional(act, nr, group)
                        .map_err(|e| bad(format!("rule for {name}: {e}")))?;
                }
            }
        }
        let program = export(&ctx)?;
        if program.len() > MAX_INSTRUCTIONS {
            return Err(bad(format!(
                "the profile compiles to {} BPF instructions, more than the kernel's {MAX_INSTRUCTIONS}",
                program.len()
            )));
        }
        Ok(Filter { program, flags })
    }

    /// Install the filter on the calling thread: one `seccomp(2)` call and nothing else, so
    /// that the caller can `execve` right after. Needs `no_new_privs` or CAP_SYS_ADMIN.
    pub(crate) fn install(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            // compile() checked the length against BPF_MAXINSNS (4096 < u16::MAX).
            len: self.program.len() as u16,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: seccomp(2) reads `prog` and the `len` instructions it points to, which
        // `self.program` owns for the duration of the call; it writes nothing of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The program's length in instructions.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.program.len()
    }
}

/// The BPF program libseccomp would load for `ctx`, read back through a memfd (libseccomp
/// 2.5 exports to a file descriptor only).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>> {
    let fd = nix::sys::memfd::memfd_create(
        c"hull-seccomp",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| Error::sys("memfd for the seccomp program", e))?;
    ctx.export_bpf(&fd)
        .map_err(|e| bad(format!("export: {e}")))?;
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| Error::io("memfd:hull-seccomp", e))?;
    const INSN: usize = std::mem::size_of::<libc::sock_filter>();
    if bytes.len() % INSN != 0 {
        return Err(bad(format!(
            "libseccomp exported {} bytes, not whole instructions",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(INSN)
        .map(|b| libc::sock_filter {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn compiles_a_profile_to_bpf() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["getcwd", "no_such_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 9, "op": "SCMP_CMP_EQ"}]},
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
            ]
        }));
        let f = Filter::compile(&p).unwrap();
        assert!(f.len() > 4, "{f:?}");
        assert_eq!(f.flags, libc::SECCOMP_FILTER_FLAG_LOG);
    }

    #[test]
    fn notify_profiles_are_not_compiled_here() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/agent.sock",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(is_notify(&p));
        assert!(Filter::compile(&p).is_err());
    }

    /// The installed program denies what the profile denies, in a child process (a filter
    /// cannot be taken off again).
    #[test]
    fn an_installed_filter_denies_the_profiles_syscalls() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
        }));
        let f = Filter::compile(&p).unwrap();
        // SAFETY: the child only makes raw system calls (prctl, seccomp, getcwd) and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut buf = [0u8; 256];
                // SAFETY: prctl(2) with constant arguments; getcwd(2) writes at most 256
                // bytes into `buf`; _exit(2) ends the child.
                unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    let code = match f.install() {
                        Err(_) => 2,
                        Ok(()) => {
                            let rc = libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len());
                            let errno = *libc::__errno_location();
                            if rc == -1 && errno == libc::ENOSYS {
                                0
                            } else {
                                1
                            }
                        }
                    };
                    libc::_exit(code)
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
