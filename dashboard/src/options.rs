//! `hull-dashboard`'s command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8930";

/// hull-dashboard: a web page listing every container hull knows on this host, with a
/// terminal into each running one.
#[derive(Debug, Clone, Parser)]
#[command(name = "hull-dashboard", version, about)]
pub struct Options {
    /// Address to serve on (port 0: any free port; the address is printed).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Token every request must carry (`?token=T` or `Authorization: Bearer T`); required
    /// when --listen is not a loopback address.
    #[arg(long, env = "HULL_DASHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// hull state roots to show (repeatable).
    #[arg(long = "root", default_value = "/run/hull")]
    pub roots: Vec<PathBuf>,
    /// Where the containerd shim keeps one state root per containerd namespace.
    #[arg(long, default_value = hull_runtime::config::DEFAULT_SHIM_ROOT)]
    pub containerd_root: PathBuf,
    /// The `hull` binary to run (default: the one next to this binary).
    #[arg(long)]
    pub hull: Option<PathBuf>,
}

impl Options {
    /// The `hull` binary: `--hull`, else `hull` next to this executable; it must exist.
    pub fn hull_binary(&self) -> crate::Result<PathBuf> {
        let path = match &self.hull {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("hull")))
                .unwrap_or_else(|| PathBuf::from("hull")),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(crate::Error::MissingBinary(path))
        }
    }
}
