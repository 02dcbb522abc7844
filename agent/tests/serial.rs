//! The virtio-serial transport: the agent serves ttrpc over a character device that is one byte
//! stream with no `accept`. On the host a pty stands in for /dev/vport0p1, bridged to a socket
//! for the runtime's client (whose host end of a virtio-serial chardev is a socket too).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::TestAgent;
use hull_agent_client::AgentClient;

/// Opens a pty pair in raw mode; returns the master and the slave's path (kept open).
fn raw_pty() -> (File, File, String) {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on the descriptor we just opened; the
    // name buffer outlives the call.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
        (File::from(OwnedFd::from_raw_fd(m)), slave, path)
    }
}

fn pump(mut from: impl Read + Send + 'static, mut to: impl Write + Send + 'static) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

#[test]
fn ttrpc_over_a_serial_port() {
    let (master, _slave, path) = raw_pty();
    let agent = TestAgent::start_listen(Some(&format!("serial:{path}")));
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut injector = master.try_clone().unwrap();
    pump(master.try_clone().unwrap(), theirs.try_clone().unwrap());
    pump(theirs, master);
    let c = AgentClient::from_stream_fd(OwnedFd::from(ours), Duration::from_secs(10)).unwrap();

    // The agent opens the port shortly after start: retry the first call.
    let mut ok = false;
    for _ in 0..50 {
        if matches!(c.check(), Ok(true)) {
            ok = true;
            break;
        }
    }
    assert!(ok, "no answer over the serial port:\n{}", agent.log());
    let (agent_version, proto) = c.version().unwrap();
    assert_eq!(proto, hull_protocols::PROTOCOL_VERSION);
    assert!(!agent_version.is_empty());

    // a container through the serial port
    let rootfs = agent.busybox_rootfs("s1");
    let spec = agent.spec("s1", &["/bin/echo", "over serial"], false, &["CAP_KILL"]);
    c.create_container("s1", &spec, &rootfs, vec![]).unwrap();
    c.start_container("s1").unwrap();
    assert_eq!(c.read_stdout_to_end("s1", "").unwrap(), b"over serial\n");
    assert_eq!(
        c.wait_process("s1", "", Duration::from_secs(20)).unwrap(),
        0
    );
    c.remove_container("s1").unwrap();

    // garbage on the port (a header announcing 4 GiB): the agent drops what is buffered,
    // resynchronises on the byte stream and serves the next request
    injector
        .write_all(&[0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 1, 1, 0, 0xde, 0xad])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.check().unwrap(), "{}", agent.log());
}

#[test]
fn vsock_listener_binds() {
    // This host has no vsock transport to connect through (no vhost-vsock, no loopback), so
    // only the agent's side can be checked: it binds AF_VSOCK and keeps serving.
    let port = 20_000 + std::process::id() % 20_000;
    let mut agent = TestAgent::start_listen(Some(&format!("vsock://{port}")));
    let start = std::time::Instant::now();
    while !agent.log().contains("listening on vsock") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "agent did not listen on vsock:\n{}",
            agent.log()
        );
        assert!(
            !agent.exited_within(Duration::from_millis(20)),
            "{}",
            agent.log()
        );
    }
    assert!(
        !agent.exited_within(Duration::from_millis(300)),
        "{}",
        agent.log()
    );
}
