//! Where the agent listens: vsock, a virtio-serial port, or a unix socket (tests).

use std::fs::{File, OpenOptions};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{AgentError, Result};
use crate::server::{serve_connection, ConnectionEnd, Services};

/// The default vsock port of the agent.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// A listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `vsock://PORT`: AF_VSOCK, any CID.
    Vsock(u32),
    /// `serial:/dev/vport0p1`: a virtio-serial character device, one byte stream.
    Serial(PathBuf),
    /// `unix:///path`: a unix socket (tests on the host).
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || AgentError::InvalidArgument(format!("bad listen address {s:?}"));
        if let Some(port) = s.strip_prefix("vsock://") {
            let port = if port.is_empty() {
                DEFAULT_VSOCK_PORT
            } else {
                port.parse().map_err(|_| bad())?
            };
            Ok(Listen::Vsock(port))
        } else if let Some(path) = s.strip_prefix("serial:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(bad());
            }
            Ok(Listen::Serial(PathBuf::from(path)))
        } else if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            Ok(Listen::Unix(PathBuf::from(path)))
        } else {
            Err(bad())
        }
    }
}

fn spawn_connection(services: &Arc<Services>, fd: OwnedFd) {
    let services = services.clone();
    let read = File::from(fd);
    let write = match read.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "dup connection");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("ttrpc-conn".into())
        .spawn(move || {
            let end = serve_connection(&services, read, write);
            tracing::debug!(?end, "connection ended");
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot serve connection");
    }
}

/// Serves forever on `listen`.
pub fn serve(listen: &Listen, services: Arc<Services>) -> Result<()> {
    match listen {
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)
                .map_err(|e| AgentError::io(format!("bind {path:?}"), e))?;
            tracing::info!(?path, "listening on unix socket");
            for conn in l.incoming() {
                match conn {
                    Ok(s) => spawn_connection(&services, OwnedFd::from(s)),
                    Err(e) => tracing::warn!(error = %e, "accept"),
                }
            }
            Ok(())
        }
        Listen::Vsock(port) => {
            let l = vsock_listen(*port)?;
            tracing::info!(port, "listening on vsock");
            loop {
                // SAFETY: accept4 on our listening socket; null address pointers are allowed.
                let fd = unsafe {
                    libc::accept4(
                        std::os::fd::AsRawFd::as_raw_fd(&l),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if fd < 0 {
                    tracing::warn!(error = %std::io::Error::last_os_error(), "vsock accept");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                // SAFETY: `fd` is a new descriptor from accept4.
                spawn_connection(&services, unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        Listen::Serial(path) => serve_serial(path, &services),
    }
}

fn vsock_listen(port: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(AgentError::last_os("socket(AF_VSOCK)"));
    }
    // SAFETY: `fd` is new and owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_vm is valid; fields set below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: `addr` is a valid sockaddr_vm of the given length.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(AgentError::last_os(format!("bind vsock port {port}")));
    }
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(fd, 16) } != 0 {
        return Err(AgentError::last_os("listen vsock"));
    }
    Ok(sock)
}

/// A virtio-serial port is one byte stream for the life of the VM: serve it, and when framing
/// is lost (garbage from the host) drop what is buffered and start over on a frame boundary.
fn serve_serial(path: &PathBuf, services: &Arc<Services>) -> Result<()> {
    // A port whose driver was just loaded as a module appears a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut first = true;
    loop {
        let opened = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
        };
        let dev = match opened {
            Ok(d) => d,
            Err(e) if first => return Err(AgentError::io(format!("open {path:?}"), e)),
            // Reopening (the host's next connection): the port may be busy a moment while
            // the old connection's writer closes.
            Err(e) => {
                tracing::warn!(error = %e, ?path, "reopen the serial port");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        first = false;
        make_raw_if_tty(&dev);
        let write = dev
            .try_clone()
            .map_err(|e| AgentError::io(format!("dup {path:?}"), e))?;
        tracing::info!(?path, "serving on virtio-serial port");
        match serve_connection(services, dev, write) {
            ConnectionEnd::Closed => {
                // The host side is not connected: wait before reopening.
                std::thread::sleep(Duration::from_millis(100));
            }
            ConnectionEnd::ProtocolError(e) => {
                tracing::warn!(error = %e, "framing lost on serial port; resynchronising");
                drain(path);
            }
        }
    }
}

/// A serial console that is a tty must not cook the byte stream (echo, CR/LF, signals).
fn make_raw_if_tty(dev: &File) {
    use std::os::fd::AsRawFd;
    let fd = dev.as_raw_fd();
    // SAFETY: isatty/tcgetattr/tcsetattr on an open descriptor with a valid termios buffer.
    unsafe {
        if libc::isatty(fd) != 1 {
            return;
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
    }
}

fn drain(path: &PathBuf) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    let mut buf = [0u8; 4096];
    let mut quiet = 0;
    while quiet < 10 {
        match std::io::Read::read(&mut &f, &mut buf) {
            Ok(n) if n > 0 => quiet = 0,
            _ => {
                quiet += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            "vsock://1024".parse::<Listen>().unwrap(),
            Listen::Vsock(1024)
        );
        assert_eq!(
            "vsock://".parse::<Listen>().unwrap(),
            Listen::Vsock(DEFAULT_VSOCK_PORT)
        );
        assert_eq!(
            "serial:/dev/vport0p1".parse::<Listen>().unwrap(),
            Listen::Serial("/dev/vport0p1".into())
        );
        assert_eq!(
            "unix:///run/a.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/a.sock".into())
        );
        assert!("tcp://1".parse::<Listen>().is_err());
        assert!("unix://rel".parse::<Listen>().is_err());
    }
}
