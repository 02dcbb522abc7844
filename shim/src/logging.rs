//! Logs to containerd: the shim writes `tracing` lines into the `log` FIFO that
//! containerd reads from the bundle (never blocking: a full FIFO drops lines).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// A writer on a shared fd: each line is one `write(2)`, with no lock to hold across
/// the forks the sandbox makes.
#[derive(Clone)]
struct FifoWriter(Arc<File>);

impl Write for FifoWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A full or readerless FIFO drops the line rather than blocking the shim.
        let _ = (&*self.0).write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for FifoWriter {
    type Writer = FifoWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Log to `./log` (containerd's FIFO in the bundle) at info, or debug with `-debug`;
/// `HULL_SHIM_LOG` overrides the filter.
pub fn init(debug: bool) {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("log");
    let Ok(file) = file else {
        return;
    };
    // libcgroups warns about every controller this host lacks: keep that quiet.
    let default = if debug {
        "debug"
    } else {
        "info,libcgroups=error"
    };
    let filter =
        EnvFilter::try_from_env("HULL_SHIM_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(FifoWriter(Arc::new(file)))
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
