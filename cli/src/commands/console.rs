//! `hull console`: a root shell (or a command) in the guest of a vm container's pod, outside
//! its containers, through the pod's agent (Kata's debug console); `--log` prints the guest's
//! serial console. A host container has no guest: refused, pointing at `hull exec`.

use hull_runtime::pod::Containers;
use oci_spec::runtime::Process;

use super::{exec, Globals, Target};
use crate::args::ExecArgs;
use crate::error::{Error, Result};

/// `hull console [--log] ID [CMD...]`.
pub fn run(g: &Globals, id: &str, log: bool, command: Vec<String>) -> Result<i32> {
    let target = Target::of(g, id);
    let served = match &target {
        Target::Served(s) => s,
        Target::Host(p) => {
            // An unknown id says so; a host container is told where to go.
            p.state(id)?;
            return Err(Error::InvalidInput(format!(
                "container {id} runs on the host's kernel: it has no guest to open a console in \
                 (use hull exec to run a command in the container)"
            )));
        }
    };
    if log {
        print!("{}", served.console_log(id)?);
        return Ok(0);
    }
    let tty = nix::unistd::isatty(0).unwrap_or(false);
    let mut process = Process::default();
    process.set_args(Some(if command.is_empty() {
        vec!["sh".into()]
    } else {
        command
    }));
    process.set_terminal(Some(tty));
    process.set_console_size(if tty {
        crate::console::console_size()
    } else {
        None
    });
    // The console's own process: only the terminal comes from exec's flags.
    let a = ExecArgs {
        tty,
        id: id.to_string(),
        ..Default::default()
    };
    exec::start(&target, id, process, &a, true)
}
