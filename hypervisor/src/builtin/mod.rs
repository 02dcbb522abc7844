//! The `builtin` backend: hull's own VMM (`hull-vmm`, the `vmm` crate) on hardware KVM. The
//! agent is reached over hull-vmm's hybrid vsock socket (`CONNECT <port>\n` / `OK <n>\n`), the VM
//! is controlled over hull-vmm's JSON-lines API socket, NICs are virtio-net on the pod's taps
//! (`--net-fd`), disks are virtio-blk with their serials (`--block`; through the host page
//! cache, a guest flush syncs them), disk slots are virtio-blk devices of size 0 whose disk the
//! API swaps in and out (`--disk-slot`, `attach-disk`; the guest sees the capacity change),
//! VMs start from templates (a hull-vmm snapshot of a booted guest whose agent answered,
//! `--restore`) or checkpoints, and it ends cleanly only by the guest powering itself off.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::capabilities::Backend;
use crate::error::{HypervisorError, Result};
use crate::programs::find_vmm_binary;
use crate::template::{self, Template};
use crate::vmm_process::VmmProcess;
use crate::{
    detect, disk_serial, disk_slot_serial, mac_string, nic_device_mac, BootedVm, Disk, Hypervisor,
    VmConfig,
};
use hull_agent_client::{AgentChannel, AgentClient};

pub use crate::programs::VMM_BINARY;
/// The guest vsock port hull-agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// How long one API socket request may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a snapshot request may take (it writes all of the guest's RAM).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a guest restored from a template may take to answer before it is given up and
/// the kernel boots instead.
const RESTORE_BOUND: Duration = Duration::from_secs(10);
/// How long the first `Check` of a restored guest may go unanswered before it is asked again
/// on a fresh connection.
const RESTORED_CHECK: Duration = Duration::from_secs(2);

/// The directory of a template holding hull-vmm's snapshot (`vm.json`, `memory.bin`).
const TEMPLATE_SNAPSHOT: &str = "vm";

/// How hull-vmm gets the guest running.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// Boots the kernel.
    Boot,
    /// Restores the snapshot (a template or a checkpoint) in this directory.
    Restore(PathBuf),
}
/// How long `stop` waits for a guest that is powering off before killing hull-vmm.
const POWER_OFF_GRACE: Duration = Duration::from_secs(3);

/// The one error of choosing this backend where it cannot run.
fn no_hardware_kvm() -> HypervisorError {
    HypervisorError::Config(
        "the builtin backend needs hardware virtualization: /dev/kvm here is missing or emulated \
         (see `hull check`); use hypervisor = \"qemu\""
            .into(),
    )
}

/// A `hull-vmm` process owned by this handle: it never outlives the handle (killed on drop, and
/// `PR_SET_PDEATHSIG` kills it if this process dies first).
#[derive(Debug)]
pub struct BuiltinHypervisor {
    config: VmConfig,
    process: VmmProcess,
    /// Tests only: the hull-vmm to run instead of the one found.
    vmm_binary: Option<PathBuf>,
    /// Tests only: `false` skips the hardware KVM check so that boot runs a stand-in hull-vmm.
    require_hardware_kvm: bool,
    /// How the next hull-vmm starts.
    start: Start,
    /// The template the running guest was restored from, with its shared lock, until its
    /// agent answered.
    restored_from: Option<(Template, template::TemplateLock)>,
}

impl BuiltinHypervisor {
    /// A handle for the VM described by `config`; nothing runs until [`Hypervisor::boot`].
    pub fn new(config: VmConfig) -> Self {
        let dir = &config.state_dir;
        let process = VmmProcess::new("hull-vmm", dir.join("vmm.log"), dir.join("console.log"));
        BuiltinHypervisor {
            config,
            process,
            vmm_binary: None,
            require_hardware_kvm: true,
            start: Start::Boot,
            restored_from: None,
        }
    }

    /// hull-vmm's hybrid vsock socket (the agent channel).
    pub fn vsock_socket(&self) -> PathBuf {
        self.config.state_dir.join("vsock.sock")
    }

    /// hull-vmm's control API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.config.state_dir.join("api.sock")
    }

    /// The agent's channel: hull-vmm's hybrid vsock socket, on the agent's port.
    pub fn agent_channel(&self) -> AgentChannel {
        AgentChannel::VsockUds {
            path: self.vsock_socket(),
            port: AGENT_VSOCK_PORT,
        }
    }

    /// hull-vmm's own stderr (why it refused to start).
    pub fn vmm_log(&self) -> PathBuf {
        self.config.state_dir.join("vmm.log")
    }

    /// The VM's name on hull-vmm's log lines: the state dir's name.
    fn vm_id(&self) -> String {
        self.config
            .state_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "hull-vm".into())
    }

    /// The kernel command line (hull-vmm appends `virtio_mmio.device=...` for its devices).
    pub fn kernel_cmdline(&self) -> String {
        crate::guest_cmdline(
            "k",
            &format!("vsock://{AGENT_VSOCK_PORT}"),
            None,
            false,
            &self.config.extra_cmdline,
        )
    }

    /// The full hull-vmm command line (without the binary).
    pub fn command_args(&self) -> Vec<String> {
        let cfg = &self.config;
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut a: Vec<String> = vec![
            "--kernel".into(),
            s(&cfg.kernel),
            "--initrd".into(),
            s(&cfg.initrd),
            "--cmdline".into(),
            self.kernel_cmdline(),
            "--memory".into(),
            cfg.memory_mib.to_string(),
            "--vcpus".into(),
            cfg.vcpus.to_string(),
            "--vsock-uds".into(),
            s(&self.vsock_socket()),
            "--api-sock".into(),
            s(&self.api_socket()),
            "--id".into(),
            self.vm_id(),
        ];
        // Disk i: its host device or file, with disk i's serial.
        for (i, disk) in cfg.disks.iter().enumerate() {
            a.push("--block".into());
            a.push(format!(
                "{}{},serial={}",
                s(&disk.path),
                if disk.read_only { ",ro" } else { "" },
                disk_serial(i)
            ));
        }
        // Slot i: empty, or (a restored VM) the disk it held at its checkpoint.
        for i in 0..cfg.disk_slots {
            a.push("--disk-slot".into());
            let mut slot = disk_slot_serial(i);
            if let Some((_, d)) = cfg.filled_slots.iter().find(|(n, _)| *n == i) {
                slot.push_str(&format!(",file={}", s(&d.path)));
                if d.read_only {
                    slot.push_str(",ro");
                }
            }
            a.push(slot);
        }
        // NIC i: the pod's tap i, inherited by its fd number, with NIC i's device MAC.
        for (i, fd) in cfg.nic_fds().into_iter().enumerate() {
            a.push("--net-fd".into());
            a.push(format!("{fd},mac={}", mac_string(nic_device_mac(i))));
        }
        if let Start::Restore(dir) = &self.start {
            a.push("--restore".into());
            a.push(s(dir));
        }
        a
    }

    /// The hull-vmm to run: `HULL_VMM`, else next to the running executable, else on PATH.
    fn find_binary(&self) -> Result<PathBuf> {
        if let Some(b) = &self.vmm_binary {
            return Ok(b.clone());
        }
        find_vmm_binary().ok_or_else(|| HypervisorError::Spawn {
            binary: VMM_BINARY.into(),
            source: std::io::Error::new(
                ErrorKind::NotFound,
                "not in $HULL_VMM, next to this executable, or on PATH",
            ),
        })
    }

    fn validate(&self) -> Result<()> {
        let cfg = &self.config;
        // hull-vmm numbers its vCPUs with a u8.
        cfg.check_bootable(Some(u32::from(u8::MAX)))?;
        if let Some((i, d)) = cfg
            .disks
            .iter()
            .enumerate()
            .find(|(_, d)| d.path.to_string_lossy().contains(','))
        {
            return Err(HypervisorError::Config(format!(
                "disk {i}: {:?} has a comma, which hull-vmm's --block cannot name",
                d.path
            )));
        }
        if let Some((i, d)) = cfg
            .filled_slots
            .iter()
            .find(|(i, d)| *i >= cfg.disk_slots || d.path.to_string_lossy().contains(','))
        {
            return Err(HypervisorError::Config(format!(
                "disk slot {i} ({:?}): no such slot (the vm has {}), or a comma in the path, \
                 which hull-vmm's --disk-slot cannot name",
                d.path, cfg.disk_slots
            )));
        }
        Backend::Builtin.check_covers(&cfg.needs())
    }

    /// Starts hull-vmm (as `self.start` says) with fresh sockets and logs; returns when it
    /// did. A guest restored from a template has the template's boot log at the head of its
    /// console log.
    fn spawn(&mut self) -> Result<std::time::Instant> {
        let dir = &self.config.state_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| HypervisorError::io(format!("create {dir:?}"), e))?;
        self.remove_sockets();
        let log = File::create(self.vmm_log())
            .map_err(|e| HypervisorError::io(format!("create {:?}", self.vmm_log()), e))?;
        let console_path = self.console_log();
        let _ = std::fs::remove_file(&console_path);
        if let Start::Restore(snapshot) = &self.start {
            if let Some(boot_log) = snapshot.parent().map(|t| t.join(template::BOOT_LOG)) {
                let _ = std::fs::copy(boot_log, &console_path);
            }
        }
        let console = File::options()
            .create(true)
            .append(true)
            .open(&console_path)
            .map_err(|e| HypervisorError::io(format!("create {console_path:?}"), e))?;

        let binary = self.find_binary()?;
        let mut cmd = Command::new(&binary);
        cmd.args(self.command_args())
            .stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(log));
        // The taps stay open (held by `self.config`) until the spawn returned.
        self.process
            .spawn(cmd, &binary.display().to_string(), self.config.nic_fds())
    }

    /// Starts hull-vmm booting the kernel.
    fn cold_start(&mut self) -> Result<std::time::Instant> {
        self.start = Start::Boot;
        self.spawn()
    }

    /// What makes a guest of this config interchangeable with another: the key of its
    /// template (the NICs by count and MAC and the slots by serial: each VM restores with its
    /// own taps and disks behind the same devices).
    fn template_key(&self) -> Result<String> {
        let cfg = &self.config;
        let vmm = self.find_binary()?;
        let mut facts = vec![
            "hull-vmm".to_string(),
            cfg.memory_mib.to_string(),
            cfg.vcpus.to_string(),
            self.kernel_cmdline(),
        ];
        facts.extend(cfg.device_facts());
        template::key(
            &[
                ("hull-vmm", &vmm),
                ("kernel", &cfg.kernel),
                ("initrd", &cfg.initrd),
            ],
            &facts,
        )
    }

    /// Where this VM's template is kept, if it starts from one: never for a VM with disks
    /// (a template's guest has seen other disks and their sizes).
    fn template_root(&self) -> Option<PathBuf> {
        let root = self.config.template_dir.clone()?;
        if !self.config.disks.is_empty() || !self.config.filled_slots.is_empty() {
            tracing::debug!(vm = %self.vm_id(), "vm with disks boots cold: a template's guest has seen other disks");
            return None;
        }
        Some(root)
    }

    /// Starts the guest from a template under `root`: restores it, after making it first when
    /// this configuration has none.
    fn start_from_template(&mut self, root: &Path) -> Result<std::time::Instant> {
        let t = Template::new(root, self.template_key()?);
        let in_use = t.ready_for_use(|t| self.make_template(t))?;
        self.start = Start::Restore(t.dir().join(TEMPLATE_SNAPSHOT));
        let started = self.spawn()?;
        // The shared lock is held until the guest answered (hull-vmm reads the snapshot as
        // it starts): the template is not removed meanwhile.
        self.restored_from = Some((t, in_use));
        Ok(started)
    }

    /// Boots this VM, waits for the agent, and saves the guest (agent idle) as template `t`:
    /// hull-vmm's snapshot in `<t>/vm`, named `memory` and `state` as templates are. Called
    /// under `t`'s exclusive lock.
    fn make_template(&mut self, t: &Template) -> Result<()> {
        let staging = t.staging()?;
        let made = (|| {
            let started = self.cold_start()?;
            let agent = self.process.wait_for_agent(
                &self.agent_channel(),
                started,
                self.config.boot_timeout,
                self.config.agent_call_timeout,
                self.config.agent_call_timeout,
            )?;
            let snapshot = staging.join(TEMPLATE_SNAPSHOT);
            self.api(serde_json::json!({"cmd": "pause"}))?;
            self.api_within(
                serde_json::json!({"cmd": "snapshot", "dir": snapshot}),
                SNAPSHOT_TIMEOUT,
            )?;
            for (link, target) in [("memory", "memory.bin"), ("state", "vm.json")] {
                let target = Path::new(TEMPLATE_SNAPSHOT).join(target);
                std::os::unix::fs::symlink(&target, staging.join(link))
                    .map_err(|e| HypervisorError::io(format!("link {link} in {staging:?}"), e))?;
            }
            // The guest's boot log goes with the template: VMs restored from it show it.
            if let Err(e) = std::fs::copy(self.console_log(), staging.join(template::BOOT_LOG)) {
                tracing::debug!("keep the template's boot log: {e}");
            }
            self.process.kill();
            drop(agent);
            tracing::info!(vm = %self.vm_id(), template = ?t.dir(), elapsed = ?started.elapsed(), "vm template made");
            t.commit(&staging)
        })();
        if made.is_err() {
            self.process.kill();
            let _ = std::fs::remove_dir_all(&staging);
        }
        made
    }

    /// Kills the guest restored from template `t`, which failed with `e`, and removes `t`.
    fn discard_template(&mut self, t: &Template, e: &HypervisorError) -> Result<()> {
        tracing::warn!(vm = %self.vm_id(), template = ?t.dir(), error = %e, "vm template did not restore; removing it and booting");
        self.process.kill();
        let _l = t.lock(true)?;
        t.remove();
        Ok(())
    }

    fn remove_sockets(&self) {
        for p in [self.vsock_socket(), self.api_socket()] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Sends one request to hull-vmm's API socket; returns the VM state it reports.
    fn api(&mut self, request: serde_json::Value) -> Result<String> {
        self.api_within(request, API_TIMEOUT)
    }

    /// [`Self::api`] with its own bound on the answer.
    fn api_within(&mut self, request: serde_json::Value, timeout: Duration) -> Result<String> {
        self.check_running()?;
        let cmd = request
            .get("cmd")
            .and_then(|c| c.as_str())
            .unwrap_or("?")
            .to_string();
        let path = self.api_socket();
        let what = || format!("hull-vmm api {cmd} ({})", path.display());
        let io = |e| HypervisorError::io(what(), e);
        let mut stream = UnixStream::connect(&path).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(API_TIMEOUT)).map_err(io)?;
        let mut line = request.to_string();
        line.push('\n');
        stream.write_all(line.as_bytes()).map_err(io)?;
        let mut answer = String::new();
        BufReader::new(stream.take(4096))
            .read_line(&mut answer)
            .map_err(io)?;
        let v: serde_json::Value = serde_json::from_str(answer.trim()).map_err(|e| {
            io(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("bad answer {:?}: {e}", answer.trim()),
            ))
        })?;
        if v.get("ok").and_then(|o| o.as_bool()) == Some(true) {
            let state = v
                .get("state")
                .and_then(|s| s.as_str())
                .unwrap_or("unknown")
                .to_string();
            tracing::debug!(vm = %self.vm_id(), %cmd, %state, "hull-vmm api");
            Ok(state)
        } else {
            let msg = v
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("refused without a reason");
            Err(io(std::io::Error::other(msg.to_string())))
        }
    }
}

impl Hypervisor for BuiltinHypervisor {
    fn backend(&self) -> Backend {
        Backend::Builtin
    }

    fn boot(&mut self) -> Result<BootedVm> {
        if self.process.started() {
            return Err(HypervisorError::Config("vm is already booted".into()));
        }
        // First: without hardware KVM a Linux guest never comes up; say so instead of waiting.
        if self.require_hardware_kvm && !detect::kvm_hardware_backed_cached() {
            tracing::warn!(vm = %self.vm_id(), "builtin backend chosen without hardware KVM");
            return Err(no_hardware_kvm());
        }
        self.validate()?;
        let started = match (self.config.restore_from.clone(), self.template_root()) {
            (Some(dir), _) => {
                self.start = Start::Restore(dir);
                self.spawn()?
            }
            (None, Some(root)) => self.start_from_template(&root)?,
            (None, None) => self.cold_start()?,
        };
        Ok(BootedVm {
            channel: self.agent_channel(),
            started,
        })
    }

    /// A guest restored from a template that does not answer within [`RESTORE_BOUND`] (or
    /// dies first) is killed and the kernel boots instead; a template whose guest died is
    /// removed.
    fn wait_for_agent(&mut self, vm: &BootedVm) -> Result<AgentClient> {
        // Each hybrid vsock connection is a guest connection of its own: an attempt may take
        // as long as a call.
        let (boot_timeout, call_timeout) =
            (self.config.boot_timeout, self.config.agent_call_timeout);
        let waited = match self.restored_from.take() {
            // A guest restored from a checkpoint: its agent runs already, and a first
            // `Check` lost on the way is asked again after RESTORED_CHECK, as for a template.
            None if self.config.restore_from.is_some() => self.process.wait_for_agent(
                &vm.channel,
                vm.started,
                boot_timeout,
                call_timeout,
                RESTORED_CHECK.min(call_timeout),
            ),
            None => self.process.wait_for_agent(
                &vm.channel,
                vm.started,
                boot_timeout,
                call_timeout,
                call_timeout,
            ),
            Some((t, in_use)) => {
                let restored = self.process.wait_for_agent(
                    &vm.channel,
                    vm.started,
                    boot_timeout.min(RESTORE_BOUND),
                    call_timeout,
                    RESTORED_CHECK.min(call_timeout),
                );
                match restored {
                    Ok(agent) => {
                        tracing::info!(vm = %self.vm_id(), template = ?t.dir(), boot_time = ?vm.started.elapsed(), "vm restored from its template");
                        Ok(agent)
                    }
                    Err(e) => {
                        drop(in_use);
                        if matches!(e, HypervisorError::ExitedDuringBoot { .. }) {
                            self.discard_template(&t, &e)?;
                        } else {
                            tracing::warn!(vm = %self.vm_id(), template = ?t.dir(), error = %e, "vm restored from its template did not answer; booting instead");
                            self.process.kill();
                        }
                        let started = self.cold_start()?;
                        self.process.wait_for_agent(
                            &vm.channel,
                            started,
                            boot_timeout,
                            call_timeout,
                            call_timeout,
                        )
                    }
                }
            }
        };
        if waited.is_err() {
            self.remove_sockets();
        }
        waited
    }

    /// hull-vmm has no clean stop but the guest's power-off: a guest powering off is waited
    /// for (bounded), then hull-vmm is killed.
    fn stop(&mut self, guest_powering_off: bool) -> Result<()> {
        if guest_powering_off
            && self.process.check_running().is_ok()
            && self.process.wait_exit(POWER_OFF_GRACE).is_none()
        {
            tracing::debug!(vm = %self.vm_id(), "guest did not power off in time; killing hull-vmm");
        }
        self.process.stop();
        self.remove_sockets();
        Ok(())
    }

    fn pause(&mut self) -> Result<()> {
        self.api(serde_json::json!({"cmd": "pause"})).map(|_| ())
    }

    fn resume(&mut self) -> Result<()> {
        self.api(serde_json::json!({"cmd": "resume"})).map(|_| ())
    }

    /// hull-vmm snapshots a paused VM only: a running one is paused for it and resumed after.
    fn snapshot(&mut self, dir: &Path) -> Result<()> {
        self.check_running()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| HypervisorError::io(format!("create {dir:?}"), e))?;
        // hull-vmm's working directory is not ours to rely on.
        let dir = std::path::absolute(dir)
            .map_err(|e| HypervisorError::io(format!("resolve {dir:?}"), e))?;
        let was_running = self.api(serde_json::json!({"cmd": "status"}))? == "running";
        if was_running {
            self.api(serde_json::json!({"cmd": "pause"}))?;
        }
        let saved = self.api_within(
            serde_json::json!({"cmd": "snapshot", "dir": dir}),
            SNAPSHOT_TIMEOUT,
        );
        if was_running {
            self.api(serde_json::json!({"cmd": "resume"}))?;
        }
        saved.map(|_| ())
    }

    /// The slot's virtio-blk device takes the disk (hull-vmm's `attach-disk`) and raises a
    /// configuration change; the guest sees the new capacity.
    fn attach_disk(&mut self, slot: usize, disk: &Disk) -> Result<()> {
        if slot >= self.config.disk_slots {
            return Err(HypervisorError::Config(format!(
                "no disk slot {slot} (the vm has {})",
                self.config.disk_slots
            )));
        }
        // hull-vmm's working directory is not ours to rely on.
        let path = std::path::absolute(&disk.path)
            .map_err(|e| HypervisorError::io(format!("resolve {:?}", disk.path), e))?;
        self.api(serde_json::json!({
            "cmd": "attach-disk", "slot": slot, "path": path, "read_only": disk.read_only,
        }))?;
        tracing::info!(vm = %self.vm_id(), slot, path = ?disk.path, "disk attached to a running vm");
        Ok(())
    }

    fn detach_disk(&mut self, slot: usize) -> Result<()> {
        self.api(serde_json::json!({"cmd": "detach-disk", "slot": slot}))
            .map(|_| ())
    }

    fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    fn ended_by_itself(&mut self, bound: Duration) -> Option<HypervisorError> {
        self.process.ended_by_itself(bound)
    }

    fn console_log(&self) -> PathBuf {
        self.config.state_dir.join("console.log")
    }

    fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

impl Drop for BuiltinHypervisor {
    fn drop(&mut self) {
        self.process.kill();
        self.remove_sockets();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    use hull_protocols::health as hpb;
    use hull_protocols::health_ttrpc::{create_health, Health};
    use hull_protocols::ttrpc;

    use std::time::Instant;

    use super::*;
    use crate::{select, BackendChoice, Share};

    /// Boots and waits for the agent, as a pod does.
    fn boot_to_agent(h: &mut BuiltinHypervisor) -> Result<AgentClient> {
        let vm = h.boot()?;
        h.wait_for_agent(&vm)
    }

    fn cfg(state_dir: impl Into<PathBuf>) -> VmConfig {
        let mut c = VmConfig::new("/k", "/i", state_dir);
        c.memory_mib = 512;
        c.vcpus = 2;
        c
    }

    /// A scratch directory removed on drop.
    fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("hull-builtin-")
            .tempdir_in("/tmp")
            .unwrap()
    }

    /// A config whose kernel and initrd exist (empty files), state in `dir/vm1`.
    fn bootable_cfg(dir: &Path) -> VmConfig {
        for f in ["vmlinux", "initrd.cpio"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let mut c = VmConfig::new(
            dir.join("vmlinux"),
            dir.join("initrd.cpio"),
            dir.join("vm1"),
        );
        c.boot_timeout = Duration::from_secs(20);
        c
    }

    /// A stand-in hull-vmm: a shell script that records its pid in `dir/vmm.pid`, then `body`.
    fn stand_in(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("fake-hull-vmm");
        let pidfile = dir.join("vmm.pid");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho $$ > {}.tmp\nmv {0}.tmp {0}\n{body}\n",
                pidfile.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn wait_for_file(p: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(s) = std::fs::read_to_string(p) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{p:?} never appeared");
    }

    fn process_gone(pid: &str) -> bool {
        !Path::new("/proc").join(pid.trim()).exists()
    }

    fn hypervisor_for_test(config: VmConfig, vmm: PathBuf) -> BuiltinHypervisor {
        let mut h = BuiltinHypervisor::new(config);
        h.vmm_binary = Some(vmm);
        h.require_hardware_kvm = false;
        h
    }

    #[test]
    fn slots_are_empty_disk_slots_unless_filled_and_a_restore_names_its_snapshot() {
        let mut c = cfg("/run/hull/vm1");
        c.disk_slots = 3;
        c.filled_slots = vec![(
            1,
            Disk {
                path: "/p/c1.img".into(),
                read_only: true,
                shared: false,
            },
        )];
        let mut h = BuiltinHypervisor::new(c);
        let a = h.command_args().join(" ");
        assert!(
            a.contains(
                "--disk-slot hull-slot-0 --disk-slot hull-slot-1,file=/p/c1.img,ro \
                 --disk-slot hull-slot-2"
            ),
            "{a}"
        );
        assert!(!a.contains("--restore"), "{a}");
        h.start = Start::Restore("/t/abc/vm".into());
        assert!(h.command_args().join(" ").ends_with(" --restore /t/abc/vm"));
        // A filled slot keeps the VM off templates (its guest has seen the disk).
        h.config.template_dir = Some("/t".into());
        assert_eq!(h.template_root(), None);
        h.config.filled_slots.clear();
        assert_eq!(h.template_root(), Some("/t".into()));
    }

    #[test]
    fn command_line_names_the_kernel_the_sizes_and_both_sockets() {
        let mut c = cfg("/run/hull/vm1");
        c.extra_cmdline = "loglevel=7".into();
        let h = BuiltinHypervisor::new(c);
        let args = h.command_args();
        let a = args.join(" ");
        assert!(a.starts_with("--kernel /k --initrd /i --cmdline "), "{a}");
        assert!(
            a.ends_with(
                "--memory 512 --vcpus 2 --vsock-uds /run/hull/vm1/vsock.sock \
                 --api-sock /run/hull/vm1/api.sock --id vm1"
            ),
            "{a}"
        );
        // The command line is one argument.
        let i = args.iter().position(|x| x == "--cmdline").unwrap();
        assert_eq!(args[i + 1], h.kernel_cmdline());
    }

    #[test]
    fn each_nic_is_a_net_fd_with_its_device_mac_and_hull_vmm_inherits_the_taps() {
        use std::os::fd::AsRawFd;
        let dir = tempdir();
        // Stand-in taps: files whose paths show through /proc/<hull-vmm>/fd.
        let taps: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("tap{i}"))).collect();
        let mut config = bootable_cfg(dir.path());
        for t in &taps {
            let f = File::create(t).unwrap();
            config.nics.push(crate::Nic {
                tap: Arc::new(f.into()),
            });
        }
        let fds: Vec<i32> = config.nics.iter().map(|n| n.tap.as_raw_fd()).collect();
        let _not_a_nic = File::create(dir.path().join("not-a-nic")).unwrap();
        let seen = dir.path().join("seen");
        // The taps at their numbers, then every fd hull-vmm holds.
        let body = format!(
            "for fd in {} {}; do readlink /proc/$$/fd/$fd || echo none; done > {s}.tmp\n\
             ls -l /proc/$$/fd >> {s}.tmp\nmv {s}.tmp {s}\nexec sleep 1000",
            fds[0],
            fds[1],
            s = seen.display()
        );
        let vmm = stand_in(dir.path(), &body);
        let mut h = hypervisor_for_test(config, vmm);
        let a = h.command_args().join(" ");
        assert!(
            a.ends_with(&format!(
                " --net-fd {},mac=02:68:75:6c:00:00 --net-fd {},mac=02:68:75:6c:00:01",
                fds[0], fds[1]
            )),
            "{a}"
        );
        h.boot().unwrap();
        let seen = wait_for_file(&seen);
        let expected = format!("{}\n{}\n", taps[0].display(), taps[1].display());
        assert!(
            seen.starts_with(&expected),
            "hull-vmm holds the taps at their numbers: {seen}"
        );
        assert!(
            !seen.contains("not-a-nic"),
            "hull-vmm inherits no other fd of hull's: {seen}"
        );
        h.stop(false).unwrap();
    }

    #[test]
    fn each_disk_is_a_block_with_its_serial_in_order() {
        let dir = tempdir();
        let mut config = bootable_cfg(dir.path());
        for (name, read_only) in [("a.img", false), ("b.img", true)] {
            let p = dir.path().join(name);
            std::fs::write(&p, [0u8; 512]).unwrap();
            config.disks.push(crate::Disk {
                path: p,
                read_only,
                shared: false,
            });
        }
        let h = BuiltinHypervisor::new(config);
        let a = h.command_args().join(" ");
        let d = dir.path().display();
        let want =
            format!("--block {d}/a.img,serial=hull-disk-0 --block {d}/b.img,ro,serial=hull-disk-1");
        assert!(a.contains(&want), "{want} missing: {a}");
        // What hull-vmm parses back.
        let i = h
            .command_args()
            .iter()
            .position(|x| x == "--block")
            .unwrap();
        let b: hull_vmm::BlockConfig = h.command_args()[i + 1].parse().unwrap();
        assert_eq!(b.serial.as_deref(), Some("hull-disk-0"));
        assert!(!b.read_only);
        let missing = {
            let mut c = bootable_cfg(dir.path());
            c.disks.push(crate::Disk {
                path: dir.path().join("gone"),
                read_only: false,
                shared: false,
            });
            hypervisor_for_test(c, stand_in(dir.path(), "exit 1"))
                .boot()
                .unwrap_err()
                .to_string()
        };
        assert!(
            missing.contains("disk 0:") && missing.contains("gone"),
            "{missing}"
        );
        assert!(!dir.path().join("vmm.pid").exists(), "hull-vmm ran");
    }

    #[test]
    fn cmdline_tells_the_agent_to_listen_on_vsock_and_leaves_devices_to_hull_vmm() {
        let mut c = cfg("/run/hull/vm1");
        c.extra_cmdline = "loglevel=7".into();
        let line = BuiltinHypervisor::new(c).kernel_cmdline();
        assert!(line.contains("HULL_AGENT_LISTEN=vsock://1024"), "{line}");
        for w in [
            "console=ttyS0",
            "pci=off",
            "panic=-1",
            "reboot=k",
            "rdinit=/init",
        ] {
            assert!(line.split(' ').any(|x| x == w), "{w} missing: {line}");
        }
        assert!(line.ends_with(" loglevel=7"), "{line}");
        assert!(
            !line.contains("virtio_mmio"),
            "hull-vmm appends its devices: {line}"
        );
        assert!(
            !line.contains(" -- "),
            "hull-vmm appends after the cmdline: {line}"
        );
    }

    #[test]
    fn agent_channel_is_the_hybrid_vsock_socket_on_the_agent_port() {
        let h = BuiltinHypervisor::new(cfg("/run/hull/vm1"));
        assert_eq!(
            h.agent_channel(),
            AgentChannel::VsockUds {
                path: "/run/hull/vm1/vsock.sock".into(),
                port: 1024
            }
        );
        assert_eq!(h.console_log(), Path::new("/run/hull/vm1/console.log"));
        assert_eq!(h.backend(), Backend::Builtin);
    }

    #[test]
    fn select_builtin_gives_this_backend() {
        let h = select(BackendChoice::Builtin, cfg("/run/hull/vm1")).unwrap();
        assert_eq!(h.backend(), Backend::Builtin);
        assert!(h.pid().is_none());
        let caps = h.capabilities();
        assert!(caps.stops_by_guest_power_off && caps.snapshot && caps.shared_fs.is_empty());
    }

    #[test]
    fn without_hardware_kvm_boot_is_one_clear_error_and_leaves_nothing() {
        if detect::kvm_hardware_backed_cached() {
            eprintln!("skipped: this host has hardware KVM");
            return;
        }
        let dir = tempdir();
        let config = bootable_cfg(dir.path());
        let state = config.state_dir.clone();
        let mut h = select(BackendChoice::Builtin, config).unwrap();
        let t = Instant::now();
        let e = h.boot().unwrap_err().to_string();
        assert!(
            t.elapsed() < detect::KVM_PROBE_TIMEOUT * 3,
            "{:?}",
            t.elapsed()
        );
        assert!(!e.contains('\n'), "one line: {e}");
        for w in [
            "builtin backend",
            "hardware virtualization",
            "hull check",
            "\"qemu\"",
        ] {
            assert!(e.contains(w), "{w:?} missing: {e}");
        }
        assert!(h.pid().is_none());
        assert!(h.check_running().is_err());
        // Nothing was started or created: no state dir, so no socket, log or process.
        assert!(!state.exists(), "{state:?} was created");
        // And again, as fast (the probe is cached).
        let t = Instant::now();
        assert_eq!(h.boot().unwrap_err().to_string(), e);
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn auto_resolves_as_hull_check_reports() {
        let report = detect::HostReport::probe();
        let mut sharing = cfg("/run/hull/vm1");
        sharing.shares.push(Share {
            host_dir: "/srv/rootfs".into(),
            tag: "hullshare".into(),
        });
        for config in [cfg("/run/hull/vm1"), sharing] {
            let needs = config.needs();
            let pick = detect::pick_backend(&needs, || report.kvm_hardware.ok, || report.qemu.ok);
            match select(BackendChoice::Auto, config) {
                Ok(h) => assert_eq!(
                    Some(h.backend()),
                    pick.backend,
                    "hull check picks {:?} ({}) for {needs:?}",
                    pick.backend,
                    pick.reason
                ),
                Err(e) => {
                    assert_eq!(pick.backend, None, "{e}");
                    assert!(e.to_string().contains("cannot run here"), "{e}");
                }
            }
            if report.qemu.ok && (!report.kvm_hardware.ok || needs.shared_fs.is_some()) {
                assert_eq!(pick.backend, Some(Backend::Qemu), "{needs:?}");
            }
        }
    }

    #[test]
    fn shares_and_bad_sizes_are_refused_with_the_reason() {
        let dir = tempdir();
        let mut c = bootable_cfg(dir.path());
        c.shares.push(Share {
            host_dir: dir.path().into(),
            tag: "rootfs".into(),
        });
        let vmm = stand_in(dir.path(), "exit 1");
        let mut h = hypervisor_for_test(c.clone(), vmm.clone());
        let e = h.boot().unwrap_err().to_string();
        assert!(e.contains("no shared filesystem (virtio-9p)"), "{e}");
        assert!(e.contains("use hypervisor = \"qemu\""), "{e}");
        c.shares.clear();
        c.vcpus = 300;
        let e = hypervisor_for_test(c, vmm).boot().unwrap_err().to_string();
        assert!(e.contains("1 to 255 vCPUs"), "{e}");
        // hull-vmm fixes its virtio-mmio devices at boot: NICs and disks then, never hot;
        // disks go into the empty slots made at boot while the VM runs.
        let caps = h.capabilities();
        assert!(!caps.vfio.cold && !caps.vfio.hot, "{caps:?}");
        assert!(caps.nic.cold && !caps.nic.hot, "{caps:?}");
        assert!(caps.block.cold && caps.block.hot, "{caps:?}");
        assert!(!dir.path().join("vmm.pid").exists(), "hull-vmm ran");
    }

    #[test]
    fn a_vmm_that_exits_fails_boot_at_once_with_its_last_stderr_line() {
        let dir = tempdir();
        let vmm = stand_in(
            dir.path(),
            "echo 'starting' >&2\necho 'hull-vmm: cannot open /dev/kvm: Permission denied' >&2\nexit 1",
        );
        let mut h = hypervisor_for_test(bootable_cfg(dir.path()), vmm);
        let t = Instant::now();
        let e = boot_to_agent(&mut h).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(matches!(e, HypervisorError::ExitedDuringBoot { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("exit status: 1"), "{e}");
        assert!(
            e.contains("hull-vmm: cannot open /dev/kvm: Permission denied; console log"),
            "{e}"
        );
        assert!(h.pid().is_none());
        assert!(!h.vsock_socket().exists() && !h.api_socket().exists());
    }

    #[test]
    fn a_guest_that_never_answers_times_out_and_hull_vmm_is_killed() {
        let dir = tempdir();
        // Listens like hull-vmm would, but no guest ever answers the handshake.
        let vmm = stand_in(dir.path(), "exec sleep 1000");
        let mut config = bootable_cfg(dir.path());
        config.boot_timeout = Duration::from_millis(600);
        let mut h = hypervisor_for_test(config, vmm);
        let vsock = h.vsock_socket();
        let pidfile = dir.path().join("vmm.pid");
        let holder = std::thread::spawn(move || {
            wait_for_file(&pidfile);
            let listener = UnixListener::bind(&vsock).unwrap();
            // Accept and hold every connection without answering.
            listener.set_nonblocking(true).unwrap();
            let mut held = Vec::new();
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                if let Ok((s, _)) = listener.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let t = Instant::now();
        let e = boot_to_agent(&mut h).unwrap_err();
        assert!(matches!(e, HypervisorError::BootTimeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let pid = std::fs::read_to_string(dir.path().join("vmm.pid")).unwrap();
        assert!(process_gone(&pid), "hull-vmm {pid} still runs");
        assert!(h.pid().is_none());
        assert!(!h.vsock_socket().exists() && !h.api_socket().exists());
        holder.join().unwrap();
    }

    struct Serving;
    impl Health for Serving {
        fn check(
            &self,
            _ctx: &ttrpc::TtrpcContext,
            _req: hpb::CheckRequest,
        ) -> ttrpc::Result<hpb::HealthCheckResponse> {
            let mut r = hpb::HealthCheckResponse::new();
            r.status = hpb::health_check_response::ServingStatus::SERVING.into();
            Ok(r)
        }
    }

    /// Plays hull-vmm's sockets: the hybrid vsock socket, whose streams to port 1024 are
    /// proxied to a ttrpc server with the Health service, and the API socket, whose requests
    /// it records and answers like hull-vmm.
    fn play_hull_vmm(
        dir: &Path,
        vsock: PathBuf,
        api: PathBuf,
        requests: Arc<Mutex<VecDeque<String>>>,
    ) -> ttrpc::Server {
        let agent_sock = dir.join("agent.sock");
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", agent_sock.display()))
            .unwrap()
            .register_service(create_health(Arc::new(Serving)));
        server.start().unwrap();
        let pidfile = dir.join("vmm.pid");
        std::thread::spawn(move || {
            // boot() clears stale sockets before it starts hull-vmm: bind once it runs.
            wait_for_file(&pidfile);
            let vsock = UnixListener::bind(&vsock).unwrap();
            let api = UnixListener::bind(&api).unwrap();
            std::thread::spawn(move || {
                let mut paused = false;
                for s in api.incoming() {
                    let Ok(s) = s else { return };
                    let mut line = String::new();
                    BufReader::new(&s).read_line(&mut line).unwrap();
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let cmd = v["cmd"].as_str().unwrap().to_string();
                    let answer = match cmd.as_str() {
                        "pause" => {
                            paused = true;
                            r#"{"ok":true,"state":"paused"}"#
                        }
                        "resume" => {
                            paused = false;
                            r#"{"ok":true,"state":"running"}"#
                        }
                        "status" if paused => r#"{"ok":true,"state":"paused"}"#,
                        "status" => r#"{"ok":true,"state":"running"}"#,
                        "snapshot" if paused => r#"{"ok":true,"state":"paused"}"#,
                        "attach-disk" | "detach-disk" if v["slot"].as_u64() < Some(2) => {
                            r#"{"ok":true,"state":"running"}"#
                        }
                        "attach-disk" | "detach-disk" => {
                            r#"{"ok":false,"error":"invalid configuration: no disk slot 7"}"#
                        }
                        _ => r#"{"ok":false,"error":"snapshot needs a paused VM"}"#,
                    };
                    requests.lock().unwrap().push_back(line.trim().to_string());
                    (&s).write_all(format!("{answer}\n").as_bytes()).unwrap();
                }
            });
            for s in vsock.incoming() {
                let Ok(s) = s else { return };
                let agent_sock = agent_sock.clone();
                std::thread::spawn(move || {
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while (&s).read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                        line.push(b[0]);
                    }
                    if line != b"CONNECT 1024" {
                        return;
                    }
                    let agent = UnixStream::connect(&agent_sock).unwrap();
                    (&s).write_all(b"OK 1073741824\n").unwrap();
                    let (s2, agent2) = (s.try_clone().unwrap(), agent.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut &s2, &mut &agent2);
                        let _ = agent2.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut &agent, &mut &s);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        server
    }

    #[test]
    fn boot_reaches_the_agent_over_the_handshake_then_pause_snapshot_stop() {
        let dir = tempdir();
        let vmm = stand_in(dir.path(), "exec sleep 1000");
        let mut config = bootable_cfg(dir.path());
        config.disk_slots = 2;
        let mut h = hypervisor_for_test(config, vmm);
        let requests = Arc::new(Mutex::new(VecDeque::new()));
        let server = play_hull_vmm(
            dir.path(),
            h.vsock_socket(),
            h.api_socket(),
            requests.clone(),
        );

        let vm = h.boot().unwrap();
        assert_eq!(vm.channel, h.agent_channel());
        let agent = h.wait_for_agent(&vm).unwrap();
        assert!(agent.check().unwrap(), "the returned client works");
        assert!(vm.started.elapsed() < Duration::from_secs(10));
        let pid = h.pid().expect("hull-vmm runs");
        assert_eq!(
            wait_for_file(&dir.path().join("vmm.pid")).trim(),
            pid.to_string()
        );
        h.check_running().unwrap();

        h.pause().unwrap();
        h.resume().unwrap();
        let snap = dir.path().join("snap");
        h.snapshot(&snap).unwrap();
        assert!(snap.is_dir());
        let seen: Vec<String> = requests.lock().unwrap().drain(..).collect();
        assert_eq!(
            seen,
            vec![
                r#"{"cmd":"pause"}"#.to_string(),
                r#"{"cmd":"resume"}"#.into(),
                r#"{"cmd":"status"}"#.into(),
                r#"{"cmd":"pause"}"#.into(),
                format!(r#"{{"cmd":"snapshot","dir":"{}"}}"#, snap.display()),
                r#"{"cmd":"resume"}"#.into(),
            ]
        );

        // Disk slots: the image goes to hull-vmm by its absolute path; a slot the VM lacks
        // is refused here, one hull-vmm lacks there.
        let disk = Disk {
            path: "rel/c1.img".into(),
            read_only: true,
            shared: false,
        };
        h.attach_disk(1, &disk).unwrap();
        h.detach_disk(1).unwrap();
        let e = h.attach_disk(2, &disk).unwrap_err().to_string();
        assert!(e.contains("no disk slot 2 (the vm has 2)"), "{e}");
        let e = h.detach_disk(7).unwrap_err().to_string();
        assert!(e.contains("no disk slot 7"), "{e}");
        let abs = std::path::absolute("rel/c1.img").unwrap();
        let seen: Vec<serde_json::Value> = requests
            .lock()
            .unwrap()
            .drain(..)
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect();
        assert_eq!(
            seen,
            vec![
                serde_json::json!({"cmd": "attach-disk", "slot": 1, "path": abs, "read_only": true}),
                serde_json::json!({"cmd": "detach-disk", "slot": 1}),
                serde_json::json!({"cmd": "detach-disk", "slot": 7}),
            ]
        );

        // The stand-in agent has no DestroySandbox: the guest is not powering off, and stop
        // kills hull-vmm at once.
        let powering_off = agent.destroy_sandbox("vm1", true).is_ok();
        assert!(!powering_off);
        let t = Instant::now();
        h.stop(powering_off).unwrap();
        assert!(t.elapsed() < POWER_OFF_GRACE, "{:?}", t.elapsed());
        assert!(process_gone(&pid.to_string()));
        assert!(h.pid().is_none());
        let e = h.check_running().unwrap_err().to_string();
        assert!(e.contains("stopped"), "{e}");
        assert!(!h.vsock_socket().exists() && !h.api_socket().exists());
        assert!(h.pause().is_err());
        h.stop(false).unwrap();
        server.shutdown();
    }

    #[test]
    fn stop_after_a_power_off_waits_for_hull_vmm_to_end_then_kills_it() {
        // A guest that powers off: hull-vmm exits by itself, and stop returns as it does.
        let dir = tempdir();
        let vmm = stand_in(dir.path(), "sleep 0.5\nexit 0");
        let mut h = hypervisor_for_test(bootable_cfg(dir.path()), vmm);
        h.boot().unwrap();
        let t = Instant::now();
        h.stop(true).unwrap();
        assert!(t.elapsed() < POWER_OFF_GRACE, "{:?}", t.elapsed());
        assert!(h
            .check_running()
            .unwrap_err()
            .to_string()
            .contains("stopped"));

        // A guest that does not: hull-vmm is killed after the grace.
        let dir = tempdir();
        let vmm = stand_in(dir.path(), "exec sleep 1000");
        let mut h = hypervisor_for_test(bootable_cfg(dir.path()), vmm);
        h.boot().unwrap();
        let pid = wait_for_file(&dir.path().join("vmm.pid"));
        let t = Instant::now();
        h.stop(true).unwrap();
        assert!(
            t.elapsed() >= POWER_OFF_GRACE && t.elapsed() < POWER_OFF_GRACE * 2,
            "{:?}",
            t.elapsed()
        );
        assert!(process_gone(&pid), "hull-vmm {pid} still runs");
        assert!(h.pid().is_none());
    }
}
