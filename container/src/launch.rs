//! What hull hands libcontainer to start a container process (the init at create, another at
//! exec), so that the process is what the spec and runc make it:
//! - The seccomp profile is installed by [`Launcher`] (libcontainer's executor) as the last
//!   thing before `execve`, nothing in between (see [`crate::seccomp`] for why not by
//!   libcontainer); libcontainer gets the spec without it. A create with a profile hands
//!   libcontainer a copy of config.json ([`InitLaunch`]): its builder reads only a bundle.
//! - Without `noNewPrivileges` the kernel lets only a CAP_SYS_ADMIN holder install a filter,
//!   and libcontainer has dropped the process' capabilities by then. So the process keeps
//!   CAP_SYS_ADMIN in its effective and permitted sets only, never in bounding, inheritable or
//!   ambient: `execve` computes the new permitted set from those (and the file) alone, so the
//!   payload never has it unless the spec gave it.
//! - An exec'd process gets the container's `noNewPrivileges`, capabilities, AppArmor
//!   profile, rlimits, I/O priority and scheduler where its own process says nothing (runc's
//!   rule), and the container's seccomp profile always.
//!
//! A profile with `SCMP_ACT_NOTIFY` needs libcontainer (it passes the listener its fd from
//! outside the container): a create leaves it to libcontainer, an exec is refused.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{Capability, Process, Spec};

use crate::bundle::check_user;
use crate::error::{Error, Result};
use crate::seccomp::{self, Filter};

/// libcontainer's executor for hull's container processes: [`DefaultExecutor`], plus the
/// seccomp filter installed right before `execvp`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Launcher {
    filter: Option<Arc<Filter>>,
}

impl Executor for Launcher {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        let Some(filter) = &self.filter else {
            return DefaultExecutor {}.exec(spec);
        };
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        // Everything execvp needs is made before the filter goes on: from there to the new
        // program, the only system calls are seccomp(2) and execve(2) (execvp's PATH search
        // makes no others).
        let argv: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| ExecutorError::InvalidArg))
            .collect::<std::result::Result<_, _>>()?;
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        if let Err(e) = filter.install() {
            return Err(ExecutorError::Other(format!(
                "install the container's seccomp filter: {e}"
            )));
        }
        // SAFETY: `ptrs` is a NULL-terminated array of pointers to the NUL-terminated strings
        // of `argv`, both alive for the call; execvp(3) returns only on failure.
        unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
        let e = std::io::Error::last_os_error();
        Err(ExecutorError::Execution(
            format!("exec {:?}: {e}", args[0]).into(),
        ))
    }

    fn validate(&self, spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

impl Launcher {
    fn with(filter: Filter) -> Self {
        Self {
            filter: Some(Arc::new(filter)),
        }
    }
}

/// Keep CAP_SYS_ADMIN in `process`' effective and permitted sets (only) until its filter is
/// installed; see the module doc for why `execve` then drops it. Not needed with
/// `noNewPrivileges`, nor when the spec keeps no capability list (nothing is dropped).
fn keep_sys_admin_until_exec(process: &mut Process) {
    if process.no_new_privileges() == Some(true) {
        return;
    }
    let Some(mut caps) = process.capabilities().clone() else {
        return;
    };
    let add = |set: &Option<oci_spec::runtime::Capabilities>| {
        set.clone().map(|mut s| {
            s.insert(Capability::SysAdmin);
            s
        })
    };
    let (effective, permitted) = (add(caps.effective()), add(caps.permitted()));
    caps.set_effective(effective).set_permitted(permitted);
    process.set_capabilities(Some(caps));
}

/// The bundle libcontainer creates a container from, and the executor for its init.
pub(crate) struct InitLaunch {
    bundle: PathBuf,
    /// The hidden copy of the bundle's config.json made for libcontainer, removed on drop.
    staged: Option<PathBuf>,
    /// The init's executor.
    pub launcher: Launcher,
}

impl InitLaunch {
    /// For `spec` (the config.json of `bundle`, canonical): the bundle itself when there is no
    /// profile for hull to install; else a copy in a hidden directory of `root` with the
    /// profile taken out, CAP_SYS_ADMIN kept until exec and `root.path` made absolute.
    pub(crate) fn prepare(root: &Path, id: &str, bundle: &Path, spec: &Spec) -> Result<Self> {
        let plain = || InitLaunch {
            bundle: bundle.to_path_buf(),
            staged: None,
            launcher: Launcher::default(),
        };
        let profile = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
        let filter = match profile {
            Some(p) if seccomp::is_notify(p) => {
                tracing::debug!(container = %id, "seccomp profile with SCMP_ACT_NOTIFY: libcontainer loads it");
                None
            }
            Some(p) => Some(Filter::compile(p)?),
            None => None,
        };
        let drop_apparmor = spec
            .process()
            .as_ref()
            .is_some_and(|p| unusable_apparmor(p, id));
        if filter.is_none() && !drop_apparmor {
            return Ok(plain());
        }
        let mut copy = spec.clone();
        if filter.is_some() {
            if let Some(linux) = copy.linux_mut() {
                linux.set_seccomp(None);
            }
        }
        if drop_apparmor {
            if let Some(p) = copy.process_mut() {
                p.set_apparmor_profile(None);
            }
        }
        if let Some(r) = copy.root_mut() {
            if r.path().is_relative() {
                let abs = bundle.join(r.path());
                r.set_path(abs);
            }
        }
        if filter.is_some() {
            if let Some(p) = copy.process_mut() {
                keep_sys_admin_until_exec(p);
            }
        }
        let dir = root.join(format!(
            ".spec-{id}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let staged = InitLaunch {
            bundle: dir.clone(),
            staged: Some(dir.clone()),
            launcher: filter.map(Launcher::with).unwrap_or_default(),
        };
        let config = dir.join("config.json");
        copy.save(&config).map_err(|e| Error::InvalidConfig {
            bundle: bundle.to_path_buf(),
            reason: format!("save a copy at {}: {e}", config.display()),
        })?;
        Ok(staged)
    }

    /// The bundle to give libcontainer.
    pub(crate) fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// Whether libcontainer gets a copy (and so records the copy's path as the bundle).
    pub(crate) fn is_staged(&self) -> bool {
        self.staged.is_some()
    }
}

impl Drop for InitLaunch {
    fn drop(&mut self) {
        if let Some(dir) = &self.staged {
            if let Err(e) = fs::remove_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "remove the spec copy");
            }
        }
    }
}

/// Make `process`, to be exec'd in container `id` whose config is `spec`, what runc makes it
/// (see the module doc); returns its executor.
pub(crate) fn prepare_exec(id: &str, process: &mut Process, spec: &Spec) -> Result<Launcher> {
    check_user(process.user()).map_err(|e| Error::InvalidInput(format!("exec process: {e}")))?;
    if let Some(init) = spec.process() {
        inherit(process, init);
    }
    if unusable_apparmor(process, id) {
        process.set_apparmor_profile(None);
    }
    let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(Launcher::default());
    };
    if seccomp::is_notify(profile) {
        return Err(Error::Unsupported(format!(
            "exec in container {id}: its seccomp profile hands syscalls to a listener \
             (SCMP_ACT_NOTIFY), which hull cannot set up for an exec'd process"
        )));
    }
    let filter = Filter::compile(profile)?;
    keep_sys_admin_until_exec(process);
    Ok(Launcher::with(filter))
}

/// Whether `process` names an AppArmor profile on a host without AppArmor: runc then runs it
/// without one (there is nothing to confine with), and so does hull, saying so in its log.
fn unusable_apparmor(process: &Process, id: &str) -> bool {
    let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    else {
        return false;
    };
    if apparmor_enabled() {
        return false;
    }
    tracing::info!(container = %id, profile, "apparmor is not enabled on this host: the profile is not applied (as runc does)");
    true
}

/// AppArmor is enabled on this host (runc's test: the module parameter says `Y`).
fn apparmor_enabled() -> bool {
    fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y")
}

/// What an exec'd process takes from the container's process when it names none itself.
fn inherit(process: &mut Process, init: &Process) {
    if process.no_new_privileges().is_none() {
        process.set_no_new_privileges(init.no_new_privileges());
    }
    if process.capabilities().is_none() {
        process.set_capabilities(init.capabilities().clone());
    }
    if process
        .apparmor_profile()
        .as_deref()
        .is_none_or(str::is_empty)
    {
        process.set_apparmor_profile(init.apparmor_profile().clone());
    }
    if process.rlimits().as_ref().is_none_or(Vec::is_empty) {
        process.set_rlimits(init.rlimits().clone());
    }
    if process.io_priority().is_none() {
        process.set_io_priority(*init.io_priority());
    }
    if process.scheduler().is_none() {
        process.set_scheduler(init.scheduler().clone());
    }
}

/// Whether `caps` holds CAP_SYS_ADMIN in `set` (for tests).
#[cfg(test)]
fn has_sys_admin(set: &Option<oci_spec::runtime::Capabilities>) -> bool {
    set.as_ref()
        .is_some_and(|s| s.contains(&Capability::SysAdmin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Spec {
        let mut base = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {
                "user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["sh"],
                "noNewPrivileges": true,
                "apparmorProfile": "hull-test",
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 64, "soft": 64}],
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                                 "permitted": ["CAP_CHOWN"]}
            },
            "linux": {}
        });
        base["linux"] = v;
        serde_json::from_value(base).unwrap()
    }

    fn process(v: serde_json::Value) -> Process {
        serde_json::from_value(v).unwrap()
    }

    const PROFILE: &str = r#"{"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#;

    #[test]
    fn an_exec_takes_what_the_container_sets_and_it_does_not() {
        let s = spec(json!({}));
        let mut p = process(json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["id"]}));
        let l = prepare_exec("c", &mut p, &s).unwrap();
        assert!(l.filter.is_none());
        assert_eq!(p.no_new_privileges(), Some(true));
        // The container's AppArmor profile, where the host has AppArmor (runc's rule).
        let apparmor = apparmor_enabled().then_some("hull-test");
        assert_eq!(p.apparmor_profile().as_deref(), apparmor);
        assert_eq!(p.rlimits().as_ref().map(Vec::len), Some(1));
        assert_eq!(
            p.capabilities(),
            s.process().as_ref().unwrap().capabilities()
        );

        // What the exec's process says wins.
        let mut p = process(
            json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["id"],
            "noNewPrivileges": false, "capabilities": {"effective": ["CAP_KILL"]}}),
        );
        prepare_exec("c", &mut p, &s).unwrap();
        assert_eq!(p.no_new_privileges(), Some(false));
        let eff = p
            .capabilities()
            .as_ref()
            .unwrap()
            .effective()
            .clone()
            .unwrap();
        assert!(eff.contains(&Capability::Kill) && !eff.contains(&Capability::Chown));
    }

    #[test]
    fn an_exec_gets_the_containers_seccomp_filter() {
        let s =
            spec(json!({"seccomp": serde_json::from_str::<serde_json::Value>(PROFILE).unwrap()}));
        let mut p = process(json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["id"]}));
        let l = prepare_exec("c", &mut p, &s).unwrap();
        assert!(l.filter.is_some());
        // noNewPrivileges (inherited) lets the filter on without CAP_SYS_ADMIN.
        let caps = p.capabilities().clone().unwrap();
        assert!(!has_sys_admin(caps.effective()));

        let mut p = process(
            json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["id"],
            "noNewPrivileges": false}),
        );
        prepare_exec("c", &mut p, &s).unwrap();
        let caps = p.capabilities().clone().unwrap();
        assert!(has_sys_admin(caps.effective()) && has_sys_admin(caps.permitted()));
        assert!(!has_sys_admin(caps.bounding()));
        assert!(!has_sys_admin(caps.inheritable()) && !has_sys_admin(caps.ambient()));
    }

    #[test]
    fn an_exec_into_a_notify_profile_is_refused() {
        let s = spec(json!({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/l.sock",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}}));
        let mut p = process(json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["id"]}));
        let e = prepare_exec("c", &mut p, &s).unwrap_err();
        assert!(e.to_string().contains("SCMP_ACT_NOTIFY"), "{e}");
    }

    #[test]
    fn an_exec_with_an_out_of_range_id_is_refused() {
        let s = spec(json!({}));
        let mut p = process(
            json!({"user": {"uid": 0, "gid": 0, "additionalGids": [4294967295u32]}, "cwd": "/", "args": ["id"]}),
        );
        let e = prepare_exec("c", &mut p, &s).unwrap_err().to_string();
        assert!(
            e.contains("process.user.additionalGids") && e.contains("4294967295"),
            "{e}"
        );
    }

    #[test]
    fn a_create_with_a_profile_gets_a_copy_without_it() {
        let root = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let s =
            spec(json!({"seccomp": serde_json::from_str::<serde_json::Value>(PROFILE).unwrap()}));
        let launch = InitLaunch::prepare(root.path(), "c", bundle.path(), &s).unwrap();
        assert!(launch.is_staged() && launch.launcher.filter.is_some());
        let copy = Spec::load(launch.bundle().join("config.json")).unwrap();
        assert!(copy.linux().as_ref().unwrap().seccomp().is_none());
        assert_eq!(
            copy.root().as_ref().unwrap().path(),
            &bundle.path().join("rootfs")
        );
        let dir = launch.bundle().to_path_buf();
        drop(launch);
        assert!(!dir.exists());

        let mut s = spec(json!({}));
        if !apparmor_enabled() {
            // Without AppArmor on the host, a profile makes a copy without it (below).
            s.process_mut().as_mut().unwrap().set_apparmor_profile(None);
        }
        let plain = InitLaunch::prepare(root.path(), "c", bundle.path(), &s).unwrap();
        assert!(!plain.is_staged() && plain.bundle() == bundle.path());
    }

    #[test]
    fn an_apparmor_profile_is_dropped_where_the_host_has_no_apparmor() {
        let root = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let launch =
            InitLaunch::prepare(root.path(), "c", bundle.path(), &spec(json!({}))).unwrap();
        if apparmor_enabled() {
            // The profile is applied by libcontainer from the bundle itself.
            assert!(!launch.is_staged());
            return;
        }
        assert!(launch.is_staged() && launch.launcher.filter.is_none());
        let copy = Spec::load(launch.bundle().join("config.json")).unwrap();
        assert_eq!(copy.process().as_ref().unwrap().apparmor_profile(), &None);
        let mut p = process(
            json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["id"],
            "apparmorProfile": "x"}),
        );
        prepare_exec("c", &mut p, &spec(json!({}))).unwrap();
        assert_eq!(p.apparmor_profile(), &None);
    }

    #[test]
    fn sys_admin_is_kept_only_where_execve_drops_it() {
        let mut p = process(
            json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["id"],
            "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                             "permitted": ["CAP_CHOWN"], "inheritable": ["CAP_CHOWN"],
                             "ambient": ["CAP_CHOWN"]}}),
        );
        keep_sys_admin_until_exec(&mut p);
        let caps = p.capabilities().as_ref().unwrap();
        assert!(has_sys_admin(caps.effective()) && has_sys_admin(caps.permitted()));
        for set in [caps.bounding(), caps.inheritable(), caps.ambient()] {
            assert!(!has_sys_admin(set));
        }
        // With noNewPrivileges nothing is needed.
        let mut p = process(
            json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["id"],
            "noNewPrivileges": true, "capabilities": {"effective": ["CAP_CHOWN"]}}),
        );
        keep_sys_admin_until_exec(&mut p);
        assert!(!has_sys_admin(
            p.capabilities().as_ref().unwrap().effective()
        ));
    }
}
