//! `hull ps`: the processes of a container (`ps` output filtered to them, or their pids as
//! JSON; a vm container's pids are the guest's).

use super::{Globals, Target};
use crate::args::Format;
use crate::error::{Error, Result};

/// `hull ps`.
pub fn run(g: &Globals, id: &str, format: Format, ps_args: &[String]) -> Result<i32> {
    let target = Target::of(g, id);
    let sandbox = target.containers();
    let in_guest = target.in_vm();
    let pids = sandbox.pids(id)?;
    if format == Format::Json {
        println!("{}", serde_json::to_string(&pids).unwrap_or_default());
        return Ok(0);
    }
    if in_guest {
        // The host's ps(1) cannot see a VM's processes: their guest pids.
        println!("PID (in the guest)");
        for p in pids {
            println!("{p}");
        }
        return Ok(0);
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| Error::io("ps", e))?;
    if !out.status.success() {
        return Err(Error::InvalidInput(format!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| Error::InvalidInput("ps output has no PID column".into()))?;
    println!("{header}");
    for l in lines {
        if let Some(p) = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
        {
            if pids.contains(&p) {
                println!("{l}");
            }
        }
    }
    Ok(0)
}
