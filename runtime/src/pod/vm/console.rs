//! The guest console of a vm pod (`hull console`): a process run by the agent in the guest
//! itself, as root, outside the pod's containers, with busybox's tools (the host's static
//! busybox, put in the pod's shared directory with its applet links the first time a console
//! is asked for: nothing in the initrd, nothing at boot); and the guest's serial console log.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::runtime::{Process, UserBuilder};

use super::{VmPod, GUEST_SHARED};
use crate::config::RootfsMode;
use crate::error::{Error, Result};

/// The static busybox the console's tools come from (Debian's busybox-static).
pub(super) const BUSYBOX: &str = "/bin/busybox";
/// The tools' directory in the pod's shared directory.
pub(super) const TOOLS: &str = ".hull-tools";

impl VmPod {
    /// Makes `process` a guest console process of container `id`'s pod: root, in `/`, the
    /// tools first on its PATH, `sh` when it names no command. Errors when the config turns
    /// the console off or the host has no static busybox.
    pub(super) fn prepare_console(&self, id: &str, process: &mut Process) -> Result<()> {
        if !self.config.debug_console {
            return Err(Error::invalid(format!(
                "container {id}: the guest console is off ([vm] debug_console = false)"
            )));
        }
        // Disk mode: each container's image has the tools (nothing of the host is mounted).
        let tools = match self.running_rootfs() {
            RootfsMode::Share => {
                self.install_tools()?;
                format!("{GUEST_SHARED}/{TOOLS}")
            }
            RootfsMode::Disk => format!("{GUEST_SHARED}/{id}/{TOOLS}"),
        };
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            process.set_args(Some(vec!["sh".into()]));
        }
        let mut env = vec![
            format!("PATH={tools}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME=/".into(),
        ];
        if process.terminal().unwrap_or(false) {
            env.push("TERM=xterm".into());
        }
        env.extend(
            process
                .env()
                .iter()
                .flatten()
                .filter(|e| !e.starts_with("PATH=") && !e.starts_with("HOME="))
                .cloned(),
        );
        process.set_env(Some(env));
        process.set_cwd("/".into());
        process.set_user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(|e| Error::invalid(e.to_string()))?,
        );
        Ok(())
    }

    /// Puts busybox and a link per applet in the pod's shared directory, once.
    fn install_tools(&self) -> Result<()> {
        let dir = self.shared().join(TOOLS);
        if dir.join("sh").exists() {
            return Ok(());
        }
        install_busybox(Path::new(BUSYBOX), &dir)
    }

    /// The guest's serial console output so far: the boot log (kept with a template, for a
    /// VM restored from one) and what the guest printed since.
    pub fn console_log(&self) -> Result<String> {
        let path = self.dir.join("vm").join("console.log");
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Copies `busybox` into `dir` with a link named after each of its applets (built in a
/// temporary directory, then renamed: a concurrent console sees all or nothing).
pub(super) fn install_busybox(busybox: &Path, dir: &Path) -> Result<()> {
    if !busybox.is_file() {
        return Err(Error::invalid(format!(
            "the guest console needs a static busybox at {} (apt-get install busybox-static)",
            busybox.display()
        )));
    }
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| Error::io(busybox, e))?;
    let staging = PathBuf::from(format!("{}.tmp-{}", dir.display(), std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let made = (|| {
        let copy = staging.join("busybox");
        fs::copy(busybox, &copy).map_err(|e| Error::io(&copy, e))?;
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet.contains('/') || applet == "busybox" {
                continue;
            }
            let link = staging.join(applet);
            symlink("busybox", &link).map_err(|e| Error::io(&link, e))?;
        }
        fs::rename(&staging, dir).map_err(|e| Error::io(dir, e))
    })();
    if made.is_err() {
        let _ = fs::remove_dir_all(&staging);
        if dir.join("sh").exists() {
            return Ok(()); // another console made it first
        }
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_and_its_applets_land_in_the_tools_dir() {
        let d = tempfile::tempdir().unwrap();
        let tools = d.path().join(TOOLS);
        install_busybox(Path::new(BUSYBOX), &tools).unwrap();
        assert!(tools.join("busybox").is_file());
        assert_eq!(
            fs::read_link(tools.join("sh")).unwrap(),
            PathBuf::from("busybox")
        );
        assert!(tools.join("cat").exists());
        let e = install_busybox(Path::new("/nonexistent/busybox"), &d.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("busybox-static"), "{e}");
    }
}
