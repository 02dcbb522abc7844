//! `hull update`: new resource limits for a container, from `-r FILE` (or stdin) and flags.

use std::io::Read;
use std::path::Path;

use oci_spec::runtime::{LinuxPidsBuilder, LinuxResources};

use super::{Globals, Target};
use crate::args::UpdateArgs;
use crate::error::{Error, Result};

fn read_resources(path: &Path) -> Result<LinuxResources> {
    let mut text = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut text)
            .map_err(|e| Error::io("stdin", e))?;
    } else {
        text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    }
    serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidInput(format!("resources {}: {e}", path.display())))
}

/// `hull update`.
pub fn run(g: &Globals, a: UpdateArgs) -> Result<i32> {
    let target = Target::of(g, &a.id);
    let sandbox = target.containers();
    let any_flag = a.memory.is_some()
        || a.memory_swap.is_some()
        || a.memory_reservation.is_some()
        || a.cpu_shares.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_period.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
        || a.pids_limit.is_some();
    // No -r and no flag: the resources JSON comes on stdin.
    let mut r = match &a.resources {
        Some(p) => read_resources(p)?,
        None if !any_flag => read_resources(Path::new("-"))?,
        None => LinuxResources::default(),
    };
    let inv = |e: oci_spec::OciSpecError| Error::InvalidInput(e.to_string());
    if a.memory.is_some() || a.memory_swap.is_some() || a.memory_reservation.is_some() {
        let mut m = (*r.memory()).unwrap_or_default();
        if let Some(v) = a.memory {
            m.set_limit(Some(v));
        }
        if let Some(v) = a.memory_swap {
            m.set_swap(Some(v));
        }
        if let Some(v) = a.memory_reservation {
            m.set_reservation(Some(v));
        }
        r.set_memory(Some(m));
    }
    if a.cpu_shares.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_period.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
    {
        let mut c = r.cpu().clone().unwrap_or_default();
        if let Some(v) = a.cpu_shares {
            c.set_shares(Some(v));
        }
        if let Some(v) = a.cpu_quota {
            c.set_quota(Some(v));
        }
        if let Some(v) = a.cpu_period {
            c.set_period(Some(v));
        }
        if let Some(v) = &a.cpuset_cpus {
            c.set_cpus(Some(v.clone()));
        }
        if let Some(v) = &a.cpuset_mems {
            c.set_mems(Some(v.clone()));
        }
        r.set_cpu(Some(c));
    }
    if let Some(v) = a.pids_limit {
        r.set_pids(Some(
            LinuxPidsBuilder::default().limit(v).build().map_err(inv)?,
        ));
    }
    sandbox.update(&a.id, &r)?;
    Ok(0)
}
