//! `hull list`: every container of the state root, host and vm.

use hull_runtime::pod::Containers;

use super::Globals;
use crate::args::Format;
use crate::error::Result;
use crate::server::{self, ServedContainer};

/// `hull list`.
pub fn run(g: &Globals, format: Format, quiet: bool) -> Result<i32> {
    let sandbox = g.host_pod();
    let mut all = sandbox.list()?;
    // vm containers, each behind its sandbox server.
    if let Ok(entries) = std::fs::read_dir(sandbox.root()) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if server::is_vm_container(sandbox.root(), &id) {
                if let Ok(st) = ServedContainer::new(sandbox.root(), &id).state(&id) {
                    all.push(st);
                }
            }
        }
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    if quiet {
        for s in &all {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string(&all).unwrap_or_default());
        return Ok(0);
    }
    println!(
        "{:<12} {:<10} {:<10} {:<40} {:<30} OWNER",
        "ID", "PID", "STATUS", "BUNDLE", "CREATED"
    );
    for s in &all {
        let owner = if s.owner.is_empty() { "root" } else { &s.owner };
        println!(
            "{:<12} {:<10} {:<10} {:<40} {:<30} {}",
            s.id,
            s.pid,
            s.status,
            s.bundle.display(),
            s.created,
            owner
        );
    }
    Ok(0)
}
