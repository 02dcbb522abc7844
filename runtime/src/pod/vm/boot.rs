//! Booting a vm pod's VM (sized by its first container) and stopping it.

use std::fs;
use std::path::Path;

use hull_agent_client::{AgentClient, Storage};
use hull_hypervisor::{Disk, Hypervisor, Needs, PciDevice, Share, SharedFs, VmConfig};
use oci_spec::runtime::Spec;

use super::network::PodNet;
use super::{vm_err, Vm, VmPod, GUEST_SHARED, SHARE_TAG};
use crate::config::{RootfsMode, VmSection};
use crate::error::{Error, Result};

impl VmPod {
    /// What a pod's VM needs of its hypervisor with `config` and its root filesystems
    /// `rootfs`: the 9p share (`share`), and the disk slots `[vm] disk_slots` asks, plus one
    /// per container image (`disk`). `hull check` reports what `auto` picks for it.
    pub fn vm_needs(config: &VmSection, rootfs: RootfsMode) -> Needs {
        match rootfs {
            RootfsMode::Share => Needs {
                shared_fs: Some(SharedFs::Virtio9p),
                disk_slots: config.disk_slots,
                ..Needs::default()
            },
            RootfsMode::Disk => Needs {
                disk_slots: config.disk_slots + super::rootdisk::ROOTFS_SLOTS,
                ..Needs::default()
            },
        }
    }

    /// The pod's VM, sized by the first container's spec (its memory limit is added to the
    /// configured memory, its CPU quota raises the vCPUs), sharing the pod's directory.
    fn vm_config(&self, spec: &Spec, rootfs: RootfsMode) -> Result<VmConfig> {
        let mut cfg = self.config.vm_config(&self.dir.join("vm"))?;
        if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            if let Some(limit) = res.memory().as_ref().and_then(|m| m.limit()) {
                if limit > 0 {
                    cfg.memory_mib += (limit as u64).div_ceil(1 << 20) as u32;
                }
            }
            if let Some(cpu) = res.cpu() {
                if let (Some(q), Some(p)) = (cpu.quota(), cpu.period()) {
                    if q > 0 && p > 0 {
                        cfg.vcpus = cfg.vcpus.max((q as u64).div_ceil(p) as u32);
                    }
                }
            }
        }
        match rootfs {
            RootfsMode::Share => cfg.shares.push(Share {
                host_dir: self.shared(),
                tag: SHARE_TAG.into(),
            }),
            // Each container's rootfs image takes a slot, beside the slots for devices.
            RootfsMode::Disk => cfg.disk_slots += super::rootdisk::ROOTFS_SLOTS,
        }
        Ok(cfg)
    }

    /// Boots the pod's VM with the first container's block devices as its disks and its PCI
    /// devices passed through (`devices.rs`), and the pod's network (`network.rs`), and sets the pod up in it,
    /// on the agent connection that answered the boot (the pod keeps it).
    pub(super) fn boot(&self, bundle: &Path, spec: &Spec) -> Result<()> {
        let rootfs = self.rootfs_mode(spec)?;
        let mut cfg = self.vm_config(spec, rootfs)?;
        let shared = self.shared();
        fs::create_dir_all(&shared).map_err(|e| Error::io(&shared, e))?;
        let disks = self.claim_disks(spec)?;
        let slots = (0..cfg.disk_slots)
            .map(|_| super::devices::Slot::Empty)
            .collect();
        cfg.disks = disks
            .iter()
            .map(|d| Disk {
                path: d.host.clone(),
                read_only: d.read_only,
                shared: d.shared,
            })
            .collect();
        let pci = self.claim_pci(spec)?;
        for p in &pci {
            tracing::info!(pod = %self.id, address = %p.address, group = %p.group, "pci device passed through");
        }
        cfg.pci_devices = pci
            .iter()
            .map(|p| PciDevice {
                address: p.address.clone(),
            })
            .collect();
        let (memory_mib, vcpus) = (cfg.memory_mib, cfg.vcpus);
        let net = self.set_up_network(bundle, spec)?;
        if let Some(n) = &net {
            cfg.nics = n.nics();
        }
        match self.boot_with(cfg, spec, net.as_ref(), rootfs) {
            Ok((hv, agent)) => {
                self.inner.lock().vm = Some(Vm {
                    hv,
                    agent,
                    net,
                    disks,
                    slots,
                    pci,
                    rootfs,
                    memory_mib,
                    vcpus,
                });
                Ok(())
            }
            Err(e) => {
                if let Some(n) = net {
                    self.tear_down_network(n);
                }
                Err(e)
            }
        }
    }

    fn boot_with(
        &self,
        cfg: VmConfig,
        spec: &Spec,
        net: Option<&PodNet>,
        rootfs: RootfsMode,
    ) -> Result<(Box<dyn Hypervisor>, AgentClient)> {
        let booting = format!("boot the pod's vm (kernel {})", cfg.kernel.display());
        let mut hv = hull_hypervisor::select(self.config.hypervisor, cfg)
            .map_err(|e| vm_err("the pod's hypervisor", e))?;
        // A backend that cannot fill disk slots (rootfs = "disk") was refused by `select`:
        // the config's needs (`vm_needs`) count the slots.
        let vm = hv.boot().map_err(|e| vm_err(&booting, e))?;
        let agent = hv.wait_for_agent(&vm).map_err(|e| vm_err(&booting, e))?;
        tracing::info!(pod = %self.id, backend = %hv.backend(), boot = ?vm.started.elapsed(), dir = %self.dir.display(), "vm up");
        // Disk mode: nothing is shared, so the 9p share stays unmounted (a VM with a mounted
        // 9p share cannot be migrated, hence not checkpointed).
        let storages = match rootfs {
            RootfsMode::Share => vec![Storage {
                source: SHARE_TAG.into(),
                fstype: "9p".into(),
                options: vec![
                    "trans=virtio".into(),
                    "version=9p2000.L".into(),
                    "msize=262144".into(),
                    "cache=mmap".into(),
                ],
                mount_point: GUEST_SHARED.into(),
                ..Default::default()
            }],
            RootfsMode::Disk => Vec::new(),
        };
        let hostname = spec.hostname().clone().unwrap_or_else(|| "hull".into());
        let set_up = agent
            .setup_sandbox(&self.id, &hostname, &[], storages)
            .map_err(|e| vm_err("set up the pod in the vm", e))
            .and_then(|()| match net {
                Some(n) => self.configure_guest_network(&agent, n),
                None => Ok(()),
            });
        if let Err(e) = set_up {
            let _ = hv.stop(false);
            return Err(e);
        }
        self.watch_ooms(agent.clone());
        Ok((hv, agent))
    }

    /// Stops the VM and removes its directory. One path for every backend: the agent removes
    /// the containers (and powers the guest off where that is how the VM ends cleanly) on the
    /// pod's connection, then the hypervisor stops the VM.
    pub(super) fn shut_down(&self) {
        let vm = self.inner.lock().vm.take();
        if let Some(mut vm) = vm {
            let power_off = vm.hv.capabilities().stops_by_guest_power_off;
            let powering_off = match vm.agent.destroy_sandbox(&self.id, power_off) {
                Ok(()) => power_off,
                Err(e) => {
                    tracing::debug!(pod = %self.id, "destroy the sandbox in the vm: {e}");
                    false
                }
            };
            if let Err(e) = vm.hv.stop(powering_off) {
                tracing::warn!(pod = %self.id, "stop the pod's vm: {e}");
            }
            if let Some(n) = vm.net {
                self.tear_down_network(n);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_vm_needs_what_vm_needs_says() {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, initrd) = (dir.path().join("vmlinux"), dir.path().join("initrd"));
        fs::write(&kernel, b"").unwrap();
        fs::write(&initrd, b"").unwrap();
        let section = VmSection {
            kernel: Some(kernel),
            initrd: Some(initrd),
            ..Default::default()
        };
        let pod = VmPod::new(dir.path().join("root"), "pod", section.clone());
        for mode in [RootfsMode::Share, RootfsMode::Disk] {
            let cfg = pod.vm_config(&Spec::default(), mode).unwrap();
            assert_eq!(cfg.needs(), VmPod::vm_needs(&section, mode), "{mode:?}");
            let shares = usize::from(mode == RootfsMode::Share);
            assert_eq!(cfg.shares.len(), shares, "the pod's shared directory");
        }
    }
}
