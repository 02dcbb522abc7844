//! The `qemu` backend: QEMU's `microvm` machine, KVM where this host has hardware
//! virtualization and TCG elsewhere, controlled over QMP, the agent on a virtio-serial port.

mod qmp;
pub mod template;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{HypervisorError, Result};
use crate::vmm_process::{self, OwnedChild};
use crate::{Accel, BootedVm, DeviceConfig, Hypervisor, VmConfig};
use hull_agent_client::{AgentChannel, AgentClient, AgentClientError};
use template::Template;

/// The QEMU binary (overridable with `HULL_QEMU`).
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The QEMU binary to run: `HULL_QEMU`, else [`QEMU_BINARY`] on PATH.
fn qemu_binary() -> String {
    std::env::var("HULL_QEMU").unwrap_or_else(|_| QEMU_BINARY.to_string())
}

/// QMP arguments that make migration skip RAM in shared, file-backed memory: a template's RAM
/// stays in its file; the migration stream holds only device state.
fn ignore_shared_ram() -> serde_json::Value {
    serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
}

/// How long `stop` waits for QEMU to quit before killing it.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// Timeout of one QMP command.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// The guest's view of the agent port: the first virtio-serial device, port 1.
const GUEST_AGENT_PORT: &str = "/dev/vport0p1";
/// The agent's virtio-serial device. Port 0 is reserved for a console, so 2 ports are the
/// fewest that carry the agent's; QEMU's default of 31 has the guest set up 64 virtqueues at
/// boot (~10 ms under TCG) for ports nobody opens.
const AGENT_SERIAL_DEVICE: &str = "virtio-serial-device,max_ports=2";
/// How long saving a template's device state may take.
const SAVE_TIMEOUT: Duration = Duration::from_secs(30);

/// How this QEMU gets its guest running.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// Boots the kernel.
    Boot,
    /// Boots the kernel with its RAM in `memory`, shared, so that the booted guest can be
    /// saved as a template.
    BootForTemplate { memory: PathBuf },
    /// Restores a template: its RAM mapped privately (copy-on-write), its device state loaded
    /// by incoming migration.
    Restore { memory: PathBuf, state: PathBuf },
}

/// Whether the guest's vCPUs run, as QMP `query-status` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRunState {
    /// vCPUs are running.
    pub running: bool,
    /// QEMU's run state (`running`, `paused`, ...).
    pub status: String,
}

/// A QEMU process owned by this handle: it never outlives the handle (killed on drop, and
/// `PR_SET_PDEATHSIG` kills it if this process dies first).
#[derive(Debug)]
pub struct QemuHypervisor {
    config: VmConfig,
    start: Start,
    child: Option<OwnedChild>,
    exit: Option<ExitStatus>,
    stopped: bool,
}

impl QemuHypervisor {
    /// A handle for the VM described by `config`; nothing runs until [`Hypervisor::boot`].
    pub fn new(config: VmConfig) -> Self {
        QemuHypervisor {
            config,
            start: Start::Boot,
            child: None,
            exit: None,
            stopped: false,
        }
    }

    /// The QMP control socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.config.state_dir.join("qmp.sock")
    }

    fn agent_socket(&self) -> PathBuf {
        self.config.state_dir.join("agent.sock")
    }

    /// QEMU's own stderr (why it refused to start).
    pub fn qemu_log(&self) -> PathBuf {
        self.config.state_dir.join("qemu.log")
    }

    /// The QEMU process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.child.id())
    }

    /// The guest's run state (QMP `query-status`).
    pub fn query_status(&mut self) -> Result<VmRunState> {
        let v = self.qmp("query-status", None)?;
        Ok(VmRunState {
            running: v.get("running").and_then(|r| r.as_bool()).unwrap_or(false),
            status: v
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or("unknown")
                .to_string(),
        })
    }

    fn qmp(&mut self, command: &str, args: Option<serde_json::Value>) -> Result<serde_json::Value> {
        self.check_running()?;
        qmp::execute(&self.qmp_socket(), command, args, QMP_TIMEOUT)
    }

    /// The accelerator to use: `Auto` probes the host once per process.
    fn accel(&self) -> &'static str {
        match self.config.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Auto => {
                if crate::detect::kvm_hardware_backed_cached() {
                    "kvm"
                } else {
                    "tcg"
                }
            }
        }
    }

    /// The kernel command line (QEMU appends `virtio_mmio.device=...` to it).
    pub fn kernel_cmdline(&self) -> String {
        crate::guest_cmdline(
            "t",
            &format!("serial:{GUEST_AGENT_PORT}"),
            host_tsc_khz(),
            &self.config.extra_cmdline,
        )
    }

    /// The full QEMU command line.
    pub fn command_args(&self) -> Vec<String> {
        let cfg = &self.config;
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut a: Vec<String> = vec![
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            // acpi=off: QEMU then lists the virtio-mmio devices on the kernel command line.
            "-M".into(),
            format!(
                "microvm{}{}",
                if cfg.acpi { "" } else { ",acpi=off" },
                if self.start == Start::Boot {
                    ""
                } else {
                    ",memory-backend=mem"
                }
            ),
            "-accel".into(),
            // TCG's translation buffer defaults to 1 GiB of host memory per VM; 64 MiB holds
            // what a pod's guest runs.
            match self.accel() {
                "tcg" => "tcg,tb-size=64".to_string(),
                a => a.to_string(),
            },
            "-m".into(),
            format!("{}M", cfg.memory_mib),
            "-smp".into(),
            cfg.vcpus.to_string(),
            "-kernel".into(),
            s(&cfg.kernel),
            "-initrd".into(),
            s(&cfg.initrd),
            "-append".into(),
            self.kernel_cmdline(),
            "-serial".into(),
            format!("file:{}", s(&self.console_log())),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", s(&self.qmp_socket())),
            "-device".into(),
            AGENT_SERIAL_DEVICE.into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                s(&self.agent_socket())
            ),
            "-device".into(),
            "virtserialport,chardev=agent,name=agent.0".into(),
        ];
        for (i, share) in cfg.shares.iter().enumerate() {
            a.push("-fsdev".into());
            a.push(format!(
                "local,id=fs{i},path={},security_model=none",
                s(&share.host_dir)
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-9p-device,fsdev=fs{i},mount_tag={}",
                share.tag
            ));
        }
        let memory_file = |path: &Path, shared: bool| {
            format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share={}",
                cfg.memory_mib,
                s(path),
                if shared { "on" } else { "off" }
            )
        };
        match &self.start {
            Start::Boot => {}
            Start::BootForTemplate { memory } => {
                a.extend(["-object".into(), memory_file(memory, true)]);
            }
            Start::Restore { memory, .. } => {
                a.extend(["-object".into(), memory_file(memory, false)]);
                a.extend(["-incoming".into(), "defer".into()]);
            }
        }
        a
    }

    /// What makes a guest of this config interchangeable with another: the key of its
    /// template.
    fn template_key(&self) -> Result<String> {
        let cfg = &self.config;
        let binary = qemu_binary();
        let qemu = if binary.contains('/') {
            Some(PathBuf::from(&binary))
        } else {
            crate::detect::find_in_path(&binary, &std::env::var_os("PATH").unwrap_or_default())
        };
        let qemu = qemu.ok_or_else(|| HypervisorError::Spawn {
            binary: binary.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let mut facts = vec![
            cfg.memory_mib.to_string(),
            cfg.vcpus.to_string(),
            self.accel().to_string(),
            cfg.acpi.to_string(),
            self.kernel_cmdline(),
            AGENT_SERIAL_DEVICE.into(),
        ];
        facts.extend(cfg.shares.iter().map(|s| format!("9p:{}", s.tag)));
        template::key(
            &[
                ("qemu", &qemu),
                ("kernel", &cfg.kernel),
                ("initrd", &cfg.initrd),
            ],
            &facts,
        )
    }

    /// Boots the kernel (no template).
    fn cold_boot(&mut self) -> Result<BootedVm> {
        self.start = Start::Boot;
        let started = self.spawn()?;
        self.wait_for_agent(started)
    }

    /// Boots through a template under `root`: restores it, after making it first when this
    /// configuration has none. A template QEMU cannot restore is removed and the VM boots.
    fn boot_from_template(&mut self, root: &Path) -> Result<BootedVm> {
        let t = Template::new(root, self.template_key()?);
        let in_use = {
            let made = t.lock(true)?;
            if !t.ready() {
                self.make_template(&t)?;
            }
            // Hold a shared lock while QEMU reads the state (no eviction meanwhile).
            drop(made);
            t.lock(false)?
        };
        t.touch();
        self.start = Start::Restore {
            memory: t.memory(),
            state: t.state(),
        };
        let restored = self.spawn().and_then(|started| {
            self.restore_state(&t)?;
            self.wait_for_agent(started)
        });
        drop(in_use);
        match restored {
            Ok(vm) => {
                tracing::info!(template = ?t.dir(), boot_time = ?vm.boot_time, "vm restored from its template");
                Ok(vm)
            }
            Err(e @ (HypervisorError::ExitedDuringBoot { .. } | HypervisorError::Qmp { .. })) => {
                tracing::warn!(template = ?t.dir(), error = %e, "vm template did not restore; removing it and booting");
                self.kill();
                {
                    let _l = t.lock(true)?;
                    t.remove();
                }
                self.cold_boot()
            }
            Err(e) => Err(e),
        }
    }

    /// Boots this VM with its RAM in a file, waits for the agent, and saves the guest (agent
    /// idle, its connection open) as template `t`. Called under `t`'s exclusive lock.
    fn make_template(&mut self, t: &Template) -> Result<()> {
        let staging = t.staging()?;
        let made = (|| {
            self.start = Start::BootForTemplate {
                memory: staging.join("memory"),
            };
            let started = self.spawn()?;
            let booted = self.wait_for_agent(started)?;
            self.save_state(&staging.join("state"))?;
            // QEMU goes with the connection still open: restored guests find their agent
            // reading it, and the host's new connection continues the stream.
            self.kill();
            drop(booted);
            tracing::info!(template = ?t.dir(), elapsed = ?started.elapsed(), "vm template made");
            t.commit(&staging)
        })();
        if made.is_err() {
            self.kill();
            let _ = std::fs::remove_dir_all(&staging);
        }
        made
    }

    /// Pauses the guest and saves QEMU's device state (not the RAM: it is in the shared
    /// memory file) to `path`.
    fn save_state(&mut self, path: &Path) -> Result<()> {
        self.qmp("stop", None)?;
        self.qmp("migrate-set-capabilities", Some(ignore_shared_ram()))?;
        let uri = format!("exec:cat > {}", template::shell_quote(path)?);
        self.qmp("migrate", Some(serde_json::json!({ "uri": uri })))?;
        self.await_migration("migrate", "saving the template")
    }

    /// Loads template `t`'s device state into the QEMU started with `-incoming defer`; the
    /// guest runs as soon as it is loaded.
    fn restore_state(&mut self, t: &Template) -> Result<()> {
        self.qmp("migrate-set-capabilities", Some(ignore_shared_ram()))?;
        let uri = format!("exec:cat {}", template::shell_quote(&t.state())?);
        self.qmp("migrate-incoming", Some(serde_json::json!({ "uri": uri })))?;
        // The template was saved paused, so the restored guest stays paused until `cont`.
        self.await_migration("migrate-incoming", "loading the template")?;
        self.qmp("cont", None)?;
        Ok(())
    }

    /// Polls `query-migrate` until the migration completed; an error when it failed, was
    /// cancelled or took over [`SAVE_TIMEOUT`].
    fn await_migration(&mut self, command: &str, what: &str) -> Result<()> {
        let deadline = Instant::now() + SAVE_TIMEOUT;
        loop {
            let v = self.qmp("query-migrate", None)?;
            match v.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => return Ok(()),
                st @ ("failed" | "cancelled") => {
                    return Err(HypervisorError::Qmp {
                        command: command.into(),
                        message: format!(
                            "{what} {st}: {}",
                            v.get("error-desc").and_then(|e| e.as_str()).unwrap_or("")
                        ),
                    })
                }
                _ if Instant::now() >= deadline => {
                    return Err(HypervisorError::Qmp {
                        command: command.into(),
                        message: format!("{what} took over {SAVE_TIMEOUT:?}"),
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Starts QEMU (as `self.start` says) with fresh sockets and logs; returns when it did.
    fn spawn(&mut self) -> Result<Instant> {
        let dir = &self.config.state_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| HypervisorError::io(format!("create {dir:?}"), e))?;
        self.remove_sockets();
        let log = File::create(self.qemu_log())
            .map_err(|e| HypervisorError::io(format!("create {:?}", self.qemu_log()), e))?;
        let _ = std::fs::remove_file(self.console_log());

        let binary = qemu_binary();
        let mut cmd = Command::new(&binary);
        cmd.args(self.command_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        tracing::debug!(?cmd, "starting qemu");
        let started = Instant::now();
        let child = OwnedChild::spawn(cmd, "qemu").map_err(|source| HypervisorError::Spawn {
            binary: binary.clone(),
            source,
        })?;
        let pid = child.child.id();
        self.child = Some(child);
        self.exit = None;
        self.stopped = false;
        tracing::info!(
            pid,
            accel = self.accel(),
            "qemu started; waiting for the guest agent"
        );
        Ok(started)
    }

    /// Waits, within the boot timeout, for the agent's first answer; kills QEMU on a failure.
    fn wait_for_agent(&mut self, started: Instant) -> Result<BootedVm> {
        let pid = self.pid().unwrap_or_default();
        // The agent's first answer arrives over the virtio-serial socket; QEMU's exit or the
        // deadline end the wait. On a timeout QEMU is killed, which also ends the pending call.
        let (tx, rx) = mpsc::channel();
        let socket = self.agent_socket();
        let call_timeout = self.config.agent_call_timeout;
        let boot_timeout = self.config.boot_timeout;
        std::thread::Builder::new()
            .name("agent-boot-check".into())
            .spawn(move || {
                // A call that times out while the guest is still booting is retried on a
                // fresh connection; the host kills QEMU at the boot deadline in any case.
                let deadline = started + boot_timeout;
                let r = loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let r = AgentClient::connect_unix(&socket, left, call_timeout)
                        .and_then(|c| c.check().map(|serving| (c, serving)));
                    match r {
                        Err(AgentClientError::Timeout { .. }) if Instant::now() < deadline => {}
                        r => break r,
                    }
                };
                let _ = tx.send(r);
            })
            .map_err(|e| HypervisorError::io("spawn agent-boot-check thread", e))?;
        let deadline = started + boot_timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok((agent, true))) => {
                    let boot_time = started.elapsed();
                    tracing::info!(pid, ?boot_time, "guest agent is serving");
                    return Ok(BootedVm { agent, boot_time });
                }
                Ok(Ok((_, false))) => {
                    self.kill();
                    return Err(HypervisorError::ExitedDuringBoot {
                        status: "killed".into(),
                        reason: "guest agent answered Check with NOT_SERVING".into(),
                        console_log: self.console_log(),
                    });
                }
                Ok(Err(e)) => {
                    // The connection broke: QEMU most likely exited; find out below.
                    tracing::debug!(error = %e, "agent check failed during boot");
                    let _ = self.wait_exit_for(Duration::from_millis(500));
                    if let Some(status) = self.exit {
                        self.child = None;
                        return Err(HypervisorError::ExitedDuringBoot {
                            status: status.to_string(),
                            reason: self.boot_failure_reason(),
                            console_log: self.console_log(),
                        });
                    }
                    self.kill();
                    return Err(HypervisorError::ExitedDuringBoot {
                        status: "killed".into(),
                        reason: format!("agent channel failed: {e}"),
                        console_log: self.console_log(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.kill();
                    return Err(HypervisorError::ExitedDuringBoot {
                        status: "killed".into(),
                        reason: "the agent check thread died".into(),
                        console_log: self.console_log(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.check_running().is_err() {
                self.child = None;
                return Err(HypervisorError::ExitedDuringBoot {
                    status: self.exit.map(|s| s.to_string()).unwrap_or_default(),
                    reason: self.boot_failure_reason(),
                    console_log: self.console_log(),
                });
            }
            if Instant::now() >= deadline {
                self.kill();
                tracing::warn!(
                    pid,
                    ?boot_timeout,
                    "guest agent did not answer; qemu killed"
                );
                return Err(HypervisorError::BootTimeout {
                    timeout: boot_timeout,
                    console_log: self.console_log(),
                });
            }
        }
    }

    fn validate(&self) -> Result<()> {
        let cfg = &self.config;
        cfg.check_guest_files()?;
        for share in &cfg.shares {
            if !share.host_dir.is_dir() {
                return Err(HypervisorError::Config(format!(
                    "share {:?}: {:?} is not a directory",
                    share.tag, share.host_dir
                )));
            }
            if share.tag.is_empty() || share.tag.contains([',', ' ', '=']) {
                return Err(HypervisorError::Config(format!(
                    "bad share tag {:?}",
                    share.tag
                )));
            }
        }
        if cfg.memory_mib < 64 || cfg.vcpus == 0 {
            return Err(HypervisorError::Config(format!(
                "need at least 64 MiB and 1 vCPU (got {} MiB, {} vCPUs)",
                cfg.memory_mib, cfg.vcpus
            )));
        }
        Ok(())
    }

    /// Kills QEMU now and records how it ended.
    fn kill(&mut self) {
        vmm_process::kill(&mut self.child, &mut self.exit);
    }

    fn boot_failure_reason(&self) -> String {
        vmm_process::boot_failure_reason(&self.qemu_log(), &self.console_log())
    }

    fn remove_sockets(&self) {
        for p in [self.qmp_socket(), self.agent_socket()] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The host's TSC frequency in kHz, from /proc/cpuinfo (saves the guest its calibration).
fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

impl Hypervisor for QemuHypervisor {
    fn backend(&self) -> &'static str {
        "qemu"
    }

    fn boot(&mut self) -> Result<BootedVm> {
        if self.child.is_some() {
            return Err(HypervisorError::Config("vm is already booted".into()));
        }
        self.validate()?;
        match self.config.template_dir.clone() {
            Some(root) => self.boot_from_template(&root),
            None => self.cold_boot(),
        }
    }

    fn stop(&mut self) -> Result<()> {
        if self.child.is_some() && self.check_running().is_ok() {
            if let Err(e) = qmp::execute(&self.qmp_socket(), "quit", None, QMP_TIMEOUT) {
                tracing::debug!(error = %e, "qmp quit failed; killing qemu");
            }
            let _ = self.wait_exit_for(QUIT_GRACE);
        }
        self.kill();
        self.stopped = true;
        self.remove_sockets();
        Ok(())
    }

    fn pause(&mut self) -> Result<()> {
        self.qmp("stop", None).map(|_| ())
    }
    fn resume(&mut self) -> Result<()> {
        self.qmp("cont", None).map(|_| ())
    }

    fn snapshot(&mut self, _dir: &Path) -> Result<()> {
        Err(HypervisorError::NotSupported {
            operation: "snapshot",
            backend: "qemu",
        })
    }

    fn add_device(&mut self, _device: &DeviceConfig) -> Result<()> {
        Err(HypervisorError::NotSupported {
            operation: "adding a device",
            backend: "qemu",
        })
    }

    fn check_running(&mut self) -> Result<()> {
        vmm_process::running_status(&mut self.child, &mut self.exit, self.stopped, "qemu").map_err(
            |status| HypervisorError::NotRunning {
                status,
                console_log: self.console_log(),
            },
        )
    }

    fn agent_channel(&self) -> AgentChannel {
        AgentChannel::SerialSocket(self.agent_socket())
    }

    fn console_log(&self) -> PathBuf {
        self.config.state_dir.join("console.log")
    }

    fn pid(&self) -> Option<u32> {
        QemuHypervisor::pid(self)
    }
}

impl QemuHypervisor {
    /// Waits up to `bound` for QEMU to exit on its own; records the status.
    fn wait_exit_for(&mut self, bound: Duration) -> Option<ExitStatus> {
        vmm_process::wait_exit(&mut self.child, &mut self.exit, bound)
    }
}

impl Drop for QemuHypervisor {
    fn drop(&mut self) {
        self.kill();
        self.remove_sockets();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        let mut c = VmConfig::new("/k", "/i", "/run/hull/vm1");
        c.accel = Accel::Tcg;
        c.shares.push(crate::Share {
            host_dir: "/srv/rootfs".into(),
            tag: "rootfs".into(),
        });
        c
    }

    #[test]
    fn command_line_has_the_microvm_devices() {
        let q = QemuHypervisor::new(cfg());
        let a = q.command_args().join(" ");
        assert!(
            a.contains("-M microvm,acpi=off -accel tcg,tb-size=64 -m 256M -smp 1"),
            "{a}"
        );
        assert!(
            a.contains("-qmp unix:/run/hull/vm1/qmp.sock,server=on,wait=off"),
            "{a}"
        );
        assert!(a.contains("socket,id=agent,path=/run/hull/vm1/agent.sock,server=on,wait=off"));
        // one port for the agent (port 0 is a console's), not QEMU's default 31
        assert!(
            a.contains("-device virtio-serial-device,max_ports=2 "),
            "{a}"
        );
        assert!(a.contains("virtserialport,chardev=agent,name=agent.0"));
        assert!(a.contains("-fsdev local,id=fs0,path=/srv/rootfs,security_model=none"));
        assert!(a.contains("virtio-9p-device,fsdev=fs0,mount_tag=rootfs"));
        assert!(a.contains("-serial file:/run/hull/vm1/console.log"));
    }

    #[test]
    fn template_modes_put_the_ram_in_the_template_file() {
        let mut q = QemuHypervisor::new(cfg());
        q.start = Start::BootForTemplate {
            memory: "/t/k.tmp-1/memory".into(),
        };
        let a = q.command_args().join(" ");
        assert!(a.contains("-M microvm,acpi=off,memory-backend=mem "), "{a}");
        assert!(
            a.contains("memory-backend-file,id=mem,size=256M,mem-path=/t/k.tmp-1/memory,share=on"),
            "the booting template writes its RAM to the file: {a}"
        );
        assert!(!a.contains("-incoming"), "{a}");
        q.start = Start::Restore {
            memory: "/t/k/memory".into(),
            state: "/t/k/state".into(),
        };
        let a = q.command_args().join(" ");
        assert!(
            a.contains("mem-path=/t/k/memory,share=off"),
            "clones map the template copy-on-write: {a}"
        );
        assert!(a.ends_with("-incoming defer"), "{a}");
    }

    #[test]
    fn the_template_key_follows_memory_and_devices() {
        let d = tempfile::tempdir().unwrap();
        let (k, i) = (d.path().join("vmlinux"), d.path().join("initrd"));
        std::fs::write(&k, b"k").unwrap();
        std::fs::write(&i, b"i").unwrap();
        let mut c = VmConfig::new(&k, &i, d.path().join("vm"));
        c.accel = Accel::Tcg;
        let key = |c: &VmConfig| QemuHypervisor::new(c.clone()).template_key();
        let Ok(base) = key(&c) else {
            eprintln!("skipped: no {QEMU_BINARY} on PATH");
            return;
        };
        assert_eq!(base, key(&c).unwrap());
        let mut more = c.clone();
        more.memory_mib = 512;
        assert_ne!(base, key(&more).unwrap(), "pod limits change the guest");
        let mut shared = c.clone();
        shared.shares.push(crate::Share {
            host_dir: "/srv".into(),
            tag: "hullshare".into(),
        });
        assert_ne!(base, key(&shared).unwrap(), "devices change the guest");
        let mut elsewhere = c.clone();
        elsewhere.state_dir = d.path().join("another-sandbox");
        assert_eq!(
            base,
            key(&elsewhere).unwrap(),
            "sandboxes of one config share a template"
        );
    }

    #[test]
    fn cmdline_tells_the_agent_where_to_listen() {
        let c = QemuHypervisor::new(cfg()).kernel_cmdline();
        assert!(c.contains("HULL_AGENT_LISTEN=serial:/dev/vport0p1"), "{c}");
        assert!(c.contains("console=ttyS0") && c.contains("pci=off") && c.contains("panic=-1"));
        assert!(
            !c.contains(" -- "),
            "QEMU appends virtio_mmio.device= after the cmdline: {c}"
        );
    }

    #[test]
    fn missing_kernel_is_a_config_error_before_anything_runs() {
        let mut q = QemuHypervisor::new(cfg());
        let e = q.boot().unwrap_err();
        assert!(matches!(e, HypervisorError::Config(_)), "{e}");
        assert!(q.pid().is_none());
    }

    #[test]
    fn snapshot_and_add_device_say_not_supported() {
        let mut q = QemuHypervisor::new(cfg());
        let e = q.snapshot(Path::new("/tmp")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "snapshot is not supported by the qemu backend"
        );
        assert!(q
            .add_device(&DeviceConfig::Block("/dev/null".into()))
            .is_err());
    }

    #[test]
    fn not_booted_is_not_running() {
        let mut q = QemuHypervisor::new(cfg());
        let e = q.check_running().unwrap_err();
        assert!(e.to_string().contains("not booted"), "{e}");
        assert!(q.pause().is_err());
    }
}
