//! Booting a vm pod's VM (sized by its first container) and stopping it.

use std::fs;

use hull_agent_client::Storage;
use oci_spec::runtime::Spec;

use super::{lock, vm_err, Vm, VmPod, GUEST_SHARED, SHARE_TAG};
use crate::error::{Error, Result};

impl VmPod {
    /// Boots the pod's VM, sized by the first container's spec (its memory limit is added to
    /// the configured memory, its CPU quota raises the vCPUs), and sets the pod up in it.
    pub(super) fn boot(&self, spec: &Spec) -> Result<()> {
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
        let shared = self.shared();
        fs::create_dir_all(&shared).map_err(|e| Error::io(&shared, e))?;
        cfg.shares.push(hull_hypervisor::Share {
            host_dir: shared.clone(),
            tag: SHARE_TAG.into(),
        });
        let kernel = cfg.kernel.clone();
        let mut hv =
            hull_hypervisor::select(self.config.hypervisor, cfg).map_err(|e| vm_err("vm", e))?;
        let booted = hv.boot().map_err(|e| {
            vm_err(
                format!("boot the pod's vm (kernel {})", kernel.display()),
                e,
            )
        })?;
        tracing::info!(pod = %self.id, backend = hv.backend(), boot = ?booted.boot_time, dir = %self.dir.display(), "vm up");
        let storage = Storage {
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
        };
        let hostname = spec.hostname().clone().unwrap_or_else(|| "hull".into());
        if let Err(e) = booted
            .agent
            .setup_sandbox(&self.id, &hostname, &[], vec![storage])
        {
            let _ = hv.stop();
            return Err(vm_err("set up the pod in the vm", e));
        }
        self.watch_ooms(booted.agent.clone());
        lock(&self.inner).vm = Some(Vm {
            hv,
            agent: booted.agent,
        });
        Ok(())
    }

    /// Stops the VM and removes its directory.
    pub(super) fn shut_down(&self) {
        let vm = lock(&self.inner).vm.take();
        if let Some(mut vm) = vm {
            let _ = vm.agent.destroy_sandbox(&self.id, false);
            if let Err(e) = vm.hv.stop() {
                tracing::warn!(pod = %self.id, "stop the pod's vm: {e}");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(&self.root);
    }
}
