//! hull-dashboard's one job: serve one small web page that shows every container hull knows
//! on this host (the CLI's state roots and the containerd shim's per-namespace roots) with
//! its pod, isolation, guest, uptime and live CPU and memory use, and an in-browser terminal
//! (xterm.js over a websocket to a pty on the server) into each running container.
//!
//! The dashboard never reads hull's state itself: it runs the `hull` binary beside it
//! (`hull --root R list --format json`, `events --stats`, `exec -t`), so the CLI stays the
//! one source of truth. Only what the CLI does not say is read here: whether a container is
//! served by a sandbox server (its pod has a VM), and the VM's size from its VMM's command
//! line (see [`inventory`]).
//!
//! Security: loopback by default; any other address needs a token, which every request
//! (page, assets, JSON, websocket) must then carry ([`auth`]).

pub mod auth;
pub mod error;
pub mod inventory;
pub mod options;
pub mod server;
pub mod terminal;

pub use error::{Error, Result};
pub use options::Options;
