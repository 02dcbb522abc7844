//! `hull-dashboard`: parses its options, sets up logging (stderr, `RUST_LOG` or info for
//! this crate) and serves; any error is one stderr line and exit status 1.

use std::process::ExitCode;

use clap::Parser;
use hull_dashboard::{server, Options};

fn main() -> ExitCode {
    let opts = Options::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hull_dashboard=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hull-dashboard: start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(server::serve(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hull-dashboard: {e}");
            ExitCode::from(1)
        }
    }
}
