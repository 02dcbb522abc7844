//! vCPUs: boot configuration, the run loop on its own thread, and the pause / resume /
//! save-state protocol the VMM drives over a channel (kicking the thread out of KVM_RUN with a
//! signal and `immediate_exit`).

use std::cell::Cell;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_run,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, trace};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::{cpuid, msr, regs};
use crate::devices::Bus;

/// Errors of a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {id}: {source}")]
    Create {
        /// vCPU index.
        id: u8,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// A state ioctl failed.
    #[error("vCPU {id}: cannot {what}: {source}")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// What was attempted.
        what: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// Register set-up failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// MSR set-up failed.
    #[error(transparent)]
    Msr(#[from] msr::MsrError),
    /// CPUID set-up failed.
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    /// The vCPU thread could not be started.
    #[error("cannot start vCPU thread: {0}")]
    Spawn(std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("cannot install vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// The vCPU thread did not answer in time or is gone.
    #[error("vCPU {0} did not answer the VMM")]
    NoResponse(u8),
    /// The vCPU thread answered with an error.
    #[error("vCPU {id}: {msg}")]
    Thread {
        /// vCPU index.
        id: u8,
        /// Its error.
        msg: String,
    },
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine through the i8042 (or asked KVM for a reset).
    Reset,
    /// The guest shut down: triple fault or a KVM power-off system event.
    Shutdown,
    /// A VMM or KVM error.
    Error(String),
}

/// Where the VM records why it stopped, with the eventfd that wakes the VMM.
#[derive(Clone)]
pub struct ExitNotifier {
    reason: Arc<Mutex<Option<VmExit>>>,
    evt: Arc<EventFd>,
}

impl ExitNotifier {
    /// A notifier around `evt`.
    pub fn new(evt: EventFd) -> ExitNotifier {
        ExitNotifier {
            reason: Arc::new(Mutex::new(None)),
            evt: Arc::new(evt),
        }
    }

    /// Records the first exit reason and wakes the VMM.
    pub fn notify(&self, why: VmExit) {
        let mut r = self.reason.lock().expect("exit reason lock poisoned");
        if r.is_none() {
            *r = Some(why);
        }
        let _ = self.evt.write(1);
    }

    /// The recorded reason; a bare eventfd write (the i8042) means reset.
    pub fn reason(&self) -> VmExit {
        self.reason
            .lock()
            .expect("exit reason lock poisoned")
            .clone()
            .unwrap_or(VmExit::Reset)
    }

    /// The eventfd.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }
}

/// Everything KVM holds about a vCPU that a snapshot needs.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// General purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// x87/SSE state.
    pub fpu: FpuState,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// MSRs.
    pub msrs: Vec<kvm_msr_entry>,
    /// Multiprocessing state (runnable / halted / waiting for SIPI).
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts and NMIs.
    pub events: kvm_vcpu_events,
    /// Full extended register state (x87, SSE, AVX...), where KVM offers it in 4 KiB.
    #[serde(default)]
    pub xsave: Option<kvm_xsave>,
    /// Extended control registers (XCR0).
    #[serde(default)]
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers.
    #[serde(default)]
    pub debugregs: Option<kvm_debugregs>,
}

/// What vCPU state this host's KVM lets a snapshot carry.
#[derive(Debug, Clone, Default)]
pub struct SnapshotCaps {
    /// MSR indices saved: the boot MSRs plus those of [`msr::SNAPSHOT_EXTRA_MSRS`] KVM knows.
    pub msrs: Vec<u32>,
    /// KVM_GET/SET_XSAVE and XCRS usable with the 4 KiB `kvm_xsave`.
    pub xsave: bool,
}

impl SnapshotCaps {
    /// Asks KVM.
    pub fn detect(kvm: &kvm_ioctls::Kvm) -> SnapshotCaps {
        let mut msrs: Vec<u32> = msr::boot_msr_entries().iter().map(|e| e.index).collect();
        if let Ok(supported) = kvm.get_msr_index_list() {
            let supported = supported.as_slice();
            msrs.extend(
                msr::SNAPSHOT_EXTRA_MSRS
                    .iter()
                    .filter(|m| supported.contains(m)),
            );
        }
        // KVM_CAP_XSAVE2 gives the size KVM_GET_XSAVE2 needs (0 when unsupported): above
        // 4 KiB (AMX) the legacy 4 KiB struct cannot hold the state.
        let xsave2 = kvm.check_extension_int(kvm_ioctls::Cap::Xsave2);
        let xsave = kvm.check_extension(kvm_ioctls::Cap::Xsave)
            && kvm.check_extension(kvm_ioctls::Cap::Xcrs)
            && xsave2 <= 4096;
        SnapshotCaps { msrs, xsave }
    }
}

/// `kvm_fpu` in a serializable form.
#[derive(Clone, Serialize, Deserialize, Default, PartialEq, Eq, Debug)]
pub struct FpuState {
    /// x87 registers.
    pub fpr: Vec<[u8; 16]>,
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// XMM registers.
    pub xmm: Vec<[u8; 16]>,
    /// MXCSR.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr.to_vec(),
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm.to_vec(),
            mxcsr: f.mxcsr,
        }
    }
}

impl FpuState {
    fn to_kvm(&self) -> kvm_fpu {
        let mut f = kvm_fpu {
            fcw: self.fcw,
            fsw: self.fsw,
            ftwx: self.ftwx,
            last_opcode: self.last_opcode,
            last_ip: self.last_ip,
            last_dp: self.last_dp,
            mxcsr: self.mxcsr,
            ..Default::default()
        };
        for (d, s) in f.fpr.iter_mut().zip(&self.fpr) {
            *d = *s;
        }
        for (d, s) in f.xmm.iter_mut().zip(&self.xmm) {
            *d = *s;
        }
        f
    }
}

/// Commands from the VMM to a vCPU thread.
pub enum VcpuEvent {
    /// Leave KVM_RUN and wait.
    Pause,
    /// Run again.
    Resume,
    /// Report the vCPU state (only while paused).
    SaveState,
    /// End the thread.
    Finish,
}

/// Answers of a vCPU thread.
pub enum VcpuResponse {
    /// Now paused.
    Paused,
    /// Now running.
    Resumed,
    /// The state asked for.
    State(Box<VcpuState>),
    /// Thread ends.
    Finished,
    /// The command failed.
    Error(String),
}

/// A vCPU before its thread starts.
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    exit: ExitNotifier,
    caps: Arc<SnapshotCaps>,
}

/// The buses a running vCPU dispatches port I/O and MMIO exits to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub io: Arc<Bus>,
    /// MMIO.
    pub mmio: Arc<Bus>,
}

const PIO_UNCLAIMED_READ: u8 = 0xff;

thread_local! {
    // The kvm_run page of the vCPU this thread runs, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is set by the vCPU thread to its own kvm_run mapping, which
            // lives as long as the VcpuFd that thread owns; it is reset to null before the
            // VcpuFd is dropped. Writing one byte is async-signal-safe.
            unsafe { (*run).immediate_exit = 1 };
        }
    });
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut res = Ok(());
    INSTALLED.call_once(|| {
        res = register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal);
    });
    res
}

impl Vcpu {
    /// Creates vCPU `id` in `vm`.
    pub fn new(
        vm: &VmFd,
        id: u8,
        exit: ExitNotifier,
        caps: Arc<SnapshotCaps>,
    ) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Vcpu { fd, id, exit, caps })
    }

    /// The vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The KVM vCPU fd.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    fn kvm_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let id = self.id;
        move |source| VcpuError::Kvm { id, what, source }
    }

    /// CPUID, MSRs, LINT0/LINT1 and (for the boot vCPU) registers for `entry`.
    pub fn configure(
        &self,
        mem: &GuestMemoryMmap,
        base_cpuid: &kvm_bindings::CpuId,
        count: u8,
        entry: regs::BootEntry,
    ) -> Result<(), VcpuError> {
        cpuid::setup_cpuid(&self.fd, base_cpuid, self.id, count)?;
        msr::setup_msrs(&self.fd)?;
        self.setup_lint()?;
        if self.id == 0 {
            regs::setup_regs(&self.fd, entry)?;
            regs::setup_fpu(&self.fd)?;
            regs::setup_sregs(mem, &self.fd, entry)?;
        }
        Ok(())
    }

    /// LINT0 as ExtINT (the PIC), LINT1 as NMI, like a PC's BIOS leaves them.
    fn setup_lint(&self) -> Result<(), VcpuError> {
        const APIC_LVT0: usize = 0x350;
        const APIC_LVT1: usize = 0x360;
        const APIC_MODE_NMI: u32 = 0x4;
        const APIC_MODE_EXTINT: u32 = 0x7;
        let mut lapic = self.fd.get_lapic().map_err(self.kvm_err("get LAPIC"))?;
        let rd = |l: &kvm_lapic_state, off: usize| {
            u32::from_le_bytes(std::array::from_fn(|i| l.regs[off + i] as u8))
        };
        let wr = |l: &mut kvm_lapic_state, off: usize, v: u32| {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                l.regs[off + i] = *b as libc::c_char;
            }
        };
        let lvt0 = (rd(&lapic, APIC_LVT0) & !0x700) | (APIC_MODE_EXTINT << 8);
        let lvt1 = (rd(&lapic, APIC_LVT1) & !0x700) | (APIC_MODE_NMI << 8);
        wr(&mut lapic, APIC_LVT0, lvt0);
        wr(&mut lapic, APIC_LVT1, lvt1);
        self.fd.set_lapic(&lapic).map_err(self.kvm_err("set LAPIC"))
    }

    /// Reads the vCPU's state. Call only while it does not run.
    pub fn save_state(&self) -> Result<VcpuState, VcpuError> {
        let entries: Vec<kvm_msr_entry> = self
            .caps
            .msrs
            .iter()
            .map(|index| kvm_msr_entry {
                index: *index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| VcpuError::Thread {
            id: self.id,
            msg: format!("cannot build MSR list: {e:?}"),
        })?;
        let n = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(self.kvm_err("get MSRs"))?;
        Ok(VcpuState {
            regs: self.fd.get_regs().map_err(self.kvm_err("get regs"))?,
            sregs: self.fd.get_sregs().map_err(self.kvm_err("get sregs"))?,
            fpu: FpuState::from(&self.fd.get_fpu().map_err(self.kvm_err("get FPU"))?),
            lapic: self.fd.get_lapic().map_err(self.kvm_err("get LAPIC"))?,
            msrs: msrs.as_slice()[..n].to_vec(),
            mp_state: self
                .fd
                .get_mp_state()
                .map_err(self.kvm_err("get MP state"))?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(self.kvm_err("get vCPU events"))?,
            xsave: match self.caps.xsave {
                true => Some(self.fd.get_xsave().map_err(self.kvm_err("get XSAVE"))?),
                false => None,
            },
            xcrs: match self.caps.xsave {
                true => Some(self.fd.get_xcrs().map_err(self.kvm_err("get XCRs"))?),
                false => None,
            },
            debugregs: Some(
                self.fd
                    .get_debug_regs()
                    .map_err(self.kvm_err("get debug registers"))?,
            ),
        })
    }

    /// Loads a snapshot's state into a fresh vCPU: CPUID from `base_cpuid` for a VM of `count`
    /// vCPUs (as [`Vcpu::configure`] sets it), then [`Vcpu::restore_state`].
    pub fn restore(
        &self,
        base_cpuid: &kvm_bindings::CpuId,
        count: u8,
        s: &VcpuState,
    ) -> Result<(), VcpuError> {
        cpuid::setup_cpuid(&self.fd, base_cpuid, self.id, count)?;
        self.restore_state(s)
    }

    /// Loads a state written by [`Vcpu::save_state`] (CPUID must be set first).
    pub fn restore_state(&self, s: &VcpuState) -> Result<(), VcpuError> {
        self.fd
            .set_sregs(&s.sregs)
            .map_err(self.kvm_err("set sregs"))?;
        self.fd
            .set_fpu(&s.fpu.to_kvm())
            .map_err(self.kvm_err("set FPU"))?;
        match (&s.xsave, self.caps.xsave) {
            (Some(xsave), true) => {
                // SAFETY: `xsave` is a whole 4 KiB kvm_xsave, and SnapshotCaps::detect found
                // that this host's XSAVE state fits in 4 KiB, so KVM reads only inside it.
                unsafe { self.fd.set_xsave(xsave) }.map_err(self.kvm_err("set XSAVE"))?;
            }
            (Some(_), false) => {
                return Err(VcpuError::Thread {
                    id: self.id,
                    msg: "snapshot has XSAVE state this host's KVM cannot load".into(),
                })
            }
            (None, _) => {}
        }
        if let (Some(xcrs), true) = (&s.xcrs, self.caps.xsave) {
            self.fd.set_xcrs(xcrs).map_err(self.kvm_err("set XCRs"))?;
        }
        self.fd
            .set_regs(&s.regs)
            .map_err(self.kvm_err("set regs"))?;
        if let Some(d) = &s.debugregs {
            self.fd
                .set_debug_regs(d)
                .map_err(self.kvm_err("set debug registers"))?;
        }
        self.fd
            .set_lapic(&s.lapic)
            .map_err(self.kvm_err("set LAPIC"))?;
        // After the LAPIC: KVM ignores a write of IA32_TSC_DEADLINE unless the LAPIC's timer
        // is in TSC-deadline mode, which a fresh vCPU's is not. MSRs first lost the guest's
        // armed timer, and a restored guest waiting on it (a sleep) never woke.
        msr::set_msrs(&self.fd, &s.msrs)?;
        self.fd
            .set_mp_state(s.mp_state)
            .map_err(self.kvm_err("set MP state"))?;
        self.fd
            .set_vcpu_events(&s.events)
            .map_err(self.kvm_err("set vCPU events"))?;
        Ok(())
    }

    /// Runs until one exit is handled. `Ok(true)` to keep running, `Ok(false)` when the VM
    /// ended, `Err(EINTR)` when kicked.
    fn run_once(&mut self, buses: &Buses) -> Result<bool, kvm_ioctls::Error> {
        match self.fd.run()? {
            VcpuExit::IoIn(port, data) => {
                if !buses.io.read(u64::from(port), data) {
                    data.fill(PIO_UNCLAIMED_READ);
                }
                Ok(true)
            }
            VcpuExit::IoOut(port, data) => {
                if !buses.io.write(u64::from(port), data) {
                    trace!(port, "write to unclaimed port");
                }
                Ok(true)
            }
            VcpuExit::MmioRead(addr, data) => {
                if !buses.mmio.read(addr, data) {
                    debug!(addr = format_args!("{addr:#x}"), "read of unclaimed MMIO");
                    data.fill(0);
                }
                Ok(true)
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !buses.mmio.write(addr, data) {
                    debug!(addr = format_args!("{addr:#x}"), "write to unclaimed MMIO");
                }
                Ok(true)
            }
            VcpuExit::Hlt => {
                info!(vcpu = self.id, "guest halted");
                self.exit.notify(VmExit::Shutdown);
                Ok(false)
            }
            VcpuExit::Shutdown => {
                info!(vcpu = self.id, "guest shut down (triple fault or reset)");
                self.exit.notify(VmExit::Shutdown);
                Ok(false)
            }
            VcpuExit::SystemEvent(kind, _) => {
                let why = match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Shutdown,
                    other => VmExit::Error(format!("unexpected KVM system event {other}")),
                };
                self.exit.notify(why);
                Ok(false)
            }
            VcpuExit::FailEntry(reason, cpu) => {
                self.exit.notify(VmExit::Error(format!(
                    "KVM could not enter vCPU {}: hardware entry failure reason {reason:#x} on host CPU {cpu}",
                    self.id
                )));
                Ok(false)
            }
            VcpuExit::InternalError => {
                self.exit.notify(VmExit::Error(format!(
                    "KVM internal error on vCPU {} (emulation failure?)",
                    self.id
                )));
                Ok(false)
            }
            other => {
                self.exit.notify(VmExit::Error(format!(
                    "unhandled KVM exit {other:?} on vCPU {}",
                    self.id
                )));
                Ok(false)
            }
        }
    }

    /// Starts the vCPU thread; it runs the guest right away.
    pub fn start(
        self,
        buses: Buses,
        seccomp: Option<Arc<crate::seccomp::BpfProgram>>,
    ) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let id = self.id;
        let (ev_tx, ev_rx) = channel();
        let (resp_tx, resp_rx) = channel();
        // The caller's span (the VM's id) carries over to the vCPU thread's log lines.
        let span = tracing::info_span!("vcpu", index = id);
        let thread = std::thread::Builder::new()
            .name(format!("hull-vcpu{id}"))
            .spawn(move || {
                let _span = span.entered();
                if let Some(filter) = seccomp {
                    if let Err(e) = crate::seccomp::apply(&filter) {
                        self.exit.notify(VmExit::Error(format!("vCPU {id}: {e}")));
                        return;
                    }
                }
                self.thread_main(&buses, ev_rx, resp_tx)
            })
            .map_err(VcpuError::Spawn)?;
        Ok(VcpuHandle {
            id,
            tx: ev_tx,
            rx: resp_rx,
            thread: Some(thread),
        })
    }

    fn thread_main(
        mut self,
        buses: &Buses,
        events: Receiver<VcpuEvent>,
        resp: Sender<VcpuResponse>,
    ) {
        KVM_RUN_PTR.with(|p| p.set(self.fd.get_kvm_run() as *mut kvm_run));
        let mut running = true;
        // A command sent before KVM_RUN_PTR was set got a kick that did nothing: look at the
        // commands once before the first KVM_RUN. Every later kick sets immediate_exit.
        let mut commands_first = true;
        'outer: loop {
            if running && !commands_first {
                match self.run_once(buses) {
                    Ok(true) => continue,
                    Ok(false) => running = false,
                    Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                        self.fd.set_kvm_immediate_exit(0);
                    }
                    Err(e) => {
                        error!(vcpu = self.id, error = %e, "KVM_RUN failed");
                        self.exit.notify(VmExit::Error(format!(
                            "KVM_RUN failed on vCPU {}: {e}",
                            self.id
                        )));
                        running = false;
                    }
                }
            }
            commands_first = false;
            // Drain commands; block for one while not running.
            loop {
                let ev = if running {
                    match events.try_recv() {
                        Ok(ev) => ev,
                        Err(_) => continue 'outer,
                    }
                } else {
                    match events.recv() {
                        Ok(ev) => ev,
                        Err(_) => break 'outer,
                    }
                };
                let answer = match ev {
                    VcpuEvent::Pause => {
                        running = false;
                        VcpuResponse::Paused
                    }
                    VcpuEvent::Resume => {
                        running = true;
                        VcpuResponse::Resumed
                    }
                    VcpuEvent::SaveState => match self.save_state() {
                        Ok(s) => VcpuResponse::State(Box::new(s)),
                        Err(e) => VcpuResponse::Error(e.to_string()),
                    },
                    VcpuEvent::Finish => {
                        let _ = resp.send(VcpuResponse::Finished);
                        break 'outer;
                    }
                };
                if resp.send(answer).is_err() {
                    break 'outer;
                }
            }
        }
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
    }
}

/// The VMM's side of a running vCPU thread.
pub struct VcpuHandle {
    id: u8,
    tx: Sender<VcpuEvent>,
    rx: Receiver<VcpuResponse>,
    thread: Option<JoinHandle<()>>,
}

/// How long a vCPU may take to answer a command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

impl VcpuHandle {
    /// Sends `ev`, kicks the thread out of KVM_RUN and waits for its answer.
    pub fn request(&self, ev: VcpuEvent) -> Result<VcpuResponse, VcpuError> {
        self.tx
            .send(ev)
            .map_err(|_| VcpuError::NoResponse(self.id))?;
        if let Some(t) = &self.thread {
            let _ = t.kill(kick_signal());
        }
        match self.rx.recv_timeout(RESPONSE_TIMEOUT) {
            Ok(VcpuResponse::Error(msg)) => Err(VcpuError::Thread { id: self.id, msg }),
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                Err(VcpuError::NoResponse(self.id))
            }
        }
    }

    /// The state of the (paused) vCPU, read on its thread.
    pub fn save_state(&self) -> Result<VcpuState, VcpuError> {
        match self.request(VcpuEvent::SaveState)? {
            VcpuResponse::State(s) => Ok(*s),
            _ => Err(VcpuError::Thread {
                id: self.id,
                msg: "answered a state request oddly".into(),
            }),
        }
    }

    /// Ends the thread and joins it.
    pub fn finish(mut self) {
        let _ = self.request(VcpuEvent::Finish);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
