//! Checkpoint and restore of a vm pod: the whole VM is saved, not its processes one by one,
//! so no CRIU is involved and any host kernel will do. A checkpoint directory holds the
//! hypervisor's save of the paused VM (devices and all of its RAM: every process, open file
//! and socket of the guest as it was), a copy of each container's rootfs image taken while
//! the VM was paused (so disk and memory agree; packed: its data without its holes), and `hull-pod.json` saying which containers
//! were in it. Only disk-rootfs pods ([`super::ROOTFS_ANNOTATION`]) can be saved: QEMU refuses
//! to migrate a VM while the guest has a 9p share mounted. Restoring starts a VM of the same
//! size from the checkpoint with copies of the images in the same disk slots; the agent
//! answers a new connection, the guest's clock is set from the host's, and the host side
//! (relays, waits) follows the restored processes under their old pids.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use hull_container::load_bundle_spec;
use hull_hypervisor::Disk;
use serde::{Deserialize, Serialize};

use super::devices::Slot;
use super::{vm_err, Vm, VmContainer, VmPod};
use crate::config::RootfsMode;
use crate::error::{Error, Result};
use crate::pod::{CreateOptions, Status};

/// The pod's description in a checkpoint directory.
const POD_FILE: &str = "hull-pod.json";
/// Bump when the layout of a checkpoint changes.
const FORMAT: u32 = 1;
/// The exit status of a process its pod's checkpoint stopped (SIGKILL's).
const KILLED: i32 = 137;

/// What `hull-pod.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct PodCheckpoint {
    format: u32,
    /// The pod's id.
    pod: String,
    /// The backend that saved the VM (only it can load it).
    backend: String,
    memory_mib: u32,
    vcpus: u32,
    disk_slots: usize,
    /// How many NICs the VM had (a restored one needs as many interfaces in its namespace).
    nics: usize,
    containers: Vec<SavedContainer>,
}

/// One container of a saved pod.
#[derive(Debug, Serialize, Deserialize)]
struct SavedContainer {
    id: String,
    created: String,
    annotations: HashMap<String, String>,
    status: Status,
    /// Its init's pid in the guest.
    init_pid: i32,
    terminal: bool,
    /// The disk slot its rootfs image was in, and the copy's file name in the checkpoint.
    slot: usize,
    image: String,
}

/// The checkpoint's copy of container `id`'s rootfs image.
fn image_name(id: &str) -> String {
    format!("rootfs-{id}.packed")
}

impl VmPod {
    /// Saves the pod into `dir` (created if missing): the VM is paused, saved with its
    /// rootfs images, and runs on if `leave_running`; otherwise the caller stops the pod. A
    /// pod that cannot be saved is refused in one line, before anything is paused.
    pub(super) fn checkpoint_pod(&self, dir: &Path, leave_running: bool) -> Result<()> {
        let mut g = self.inner.lock();
        let refuse = |why: String| Error::invalid(format!("checkpoint of pod {}: {why}", self.id));
        let mut containers = Vec::new();
        for (id, c) in &g.containers {
            if !matches!(c.status, Status::Running | Status::Paused | Status::Created) {
                return Err(refuse(format!("container {id} is {}", c.status)));
            }
            containers.push((id.clone(), c));
        }
        let vm =
            g.vm.as_ref()
                .ok_or_else(|| refuse("its vm is not running".into()))?;
        if vm.rootfs == RootfsMode::Share {
            return Err(refuse(
                "its root filesystems are shared from the host over virtio-9p, and QEMU cannot \
                 save a vm whose guest has a 9p share mounted; start the pod with \
                 [vm] rootfs = \"disk\" or the annotation io.hull.rootfs=disk"
                    .into(),
            ));
        }
        if !vm.pci.is_empty() {
            return Err(refuse(
                "it has PCI devices passed through (VFIO), whose state cannot be saved".into(),
            ));
        }
        if !vm.disks.is_empty() || vm.slots.iter().any(|s| matches!(s, Slot::Device { .. })) {
            return Err(refuse(
                "it has host block devices, which are not part of a checkpoint".into(),
            ));
        }
        if !vm.hv.capabilities().snapshot {
            return Err(refuse(format!(
                "the {} backend cannot save a vm",
                vm.hv.backend()
            )));
        }
        let mut saved = Vec::new();
        for (id, c) in containers {
            let slot = vm
                .slots
                .iter()
                .position(|s| matches!(s, Slot::Rootfs { container, .. } if *container == id))
                .ok_or_else(|| refuse(format!("container {id} has no rootfs image")))?;
            saved.push(SavedContainer {
                image: image_name(&id),
                created: c.created.clone(),
                annotations: c.annotations.clone(),
                status: c.status,
                init_pid: c.init_pid,
                terminal: c.terminal,
                slot,
                id,
            });
        }
        let meta = PodCheckpoint {
            format: FORMAT,
            pod: self.id.clone(),
            backend: vm.hv.backend().to_string(),
            memory_mib: vm.memory_mib,
            vcpus: vm.vcpus,
            disk_slots: vm.slots.len(),
            nics: vm.net.as_ref().map_or(0, |n| n.nics().len()),
            containers: saved,
        };
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let started = std::time::Instant::now();
        let vm = g.vm.as_mut().expect("checked above");
        vm.hv.pause().map_err(|e| vm_err("pause the pod's vm", e))?;
        let result = (|| {
            vm.hv
                .snapshot(dir)
                .map_err(|e| vm_err("save the pod's vm", e))?;
            for s in &vm.slots {
                if let Slot::Rootfs { container, image } = s {
                    super::rootdisk::pack_image(image, &dir.join(image_name(container)))?;
                }
            }
            let path = dir.join(POD_FILE);
            let json = serde_json::to_vec_pretty(&meta).expect("checkpoint serialises");
            fs::write(&path, json).map_err(|e| Error::io(&path, e))
        })();
        if leave_running || result.is_err() {
            if let Err(e) = vm.hv.resume() {
                tracing::warn!(pod = %self.id, "resume after the checkpoint: {e}");
            }
        } else {
            // Saved: the paused guest is not asked for anything more (it would not answer).
            if let Err(e) = vm.hv.stop(false) {
                tracing::warn!(pod = %self.id, "stop the saved vm: {e}");
            }
            // Its processes end as killed (runc's checkpoint kills them), not as lost.
            for c in g.containers.values_mut() {
                c.status = Status::Stopped;
                for p in c.procs.values() {
                    p.exit.lock().get_or_insert(KILLED);
                }
            }
        }
        if result.is_err() {
            let _ = fs::remove_file(dir.join(POD_FILE));
        }
        tracing::info!(pod = %self.id, dir = %dir.display(), elapsed = ?started.elapsed(), ok = result.is_ok(), "pod checkpointed");
        result
    }

    /// Starts this (not yet started) pod from the checkpoint in `dir`, whose container
    /// `opts.id` gets `opts`' stdio and console socket: returns its init's pid in the guest.
    /// The bundle gives the pod's network namespace and hooks, as at create. On error nothing
    /// is left.
    pub(super) fn restore_pod(&self, dir: &Path, opts: CreateOptions) -> Result<i32> {
        if self.inner.lock().vm.is_some() {
            return Err(Error::invalid(format!(
                "pod {}: its vm runs already",
                self.id
            )));
        }
        let restored = self.restore_inner(dir, opts);
        if restored.is_err() {
            self.shut_down();
        }
        restored
    }

    fn restore_inner(&self, dir: &Path, opts: CreateOptions) -> Result<i32> {
        let bad = |why: String| {
            Error::invalid(format!(
                "restore of {} from {}: {why}",
                opts.id,
                dir.display()
            ))
        };
        let path = dir.join(POD_FILE);
        let text = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                bad(format!("no checkpoint there ({POD_FILE} is missing)"))
            }
            _ => Error::io(&path, e),
        })?;
        let meta: PodCheckpoint =
            serde_json::from_slice(&text).map_err(|e| bad(format!("{POD_FILE}: {e}")))?;
        if meta.format != FORMAT {
            return Err(bad(format!(
                "format {} (this hull reads {FORMAT})",
                meta.format
            )));
        }
        if meta.pod != self.id || !meta.containers.iter().any(|c| c.id == opts.id) {
            return Err(bad(format!(
                "it holds pod {} (a restored pod keeps its id)",
                meta.pod
            )));
        }
        let spec = load_bundle_spec(&opts.bundle)?;
        let mut cfg = self.config.vm_config(&self.dir.join("vm"))?;
        cfg.memory_mib = meta.memory_mib;
        cfg.vcpus = meta.vcpus;
        cfg.disk_slots = meta.disk_slots;
        cfg.template_dir = None;
        cfg.restore_from = Some(dir.to_path_buf());
        let mut slots: Vec<Slot> = (0..meta.disk_slots).map(|_| Slot::Empty).collect();
        for c in &meta.containers {
            let image = self.dir.join("rootfs").join(format!("{}.img", c.id));
            super::rootdisk::unpack_image(&dir.join(&c.image), &image)?;
            cfg.filled_slots.push((
                c.slot,
                Disk {
                    path: image.clone(),
                    read_only: false,
                    shared: false,
                },
            ));
            let s = slots.get_mut(c.slot).ok_or_else(|| {
                bad(format!(
                    "container {} in slot {} of {}",
                    c.id, c.slot, meta.disk_slots
                ))
            })?;
            *s = Slot::Rootfs {
                container: c.id.clone(),
                image,
            };
        }
        let net = self.set_up_network(&opts.bundle, &spec)?;
        let nics = net.as_ref().map_or(0, |n| n.nics().len());
        if nics != meta.nics {
            if let Some(n) = net {
                self.tear_down_network(n);
            }
            return Err(bad(format!(
                "the pod's vm had {} network interfaces; the bundle's network namespace has {nics}",
                meta.nics
            )));
        }
        if let Some(n) = &net {
            cfg.nics = n.nics();
        }
        let booted = (|| {
            let mut hv = hull_hypervisor::select(self.config.hypervisor, cfg)
                .map_err(|e| vm_err("the pod's hypervisor", e))?;
            if hv.backend().to_string() != meta.backend {
                return Err(bad(format!(
                    "it was saved by the {} backend, not {}",
                    meta.backend,
                    hv.backend()
                )));
            }
            let vm = hv.boot().map_err(|e| vm_err("restore the pod's vm", e))?;
            let agent = hv
                .wait_for_agent(&vm)
                .map_err(|e| vm_err("restore the pod's vm", e))?;
            // The guest's clock stood still since the checkpoint: set it (and stir the host's
            // randomness in), as for a VM restored from a template.
            let hostname = spec.hostname().clone().unwrap_or_default();
            if let Err(e) = agent.setup_sandbox(&self.id, &hostname, &[], Vec::new()) {
                let _ = hv.stop(false);
                return Err(vm_err("set the restored guest's clock", e));
            }
            Ok((hv, agent))
        })();
        let (hv, agent) = match booted {
            Ok(x) => x,
            Err(e) => {
                if let Some(n) = net {
                    self.tear_down_network(n);
                }
                return Err(e);
            }
        };
        tracing::info!(pod = %self.id, dir = %dir.display(), "vm restored from a checkpoint");
        self.inner.lock().vm = Some(Vm {
            hv,
            agent: agent.clone(),
            net,
            disks: Vec::new(),
            slots,
            pci: Vec::new(),
            rootfs: RootfsMode::Disk,
            memory_mib: meta.memory_mib,
            vcpus: meta.vcpus,
        });
        self.watch_ooms(agent.clone());
        let hooks = spec.hooks().clone().unwrap_or_default();
        let mut stdio = Some(opts.stdio);
        let mut init = 0;
        for c in meta.containers {
            // The restored container gets the caller's stdio; others (a CRI pod's) none.
            let mine = c.id == opts.id;
            let proc_ = self.relay(
                &agent,
                &c.id,
                "",
                c.terminal,
                if mine {
                    opts.console_socket.as_deref()
                } else {
                    None
                },
                if mine {
                    stdio.take().unwrap_or_default()
                } else {
                    Default::default()
                },
            )?;
            if mine {
                init = c.init_pid;
                if let Some(p) = &opts.pid_file {
                    super::write_pid_file(p, c.init_pid)?;
                }
            }
            let mut procs = HashMap::new();
            procs.insert(c.init_pid, proc_);
            self.inner.lock().containers.insert(
                c.id.clone(),
                VmContainer {
                    bundle: opts.bundle.clone(),
                    rootfs: opts.bundle.join("rootfs"),
                    created: c.created,
                    annotations: c.annotations,
                    status: c.status,
                    init_pid: c.init_pid,
                    terminal: c.terminal,
                    mounts: Vec::new(),
                    procs,
                    poststart: if mine {
                        hooks.poststart().clone().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    poststop: if mine {
                        hooks.poststop().clone().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                },
            );
        }
        Ok(init)
    }
}
