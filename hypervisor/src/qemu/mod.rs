//! The `qemu` backend: QEMU's `microvm` machine, KVM where this host has hardware
//! virtualization and TCG elsewhere, controlled over QMP, the agent on a virtio-serial port,
//! host directories shared over virtio-9p, NICs on the pod's taps (virtio-net, frames copied
//! by QEMU in user space: vhost off), disks on host block devices or image files (virtio-blk,
//! no host cache), and VM templates (`template`).

mod qmp;
pub mod template;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::capabilities::Backend;
use crate::error::{HypervisorError, Result};
use crate::programs::{find_qemu, qemu_binary};
use crate::vmm_process::VmmProcess;
use crate::{
    detect, disk_serial, mac_string, nic_device_mac, BootedVm, Disk, Hypervisor, VmConfig,
};
use hull_agent_client::{AgentChannel, AgentClient};
use template::Template;

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
/// How long the first `Check` of a guest restored from a template may go unanswered before
/// it is asked again on a fresh connection (it answers in ~0.1 s under TCG).
const RESTORED_CHECK: Duration = Duration::from_secs(2);
/// How long a guest restored from a template may take to answer before it is given up and
/// the kernel boots instead (a restore answers in ~0.1-0.5 s under TCG, seconds under load).
const RESTORE_BOUND: Duration = Duration::from_secs(10);
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
    /// Restores a checkpoint ([`Hypervisor::snapshot`]): RAM and device state loaded by
    /// incoming migration; `named_memory`: the checkpointed VM's RAM was the memory backend
    /// `mem` (it had been restored from a template), which migration finds by that name.
    Checkpoint { state: PathBuf, named_memory: bool },
}

/// The file of a checkpoint directory holding QEMU's migration stream (devices and RAM).
const CHECKPOINT_STATE: &str = "qemu.state";
/// The file of a checkpoint directory describing how to start a QEMU that loads it.
const CHECKPOINT_META: &str = "qemu.json";
/// Bump when a checkpoint's layout changes.
const CHECKPOINT_FORMAT: u32 = 1;
/// Migration's bandwidth cap for a checkpoint, bytes/s: no cap in practice.
const MIGRATION_BANDWIDTH: u64 = 1 << 40;
/// How long saving or loading a checkpoint (all of the guest's RAM) may take.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a checkpoint directory says of the QEMU that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    format: u32,
    named_memory: bool,
    memory_mib: u32,
    vcpus: u32,
}

/// Whether the guest's vCPUs run, as QMP `query-status` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRunState {
    /// vCPUs are running.
    pub running: bool,
    /// QEMU's run state (`running`, `paused`, ...).
    pub status: String,
}

/// A drive of the guest as QEMU has it open (QMP `query-block`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuDrive {
    /// QEMU's drive id (`disk0` for disk 0).
    pub id: String,
    /// The host file or device node behind it.
    pub file: String,
    /// Opened read-only.
    pub read_only: bool,
    /// Opened with O_DIRECT (no host page cache).
    pub direct: bool,
    /// The serial its virtio-blk device gives the guest (empty: none).
    pub serial: String,
}

/// A QEMU process owned by this handle: it never outlives the handle (killed on drop, and
/// `PR_SET_PDEATHSIG` kills it if this process dies first).
#[derive(Debug)]
pub struct QemuHypervisor {
    config: VmConfig,
    start: Start,
    process: VmmProcess,
    /// The template the running guest was restored from, until its agent answered (a guest
    /// that dies first has its template removed, and boots instead).
    restored_from: Option<Template>,
}

impl QemuHypervisor {
    /// A handle for the VM described by `config`; nothing runs until [`Hypervisor::boot`].
    pub fn new(config: VmConfig) -> Self {
        let dir = &config.state_dir;
        let process = VmmProcess::new("qemu", dir.join("qemu.log"), dir.join("console.log"));
        QemuHypervisor {
            config,
            start: Start::Boot,
            process,
            restored_from: None,
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
        self.process.pid()
    }

    /// The agent's channel: the host end of its virtio-serial port.
    fn agent_channel(&self) -> AgentChannel {
        AgentChannel::Unix(self.agent_socket())
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

    /// The guest's NICs as QEMU sees them (QMP `query-rx-filter`): each one's name and MAC
    /// (`aa:bb:cc:dd:ee:ff`, as the guest last set it), in QEMU's order.
    pub fn query_nics(&mut self) -> Result<Vec<(String, String)>> {
        let v = self.qmp("query-rx-filter", None)?;
        let field = |n: &serde_json::Value, k: &str| {
            n.get(k)
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(v.as_array()
            .map(|nics| {
                nics.iter()
                    .map(|n| (field(n, "name"), field(n, "main-mac")))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The guest's drives as QEMU has them open (QMP `query-block`), in QEMU's order, each
    /// with its device's serial (QMP `qom-get`); drives without a medium are left out.
    pub fn query_drives(&mut self) -> Result<Vec<QemuDrive>> {
        let v = self.qmp("query-block", None)?;
        let text = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let flag = |v: Option<&serde_json::Value>| v.and_then(|f| f.as_bool()).unwrap_or(false);
        let mut drives = Vec::new();
        for d in v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(inserted) = d.get("inserted") else {
                continue;
            };
            let serial = match text(d, "qdev") {
                qdev if qdev.is_empty() => String::new(),
                qdev => {
                    let args = serde_json::json!({"path": qdev, "property": "serial"});
                    let s = self.qmp("qom-get", Some(args))?;
                    s.as_str().unwrap_or_default().to_string()
                }
            };
            drives.push(QemuDrive {
                id: text(d, "device"),
                file: text(inserted, "file"),
                read_only: flag(inserted.get("ro")),
                direct: flag(inserted.get("cache").and_then(|c| c.get("direct"))),
                serial,
            });
        }
        Ok(drives)
    }

    fn qmp(&mut self, command: &str, args: Option<serde_json::Value>) -> Result<serde_json::Value> {
        self.check_running()?;
        qmp::execute(&self.qmp_socket(), command, args, QMP_TIMEOUT)
    }

    /// The accelerator to use: `Auto` probes the host once per process.
    fn accel(&self) -> &'static str {
        self.config
            .accel
            .resolve(detect::kvm_hardware_backed_cached)
            .name()
    }

    /// The kernel command line (QEMU appends `virtio_mmio.device=...` to it).
    pub fn kernel_cmdline(&self) -> String {
        crate::guest_cmdline(
            "t",
            &format!("serial:{GUEST_AGENT_PORT}"),
            host_tsc_khz(),
            self.pci_machine(),
            &self.config.extra_cmdline,
        )
    }

    /// Whether this VM is a q35 instead of a microvm: one with host PCI devices. microvm's
    /// PCIe host bridge (`pcie=on`) takes a vfio-pci device, but its guest then never got to
    /// print a line (measured in a nested machine with an emulated IOMMU); on q35 the same
    /// guest boots and drives the device. Its virtio devices are then virtio-pci ones.
    fn pci_machine(&self) -> bool {
        !self.config.pci_devices.is_empty()
    }

    /// A virtio device's `-device` argument (written as microvm's virtio-mmio `…-device`), as
    /// this machine has it: the virtio-pci `…-pci` on q35.
    fn virtio(&self, device: &str) -> String {
        match self.pci_machine() {
            true => device.replacen("-device", "-pci", 1),
            false => device.to_string(),
        }
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
            // A VM with host PCI devices is a q35 (see `pci_machine`).
            "-M".into(),
            format!(
                "{}{}",
                match (self.pci_machine(), cfg.acpi) {
                    (true, _) => "q35",
                    (false, true) => "microvm",
                    (false, false) => "microvm,acpi=off",
                },
                match &self.start {
                    Start::Boot
                    | Start::Checkpoint {
                        named_memory: false,
                        ..
                    } => "",
                    _ => ",memory-backend=mem",
                }
            ),
            "-accel".into(),
            // TCG's translation buffer defaults to 1 GiB of host memory per VM; the config's
            // (64 MiB by default) holds what a pod's guest runs.
            match self.accel() {
                "tcg" => format!("tcg,tb-size={}", cfg.tcg_tb_mib),
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
            // Appended to, so that a VM restored from a template keeps the template's boot
            // log before its own output (see `spawn`).
            "-chardev".into(),
            format!(
                "file,id=serial0,path={},append=on",
                s(&self.console_log()).replace(',', ",,")
            ),
            "-serial".into(),
            "chardev:serial0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", s(&self.qmp_socket())),
            "-device".into(),
            self.virtio(AGENT_SERIAL_DEVICE),
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
            a.push(self.virtio(&format!(
                "virtio-9p-device,fsdev=fs{i},mount_tag={}",
                share.tag
            )));
        }
        // NIC i: the pod's tap i, inherited by its fd number; the MAC every VM's NIC i starts
        // with (templates restore with the pod's own taps behind the same devices).
        for (i, fd) in cfg.nic_fds().into_iter().enumerate() {
            a.push("-netdev".into());
            a.push(format!("tap,id=net{i},fd={fd},vhost=off"));
            a.push("-device".into());
            a.push(self.virtio(&format!(
                "virtio-net-device,netdev=net{i},mac={}",
                mac_string(nic_device_mac(i))
            )));
        }
        // Disk i: a raw drive on the host device or file, no host cache where the host allows
        // it (see `disk_cache`), served by QEMU's thread pool; the guest finds it by its
        // serial.
        for (i, disk) in cfg.disks.iter().enumerate() {
            a.push("-drive".into());
            a.push(format!(
                "file={},if=none,id=disk{i},format=raw,cache={},aio=threads{}",
                s(&disk.path).replace(',', ",,"),
                disk_cache(disk),
                if disk.read_only { ",readonly=on" } else { "" }
            ));
            a.push("-device".into());
            a.push(self.virtio(&format!(
                "virtio-blk-device,drive=disk{i},serial={}{}",
                disk_serial(i),
                if disk.shared { ",share-rw=on" } else { "" }
            )));
        }
        // Empty disk slots: a raw node over a 0-byte null device, which `attach_disk` points
        // at a host disk while the VM runs (blockdev-reopen) and resizes, so the guest sees it.
        for i in 0..cfg.disk_slots {
            a.push("-blockdev".into());
            a.push(format!("driver=null-co,node-name=slot{i}-empty,size=0"));
            // A slot filled from the start (a restored checkpoint's) has its disk's node as
            // `attach_disk` makes it.
            let file = match cfg.filled_slots.iter().find(|(n, _)| *n == i) {
                Some((_, disk)) => {
                    a.push("-blockdev".into());
                    a.push(format!(
                        "driver={},node-name=slot{i}-disk,filename={},cache.direct={},aio=threads,locking={}",
                        disk_driver(disk),
                        s(&disk.path).replace(',', ",,"),
                        if disk_cache(disk) == "none" { "on" } else { "off" },
                        if disk.shared { "off" } else { "auto" }
                    ));
                    format!("slot{i}-disk")
                }
                None => format!("slot{i}-empty"),
            };
            a.push("-blockdev".into());
            a.push(format!("driver=raw,node-name=slot{i},file={file}"));
            a.push("-device".into());
            a.push(self.virtio(&format!(
                "virtio-blk-device,drive=slot{i},serial={}",
                crate::disk_slot_serial(i)
            )));
        }
        // Host PCI devices on q35's PCIe root bus, driven by VFIO (the guest's RAM is pinned
        // and mapped in the host's IOMMU for the device's DMA).
        for (i, dev) in cfg.pci_devices.iter().enumerate() {
            a.push("-device".into());
            a.push(format!("vfio-pci,host={},id=hostdev{i}", dev.address));
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
            Start::Checkpoint { named_memory, .. } => {
                if *named_memory {
                    a.extend([
                        "-object".into(),
                        format!("memory-backend-ram,id=mem,size={}M", cfg.memory_mib),
                    ]);
                }
                a.extend(["-incoming".into(), "defer".into()]);
            }
        }
        a
    }

    /// What makes a guest of this config interchangeable with another: the key of its
    /// template.
    fn template_key(&self) -> Result<String> {
        let cfg = &self.config;
        let qemu = find_qemu()?;
        let mut facts = vec![
            cfg.memory_mib.to_string(),
            cfg.vcpus.to_string(),
            self.accel().to_string(),
            cfg.acpi.to_string(),
            self.kernel_cmdline(),
            AGENT_SERIAL_DEVICE.into(),
        ];
        facts.extend(cfg.shares.iter().map(|s| format!("9p:{}", s.tag)));
        facts.extend(cfg.device_facts());
        template::key(
            &[
                ("qemu", &qemu),
                ("kernel", &cfg.kernel),
                ("initrd", &cfg.initrd),
            ],
            &facts,
        )
    }

    /// Where this VM's template is kept, if it starts from one: never for a VM with disks or
    /// PCI devices, which boots cold (a template's guest has seen the disks it was made with,
    /// their number and sizes, and would not see this VM's; it has no PCIe bus).
    fn template_root(&self) -> Option<PathBuf> {
        let root = self.config.template_dir.clone()?;
        if !self.config.disks.is_empty() {
            tracing::debug!(
                disks = self.config.disks.len(),
                "vm with disks boots cold: a template's guest has seen other disks"
            );
            return None;
        }
        if !self.config.pci_devices.is_empty() {
            tracing::debug!(
                pci_devices = self.config.pci_devices.len(),
                "vm with pci devices boots cold: a template's guest has no pcie bus"
            );
            return None;
        }
        Some(root)
    }

    /// Starts QEMU booting the kernel (no template).
    fn cold_start(&mut self) -> Result<Instant> {
        self.start = Start::Boot;
        self.spawn()
    }

    /// Starts the guest from a template under `root`: restores it, after making it first when
    /// this configuration has none. A template QEMU cannot restore is removed and the kernel
    /// boots instead.
    fn start_from_template(&mut self, root: &Path) -> Result<Instant> {
        let t = Template::new(root, self.template_key()?);
        let in_use = t.ready_for_use(|t| self.make_template(t))?;
        self.start = Start::Restore {
            memory: t.memory(),
            state: t.state(),
        };
        let restored = self.spawn().and_then(|started| {
            self.restore_state(&t)?;
            Ok(started)
        });
        drop(in_use);
        match restored {
            Ok(started) => {
                self.restored_from = Some(t);
                Ok(started)
            }
            Err(
                e @ (HypervisorError::ExitedDuringBoot { .. }
                | HypervisorError::NotRunning { .. }
                | HypervisorError::Qmp { .. }),
            ) => {
                self.discard_template(&t, &e)?;
                self.cold_start()
            }
            Err(e) => Err(e),
        }
    }

    /// Starts the guest from the checkpoint in `dir`: QEMU with the checkpointed VM's memory
    /// layout waits for the migration stream, loads it, and runs the guest on.
    fn start_from_checkpoint(&mut self, dir: &Path) -> Result<Instant> {
        let meta_path = dir.join(CHECKPOINT_META);
        let bad = |why: String| HypervisorError::Config(format!("checkpoint {dir:?}: {why}"));
        let text =
            std::fs::read(&meta_path).map_err(|e| bad(format!("{}: {e}", meta_path.display())))?;
        let meta: CheckpointMeta = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("{}: {e}", meta_path.display())))?;
        if meta.format != CHECKPOINT_FORMAT {
            return Err(bad(format!(
                "format {} (this hull reads {CHECKPOINT_FORMAT})",
                meta.format
            )));
        }
        if (meta.memory_mib, meta.vcpus) != (self.config.memory_mib, self.config.vcpus) {
            return Err(bad(format!(
                "made of a vm with {} MiB and {} vCPUs, not {} MiB and {}",
                meta.memory_mib, meta.vcpus, self.config.memory_mib, self.config.vcpus
            )));
        }
        let state = dir.join(CHECKPOINT_STATE);
        if !state.is_file() {
            return Err(bad(format!("{} is missing", state.display())));
        }
        self.start = Start::Checkpoint {
            state: state.clone(),
            named_memory: meta.named_memory,
        };
        let started = self.spawn()?;
        let loaded = (|| {
            let uri = format!("exec:cat {}", template::shell_quote(&state)?);
            self.qmp("migrate-incoming", Some(serde_json::json!({ "uri": uri })))?;
            self.await_migration_within(
                "migrate-incoming",
                "loading the checkpoint",
                CHECKPOINT_TIMEOUT,
            )?;
            self.qmp("cont", None).map(|_| ())
        })();
        if let Err(e) = loaded {
            self.process.kill();
            return Err(e);
        }
        tracing::info!(checkpoint = ?dir, elapsed = ?started.elapsed(), "vm restored from its checkpoint");
        Ok(started)
    }

    /// Kills the guest restored from template `t`, which failed with `e`, and removes `t`.
    fn discard_template(&mut self, t: &Template, e: &HypervisorError) -> Result<()> {
        tracing::warn!(template = ?t.dir(), error = %e, "vm template did not restore; removing it and booting");
        self.process.kill();
        let _l = t.lock(true)?;
        t.remove();
        Ok(())
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
            let agent = self.process.wait_for_agent(
                &self.agent_channel(),
                started,
                self.config.boot_timeout,
                self.config.agent_call_timeout,
                self.config.agent_call_timeout,
            )?;
            self.save_state(&staging.join("state"))?;
            // The guest's boot log goes with the template: VMs restored from it show it.
            if let Err(e) = std::fs::copy(self.console_log(), staging.join(template::BOOT_LOG)) {
                tracing::debug!("keep the template's boot log: {e}");
            }
            // QEMU goes with the connection still open: restored guests find their agent
            // reading it, and the host's new connection continues the stream.
            self.process.kill();
            drop(agent);
            tracing::info!(template = ?t.dir(), elapsed = ?started.elapsed(), "vm template made");
            t.commit(&staging)
        })();
        if made.is_err() {
            self.process.kill();
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
        self.await_migration_within(command, what, SAVE_TIMEOUT)
    }

    /// [`Self::await_migration`] with its own bound.
    fn await_migration_within(&mut self, command: &str, what: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
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
                        message: format!("{what} took over {limit:?}"),
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
        // A fresh console log; a restored guest's starts with its template's boot log.
        let _ = std::fs::remove_file(self.console_log());
        if let Start::Restore { state, .. } = &self.start {
            if let Some(boot_log) = state.parent().map(|t| t.join(template::BOOT_LOG)) {
                if let Err(e) = std::fs::copy(&boot_log, self.console_log()) {
                    tracing::debug!(?boot_log, "no boot log of the template: {e}");
                }
            }
        }

        let binary = qemu_binary();
        let mut cmd = Command::new(&binary);
        cmd.args(self.command_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // The taps stay open (held by `self.config`) until the spawn returned.
        self.process.spawn(cmd, &binary, self.config.nic_fds())
    }

    fn validate(&self) -> Result<()> {
        let cfg = &self.config;
        cfg.check_bootable(None)?;
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
        Ok(())
    }

    fn remove_sockets(&self) {
        for p in [self.qmp_socket(), self.agent_socket()] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// QEMU's `cache=` mode for `disk`: `none` (O_DIRECT: no host page cache, so what the guest
/// flushed is on the device), unless the host refuses to open its path with O_DIRECT (a file
/// on tmpfs before Linux 6.6, which QEMU would refuse to open with `cache=none`): then
/// `writethrough` (the host page cache, every write flushed through it). Probed with an
/// `open(O_RDONLY | O_DIRECT)` of the path; any other error leaves `none` (boot names it).
fn disk_cache(disk: &Disk) -> &'static str {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&disk.path);
    match probe {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!(path = ?disk.path, "no O_DIRECT on this disk's file: cache=writethrough");
            "writethrough"
        }
        _ => "none",
    }
}

/// QEMU's block driver for `disk`: `host_device` for a block device node, else `file`.
fn disk_driver(disk: &Disk) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if disk
        .path
        .metadata()
        .is_ok_and(|m| m.file_type().is_block_device())
    {
        "host_device"
    } else {
        "file"
    }
}

/// The size in bytes of a disk (a block device's `st_size` is 0: seek to its end).
fn disk_size(path: &Path) -> Result<u64> {
    use std::io::Seek;
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)))
        .map_err(|e| HypervisorError::io(format!("size of disk {path:?}"), e))
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
    fn backend(&self) -> Backend {
        Backend::Qemu
    }

    fn boot(&mut self) -> Result<BootedVm> {
        if self.process.started() {
            return Err(HypervisorError::Config("vm is already booted".into()));
        }
        self.validate()?;
        let started = match (&self.config.restore_from, self.template_root()) {
            (Some(dir), _) => {
                let dir = dir.clone();
                self.start_from_checkpoint(&dir)?
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
    /// removed, and the failed restore's logs are kept.
    fn wait_for_agent(&mut self, vm: &BootedVm) -> Result<AgentClient> {
        let (boot_timeout, call_timeout) =
            (self.config.boot_timeout, self.config.agent_call_timeout);
        let Some(t) = self.restored_from.take() else {
            // A guest restored from a checkpoint is a restored guest too: its agent runs
            // already, and a first `Check` its port lost is asked again after RESTORED_CHECK
            // (not after a whole call timeout, 30 s, which outlasts containerd's clients).
            let attempt = if self.config.restore_from.is_some() {
                RESTORED_CHECK.min(call_timeout)
            } else {
                call_timeout
            };
            return self.process.wait_for_agent(
                &vm.channel,
                vm.started,
                boot_timeout,
                call_timeout,
                attempt,
            );
        };
        // A restored guest's agent runs already; a request its port lost (seen ~1 in 12
        // restores) is sent again on a fresh connection after RESTORED_CHECK.
        let waited = self.process.wait_for_agent(
            &vm.channel,
            vm.started,
            boot_timeout.min(RESTORE_BOUND),
            call_timeout,
            RESTORED_CHECK.min(call_timeout),
        );
        let e = match waited {
            Ok(agent) => {
                tracing::info!(template = ?t.dir(), boot_time = ?vm.started.elapsed(), "vm restored from its template");
                return Ok(agent);
            }
            Err(e) => e,
        };
        // The failed restore's logs are kept (see VmmProcess::keep_logs): `e` names them.
        if matches!(e, HypervisorError::ExitedDuringBoot { .. }) {
            self.discard_template(&t, &e)?;
        } else {
            tracing::warn!(template = ?t.dir(), error = %e, "vm restored from its template did not answer; booting instead");
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

    /// QMP `quit`, then a kill after a grace (QEMU needs no guest power-off).
    fn stop(&mut self, _guest_powering_off: bool) -> Result<()> {
        if self.process.check_running().is_ok() {
            if let Err(e) = qmp::execute(&self.qmp_socket(), "quit", None, QMP_TIMEOUT) {
                tracing::debug!(error = %e, "qmp quit failed; killing qemu");
            }
            let _ = self.process.wait_exit(QUIT_GRACE);
        }
        self.process.stop();
        self.remove_sockets();
        Ok(())
    }

    fn pause(&mut self) -> Result<()> {
        self.qmp("stop", None).map(|_| ())
    }

    fn resume(&mut self) -> Result<()> {
        self.qmp("cont", None).map(|_| ())
    }

    /// Migration of the whole VM into `dir` (QEMU refuses while the guest has a 9p share
    /// mounted, saying so). The guest is stopped meanwhile and runs on after, unless it was
    /// paused.
    fn snapshot(&mut self, dir: &Path) -> Result<()> {
        self.check_running()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| HypervisorError::io(format!("create {dir:?}"), e))?;
        let was_running = self.query_status()?.running;
        if was_running {
            self.qmp("stop", None)?;
        }
        let saved = (|| {
            // All of the RAM goes into the stream, a template's too (x-ignore-shared off), as
            // fast as the disk takes it (QEMU's default cap is 32 MiB/s, for a network).
            self.qmp(
                "migrate-set-capabilities",
                Some(serde_json::json!({"capabilities": [
                    {"capability": "x-ignore-shared", "state": false}
                ]})),
            )?;
            self.qmp(
                "migrate-set-parameters",
                Some(serde_json::json!({"max-bandwidth": MIGRATION_BANDWIDTH})),
            )?;
            let uri = format!(
                "exec:cat > {}",
                template::shell_quote(&dir.join(CHECKPOINT_STATE))?
            );
            self.qmp("migrate", Some(serde_json::json!({ "uri": uri })))?;
            self.await_migration_within("migrate", "saving the checkpoint", CHECKPOINT_TIMEOUT)?;
            let meta = CheckpointMeta {
                format: CHECKPOINT_FORMAT,
                named_memory: !matches!(
                    self.start,
                    Start::Boot
                        | Start::Checkpoint {
                            named_memory: false,
                            ..
                        }
                ),
                memory_mib: self.config.memory_mib,
                vcpus: self.config.vcpus,
            };
            let path = dir.join(CHECKPOINT_META);
            let json = serde_json::to_vec_pretty(&meta).expect("checkpoint meta serialises");
            std::fs::write(&path, json)
                .map_err(|e| HypervisorError::io(format!("write {path:?}"), e))
        })();
        if was_running {
            // After a migration QEMU is in `postmigrate`, from which `cont` runs the guest.
            self.qmp("cont", None)?;
        }
        saved
    }

    fn attach_disk(&mut self, slot: usize, disk: &Disk) -> Result<()> {
        if slot >= self.config.disk_slots {
            return Err(HypervisorError::Config(format!(
                "no disk slot {slot} (the vm has {})",
                self.config.disk_slots
            )));
        }
        let size = disk_size(&disk.path)?;
        let node = format!("slot{slot}-disk");
        let driver = disk_driver(disk);
        self.qmp(
            "blockdev-add",
            Some(serde_json::json!({
                "driver": driver,
                "node-name": node,
                "filename": disk.path,
                // Read-write even for a read-only disk: the slot's virtio-blk device took
                // write permission at boot, so QEMU refuses a read-only node under it, and a
                // read-only node cannot be resized, which is how the guest learns the disk's
                // size. The container's read-only access is the guest's device cgroup rule.
                "read-only": false,
                "cache": {"direct": disk_cache(disk) == "none"},
                "aio": "threads",
                // A shared disk: other VMs write it too; the slot's device, made at boot,
                // cannot share write permission, so this node takes no image lock.
                "locking": if disk.shared { "off" } else { "auto" },
            })),
        )?;
        let swapped = self
            .qmp(
                "blockdev-reopen",
                Some(serde_json::json!({"options": [{
                    "driver": "raw", "node-name": format!("slot{slot}"), "file": node,
                }]})),
            )
            .and_then(|_| {
                self.qmp(
                    "block_resize",
                    Some(serde_json::json!({"node-name": format!("slot{slot}"), "size": size})),
                )
            });
        if let Err(e) = swapped {
            let _ = self.qmp("blockdev-del", Some(serde_json::json!({"node-name": node})));
            return Err(e);
        }
        tracing::info!(slot, path = ?disk.path, size, "disk attached to a running vm");
        Ok(())
    }

    fn detach_disk(&mut self, slot: usize) -> Result<()> {
        let slot_node = format!("slot{slot}");
        self.qmp(
            "blockdev-reopen",
            Some(serde_json::json!({"options": [{
                "driver": "raw", "node-name": slot_node, "file": format!("slot{slot}-empty"),
            }]})),
        )?;
        let _ = self.qmp(
            "block_resize",
            Some(serde_json::json!({"node-name": slot_node, "size": 0})),
        );
        self.qmp(
            "blockdev-del",
            Some(serde_json::json!({"node-name": format!("slot{slot}-disk")})),
        )?;
        Ok(())
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
        QemuHypervisor::pid(self)
    }
}

impl Drop for QemuHypervisor {
    fn drop(&mut self) {
        self.process.kill();
        self.remove_sockets();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Accel;

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
        assert!(
            a.contains(
                "-chardev file,id=serial0,path=/run/hull/vm1/console.log,append=on \
                 -serial chardev:serial0"
            ),
            "{a}"
        );
    }

    /// `n` NICs on stand-in fds (/dev/null: the command line only names their numbers).
    fn nics(n: usize) -> Vec<crate::Nic> {
        (0..n)
            .map(|_| crate::Nic {
                tap: std::sync::Arc::new(File::open("/dev/null").unwrap().into()),
            })
            .collect()
    }

    #[test]
    fn each_nic_is_a_tap_netdev_on_its_inherited_fd_with_its_device_mac() {
        use std::os::fd::AsRawFd;
        let mut c = cfg();
        c.nics = nics(2);
        let fds: Vec<i32> = c.nics.iter().map(|n| n.tap.as_raw_fd()).collect();
        let q = QemuHypervisor::new(c);
        let a = q.command_args().join(" ");
        for (i, mac) in ["02:68:75:6c:00:00", "02:68:75:6c:00:01"]
            .iter()
            .enumerate()
        {
            let pair = format!(
                "-netdev tap,id=net{i},fd={},vhost=off -device virtio-net-device,netdev=net{i},mac={mac}",
                fds[i]
            );
            assert!(a.contains(&pair), "{pair} missing: {a}");
        }
        assert_eq!(a.matches("-netdev").count(), 2, "{a}");
        assert_eq!(
            q.config.nic_fds(),
            fds,
            "qemu inherits the taps by these numbers"
        );
        let none = QemuHypervisor::new(cfg()).command_args().join(" ");
        assert!(
            !none.contains("-netdev") && !none.contains("virtio-net"),
            "{none}"
        );
    }

    #[test]
    fn each_disk_is_a_raw_uncached_drive_on_a_virtio_blk_device_with_its_serial() {
        let d = tempfile::tempdir().unwrap();
        let (img, odd) = (d.path().join("a.img"), d.path().join("b,c.img"));
        std::fs::write(&img, [0u8; 512]).unwrap();
        std::fs::write(&odd, [0u8; 512]).unwrap();
        let mut c = cfg();
        c.disks = vec![
            Disk {
                path: img.clone(),
                read_only: false,
                shared: false,
            },
            Disk {
                path: odd.clone(),
                read_only: true,
                shared: false,
            },
        ];
        let a = QemuHypervisor::new(c).command_args().join(" ");
        let dir = d.path().display();
        for want in [
            format!("-drive file={dir}/a.img,if=none,id=disk0,format=raw,cache=none,aio=threads -device virtio-blk-device,drive=disk0,serial=hull-disk-0"),
            // QEMU's option syntax doubles a comma in a value.
            format!("-drive file={dir}/b,,c.img,if=none,id=disk1,format=raw,cache=none,aio=threads,readonly=on -device virtio-blk-device,drive=disk1,serial=hull-disk-1"),
        ] {
            assert!(a.contains(&want), "{want} missing: {a}");
        }
        assert_eq!(a.matches("-drive").count(), 2, "{a}");
        let none = QemuHypervisor::new(cfg()).command_args().join(" ");
        assert!(
            !none.contains("-drive") && !none.contains("virtio-blk"),
            "{none}"
        );
    }

    #[test]
    fn disks_are_opened_without_host_cache_where_the_host_allows_o_direct() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.img");
        std::fs::write(&img, [0u8; 4096]).unwrap();
        let disk = |path: &Path| Disk {
            path: path.into(),
            read_only: false,
            shared: false,
        };
        // This host's /tmp (ext4) and /dev/shm (tmpfs since Linux 6.6) take O_DIRECT.
        assert_eq!(disk_cache(&disk(&img)), "none");
        // A missing path is left for boot to name.
        assert_eq!(disk_cache(&disk(&d.path().join("gone"))), "none");
        // /proc files refuse O_DIRECT with EINVAL, as tmpfs did before Linux 6.6.
        assert_eq!(
            disk_cache(&disk(Path::new("/proc/self/status"))),
            "writethrough"
        );
    }

    #[test]
    fn pci_devices_are_vfio_devices_on_a_q35_and_boot_cold() {
        let mut c = cfg();
        c.template_dir = Some("/var/lib/hull/templates".into());
        c.pci_devices = vec![
            crate::PciDevice {
                address: "0000:01:00.0".into(),
            },
            crate::PciDevice {
                address: "0000:02:00.0".into(),
            },
        ];
        let q = QemuHypervisor::new(c);
        let a = q.command_args().join(" ");
        // A q35 (see pci_machine), its virtio devices on PCI.
        assert!(a.contains("-M q35 -accel"), "{a}");
        assert!(a.contains("-device virtio-serial-pci,max_ports=2 "), "{a}");
        assert!(
            a.contains("virtio-9p-pci,fsdev=fs0,mount_tag=rootfs"),
            "{a}"
        );
        assert!(
            !a.contains("-device,") && !a.contains("virtio-9p-device"),
            "{a}"
        );
        assert!(
            a.contains("-device vfio-pci,host=0000:01:00.0,id=hostdev0"),
            "{a}"
        );
        assert!(
            a.contains("-device vfio-pci,host=0000:02:00.0,id=hostdev1"),
            "{a}"
        );
        assert_eq!(q.template_root(), None);
    }

    #[test]
    fn a_vm_with_disks_boots_cold_without_its_template() {
        let mut c = cfg();
        c.template_dir = Some("/var/lib/hull/templates".into());
        assert_eq!(
            QemuHypervisor::new(c.clone()).template_root(),
            Some(PathBuf::from("/var/lib/hull/templates"))
        );
        c.disks.push(Disk {
            path: "/dev/loop0".into(),
            read_only: false,
            shared: false,
        });
        let q = QemuHypervisor::new(c);
        assert_eq!(q.template_root(), None);
        assert_eq!(q.start, Start::Boot);
        let a = q.command_args().join(" ");
        assert!(
            !a.contains("memory-backend") && !a.contains("-incoming"),
            "{a}"
        );
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
        let base = key(&c).unwrap_or_else(|e| {
            panic!(
                "needs {} on PATH (scripts/setup-host): {e}",
                crate::programs::QEMU_BINARY
            )
        });
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
        let mut slots = c.clone();
        slots.disk_slots = 2;
        assert_ne!(
            base,
            key(&slots).unwrap(),
            "disk slots are part of the template"
        );
        let a = QemuHypervisor::new(slots).command_args().join(" ");
        assert!(
            a.contains("-blockdev driver=null-co,node-name=slot1-empty,size=0 -blockdev driver=raw,node-name=slot1,file=slot1-empty -device virtio-blk-device,drive=slot1,serial=hull-slot-1"),
            "{a}"
        );
        let (mut one, mut two, mut two_others) = (c.clone(), c.clone(), c.clone());
        one.nics = nics(1);
        two.nics = nics(2);
        two_others.nics = nics(2);
        let k1 = key(&one).unwrap();
        assert_ne!(base, k1, "a NIC changes the guest");
        assert_ne!(k1, key(&two).unwrap(), "so does their count");
        assert_eq!(
            key(&two).unwrap(),
            key(&two_others).unwrap(),
            "not the taps behind them: every pod restores with its own"
        );
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
    fn snapshots_and_slots_are_claimed_and_a_restore_loads_the_checkpoint_with_its_slots() {
        let mut q = QemuHypervisor::new(cfg());
        let caps = q.capabilities();
        assert!(caps.snapshot && caps.block.hot && caps.block.cold);
        let e = q.snapshot(Path::new("/tmp")).unwrap_err();
        assert!(e.to_string().contains("not booted"), "{e}");

        let mut c = cfg();
        c.disk_slots = 2;
        c.filled_slots = vec![(
            1,
            Disk {
                path: "/x/c1.img".into(),
                read_only: false,
                shared: false,
            },
        )];
        let mut q = QemuHypervisor::new(c);
        q.start = Start::Checkpoint {
            state: "/ck/qemu.state".into(),
            named_memory: true,
        };
        let a = q.command_args().join(" ");
        assert!(
            a.contains("-blockdev driver=raw,node-name=slot0,file=slot0-empty"),
            "{a}"
        );
        assert!(
            a.contains("node-name=slot1-disk,filename=/x/c1.img")
                && a.contains("-blockdev driver=raw,node-name=slot1,file=slot1-disk"),
            "{a}"
        );
        assert!(a.contains(",memory-backend=mem "), "{a}");
        assert!(a.contains("memory-backend-ram,id=mem,size=256M"), "{a}");
        assert!(a.ends_with("-incoming defer"), "{a}");
        q.start = Start::Checkpoint {
            state: "/ck/qemu.state".into(),
            named_memory: false,
        };
        let a = q.command_args().join(" ");
        assert!(!a.contains("memory-backend"), "{a}");
    }

    #[test]
    fn not_booted_is_not_running() {
        let mut q = QemuHypervisor::new(cfg());
        let e = q.check_running().unwrap_err();
        assert!(e.to_string().contains("not booted"), "{e}");
        assert!(q.pause().is_err());
    }
}
