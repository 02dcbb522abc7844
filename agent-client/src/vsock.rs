//! Hybrid vsock (Firecracker's and hull-vmm's host side of a guest's AF_VSOCK): the host
//! connects to the VMM's unix socket, sends `CONNECT <port>\n`, reads `OK <n>\n`, and the
//! stream is then the guest's vsock connection on `port`.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest handshake answer read (`OK 4294967295\n` is 14 bytes).
const MAX_HANDSHAKE_LINE: usize = 32;
/// Bound of one handshake while retrying (a booting guest's vsock driver may not be up yet).
const HANDSHAKE_ATTEMPT: Duration = Duration::from_secs(2);
/// Pause between handshake attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Why a hybrid vsock handshake gave no stream.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket could not be reached.
    #[error("connect {path:?}: {source}")]
    Connect {
        /// The hybrid vsock socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM closed the stream: nothing listens on the guest port (yet).
    #[error("guest vsock port {port} refused the connection")]
    Refused {
        /// The guest port.
        port: u32,
    },
    /// The answer was not `OK <n>`.
    #[error("vsock handshake for port {port}: expected \"OK <n>\", got {line:?}")]
    Garbled {
        /// The guest port.
        port: u32,
        /// What came back.
        line: String,
    },
    /// No answer within the bound.
    #[error("vsock handshake for port {port}: no answer within {bound:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// The bound that passed.
        bound: Duration,
    },
    /// Writing or reading the socket failed.
    #[error("vsock handshake for port {port}: {source}")]
    Io {
        /// The guest port.
        port: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl HandshakeError {
    /// Whether a guest that is still booting explains it (worth another attempt).
    pub fn is_transient(&self) -> bool {
        match self {
            HandshakeError::Connect { source, .. } => matches!(
                source.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused
            ),
            HandshakeError::Refused { .. } | HandshakeError::Timeout { .. } => true,
            HandshakeError::Io { source, .. } => matches!(
                source.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
            HandshakeError::Garbled { .. } => false,
        }
    }
}

/// Opens a stream to guest vsock `port` through the hybrid vsock socket at `path`: connect,
/// send `CONNECT <port>\n`, read `OK <n>\n` within `bound`. One attempt.
pub(crate) fn vsock_connect(
    path: &Path,
    port: u32,
    bound: Duration,
) -> std::result::Result<UnixStream, HandshakeError> {
    let mut stream = UnixStream::connect(path).map_err(|source| HandshakeError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let io = |source| HandshakeError::Io { port, source };
    let bound = bound.max(Duration::from_millis(1));
    stream.set_write_timeout(Some(bound)).map_err(io)?;
    stream.set_read_timeout(Some(bound)).map_err(io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    // Byte by byte: what follows the line is the guest's stream and must stay in the socket.
    let deadline = Instant::now() + bound;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) if line.is_empty() => return Err(HandshakeError::Refused { port }),
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_HANDSHAKE_LINE {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(HandshakeError::Timeout { port, bound });
            }
            Err(e) if e.kind() == ErrorKind::Interrupted && Instant::now() < deadline => {}
            Err(e) => return Err(io(e)),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    match line.strip_prefix("OK ").map(|n| n.trim().parse::<u32>()) {
        Some(Ok(_)) => {
            stream.set_read_timeout(None).map_err(io)?;
            stream.set_write_timeout(None).map_err(io)?;
            Ok(stream)
        }
        _ => Err(HandshakeError::Garbled { port, line }),
    }
}

/// [`vsock_connect`] retried while the failure is transient (see
/// [`HandshakeError::is_transient`]) until `timeout`; the stream as a plain descriptor.
pub(crate) fn connect_retrying(
    path: &Path,
    port: u32,
    timeout: Duration,
) -> std::result::Result<OwnedFd, HandshakeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match vsock_connect(path, port, left.min(HANDSHAKE_ATTEMPT)) {
            Ok(stream) => return Ok(OwnedFd::from(stream)),
            Err(e) if e.is_transient() && Instant::now() + RETRY_PAUSE < deadline => {
                std::thread::sleep(RETRY_PAUSE)
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::tests::{serve_handshake, tempdir};

    #[test]
    fn handshake_answered_ok_gives_the_guest_stream_and_reads_no_further() {
        let dir = tempdir();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (line, mut s) = serve_handshake(&listener, Some(b"OK 1073741824\nfrom-guest"));
            let mut got = [0u8; 9];
            s.read_exact(&mut got).unwrap();
            (line, got)
        });
        let mut s = vsock_connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut first = [0u8; 10];
        s.read_exact(&mut first).unwrap();
        assert_eq!(
            &first, b"from-guest",
            "the guest's first bytes stay in the stream"
        );
        s.write_all(b"from-host").unwrap();
        let (line, got) = server.join().unwrap();
        assert_eq!(line, "CONNECT 1024");
        assert_eq!(&got, b"from-host");
    }

    #[test]
    fn handshake_refused_garbled_silent_or_absent_is_a_clear_error_in_bounded_time() {
        let dir = tempdir();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            // Refused: the VMM hangs up (nothing listens on the guest port).
            serve_handshake(&listener, None);
            // Garbled: not "OK <n>".
            let _keep = serve_handshake(&listener, Some(b"NOPE 1024\n"));
            // Silent: accepts, never answers; held until the client gave up.
            let (_, s) = serve_handshake(&listener, Some(b""));
            let mut b = [0u8; 1];
            let _ = (&s).read(&mut b);
        });
        let bound = Duration::from_millis(300);

        let e = vsock_connect(&path, 1024, bound).unwrap_err();
        assert!(matches!(e, HandshakeError::Refused { port: 1024 }), "{e}");
        assert!(e.is_transient());
        assert_eq!(
            e.to_string(),
            "guest vsock port 1024 refused the connection"
        );

        let e = vsock_connect(&path, 1024, bound).unwrap_err();
        assert!(matches!(e, HandshakeError::Garbled { .. }), "{e}");
        assert!(!e.is_transient());
        assert!(
            e.to_string()
                .contains(r#"expected "OK <n>", got "NOPE 1024""#),
            "{e}"
        );

        let t = Instant::now();
        let e = vsock_connect(&path, 1024, bound).unwrap_err();
        assert!(matches!(e, HandshakeError::Timeout { .. }), "{e}");
        assert!(
            t.elapsed() >= bound && t.elapsed() < bound * 5,
            "{:?}",
            t.elapsed()
        );
        server.join().unwrap();

        let e = vsock_connect(&dir.path().join("none.sock"), 1024, bound).unwrap_err();
        assert!(matches!(e, HandshakeError::Connect { .. }), "{e}");
        assert!(e.is_transient(), "a socket not there yet is waited for");
    }
}
