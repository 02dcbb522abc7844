//! `hull`: the runc-compatible command line over hull's pods. The binary parses, checks the
//! binary guard, sets up logging and dispatches to one file per verb (`commands/`); the
//! library (`hull-runtime`) acts. `server/` is the sandbox server that owns a vm container's
//! VM between the one-shot verbs of Docker and Podman.

mod args;
mod commands;
mod console;
mod error;
mod foreground;
mod guard;
mod logging;
mod server;
mod spec;

fn main() -> std::process::ExitCode {
    commands::main()
}
