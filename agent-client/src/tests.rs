//! Timeouts of the client, against sockets that never answer; the crate's test helpers.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use super::{AgentClient, AgentClientError};

#[test]
fn connect_gives_up_after_its_timeout() {
    let dir = std::env::temp_dir().join(format!("hull-agent-client-{}", std::process::id()));
    let path = dir.join("missing.sock");
    let t = Instant::now();
    let e = AgentClient::connect_unix(&path, Duration::from_millis(200), Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(e, AgentClientError::Connect { .. }), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_silent_agent_times_the_call_out() {
    let dir = tempdir();
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Accept and hold the connection without ever answering.
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let c = AgentClient::connect_unix(&path, Duration::from_secs(2), Duration::from_millis(300))
        .unwrap();
    let t = Instant::now();
    let e = c.check().unwrap_err();
    assert!(matches!(e, AgentClientError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    drop(holder.join());
}

/// A scratch directory under /tmp (unix socket paths must stay short), removed on drop.
pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hull-agent-client-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Serves one hybrid vsock handshake on `listener`: reads the request line, answers
/// `answer` (None: hang up), returns the request line and the stream.
pub(crate) fn serve_handshake(
    listener: &UnixListener,
    answer: Option<&[u8]>,
) -> (String, UnixStream) {
    let (mut s, _) = listener.accept().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    if let Some(a) = answer {
        s.write_all(a).unwrap();
    } else {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    (String::from_utf8(line).unwrap(), s)
}
