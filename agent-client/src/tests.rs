//! Timeouts of the client, against sockets that never answer.

use std::os::unix::net::UnixListener;
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
    let path = dir.join("silent.sock");
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
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "hull-agent-client-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
