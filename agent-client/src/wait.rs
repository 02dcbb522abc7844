//! Waiting for a booting guest's agent: connect over its channel and call `Check` until it
//! answers SERVING, while the caller watches what runs the guest.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{AgentChannel, AgentClient, AgentClientError, Result};

/// How often the caller's liveness check runs while an attempt is under way.
const ALIVE_POLL: Duration = Duration::from_millis(20);
/// Pause between failed attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

impl AgentClient {
    /// Waits until `deadline` for the agent on `channel` to answer `Check` with SERVING, and
    /// returns that connection (on a virtio-serial channel a new connection would cost the
    /// guest's reopen of its port: keep this one). Failed attempts are retried on a fresh
    /// connection while time is left. `alive` is asked every few milliseconds whether what
    /// runs the agent still runs; its `Err` ends the wait at once ([`AgentClientError::Gone`]).
    /// NOT_SERVING and a hybrid vsock answer that no booting guest explains end it too; the
    /// deadline ends it with [`AgentClientError::NotReady`]. One attempt's `Check` waits at
    /// most `attempt` for its answer before a fresh connection is tried (a guest restored from
    /// a template, whose agent runs already, can lose the first request on its serial port).
    /// Calls of the returned client time out after `call_timeout`.
    pub fn wait_ready(
        channel: &AgentChannel,
        deadline: Instant,
        call_timeout: Duration,
        attempt: Duration,
        mut alive: impl FnMut() -> std::result::Result<(), String>,
    ) -> Result<AgentClient> {
        // The attempts run on their own thread: a `Check` may block until the guest opens
        // its end, and meanwhile `alive` must keep being asked. A thread left behind ends
        // with its attempt (bounded by the deadline, or sooner when the VM is killed).
        let waited_from = Instant::now();
        let (tx, rx) = mpsc::channel();
        let ch = channel.clone();
        std::thread::Builder::new()
            .name("agent-wait".into())
            .spawn(move || {
                let _ = tx.send(attempt_until(&ch, deadline, call_timeout, attempt));
            })
            .map_err(|e| AgentClientError::Transport {
                method: "Check",
                message: format!("spawn the agent-wait thread: {e}"),
            })?;
        loop {
            match rx.recv_timeout(ALIVE_POLL) {
                Ok(r) => return r,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(AgentClientError::Transport {
                        method: "Check",
                        message: "the agent-wait thread died".into(),
                    })
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            alive().map_err(|reason| AgentClientError::Gone { reason })?;
            if Instant::now() >= deadline {
                return Err(AgentClientError::NotReady {
                    waited: waited_from.elapsed(),
                    last: "an attempt was still under way".into(),
                });
            }
        }
    }
}

/// Connects and calls `Check` until SERVING, NOT_SERVING, a failure no booting guest
/// explains, or `deadline`.
fn attempt_until(
    channel: &AgentChannel,
    deadline: Instant,
    call_timeout: Duration,
    attempt_bound: Duration,
) -> Result<AgentClient> {
    let start = Instant::now();
    let mut last = String::from("no attempt");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AgentClientError::NotReady {
                waited: start.elapsed(),
                last,
            });
        }
        let attempt = AgentClient::connect(channel, left, call_timeout)
            .and_then(|c| c.check_within(left.min(attempt_bound)).map(|ok| (c, ok)));
        match attempt {
            Ok((c, true)) => return Ok(c),
            Ok((_, false)) => return Err(AgentClientError::NotServing),
            Err(AgentClientError::Handshake(e)) if !e.is_transient() => return Err(e.into()),
            Err(e) => {
                tracing::debug!(error = %e, "agent not ready yet");
                last = e.to_string();
            }
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::tests::{serve_handshake, tempdir};

    /// An agent socket that accepts one connection and never answers on it: the attempt
    /// blocks in `Check`.
    fn silent_agent(
        dir: &std::path::Path,
    ) -> (
        AgentChannel,
        std::thread::JoinHandle<std::io::Result<std::os::unix::net::UnixStream>>,
    ) {
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        (AgentChannel::Unix(path), holder)
    }

    struct Serving;
    impl hull_protocols::health_ttrpc::Health for Serving {
        fn check(
            &self,
            _ctx: &hull_protocols::ttrpc::TtrpcContext,
            _req: hull_protocols::health::CheckRequest,
        ) -> hull_protocols::ttrpc::Result<hull_protocols::health::HealthCheckResponse> {
            let mut r = hull_protocols::health::HealthCheckResponse::new();
            r.status = hull_protocols::health::health_check_response::ServingStatus::SERVING.into();
            Ok(r)
        }
    }

    #[test]
    fn an_agent_that_comes_up_late_is_waited_for_and_its_connection_kept() {
        let dir = tempdir();
        let path = dir.path().join("agent.sock");
        let bind = format!("unix://{}", path.display());
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut s = hull_protocols::ttrpc::Server::new()
                .bind(&bind)
                .unwrap()
                .register_service(hull_protocols::health_ttrpc::create_health(
                    std::sync::Arc::new(Serving),
                ));
            s.start().unwrap();
            s
        });
        let mut asked = 0;
        let c = AgentClient::wait_ready(
            &AgentChannel::Unix(path),
            Instant::now() + Duration::from_secs(10),
            Duration::from_secs(5),
            Duration::from_secs(5),
            || {
                asked += 1;
                Ok(())
            },
        )
        .unwrap();
        assert!(asked > 0, "the liveness check ran while waiting");
        assert_eq!(c.call_timeout(), Duration::from_secs(5));
        assert!(c.check().unwrap(), "the returned connection answers");
        server.join().unwrap().shutdown();
    }

    #[test]
    fn a_dead_vmm_ends_the_wait_at_once_with_its_reason() {
        let dir = tempdir();
        let (channel, holder) = silent_agent(dir.path());
        let t = Instant::now();
        let mut asked = 0;
        let e = AgentClient::wait_ready(
            &channel,
            Instant::now() + Duration::from_secs(20),
            Duration::from_secs(20),
            Duration::from_secs(20),
            || {
                asked += 1;
                if asked < 3 {
                    Ok(())
                } else {
                    Err("qemu exited: exit status: 1".into())
                }
            },
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(matches!(e, AgentClientError::Gone { .. }), "{e}");
        assert!(e.to_string().contains("qemu exited: exit status: 1"), "{e}");
        drop(holder.join());
    }

    #[test]
    fn a_silent_agent_is_not_ready_at_the_deadline() {
        let dir = tempdir();
        let (channel, holder) = silent_agent(dir.path());
        let t = Instant::now();
        let e = AgentClient::wait_ready(
            &channel,
            Instant::now() + Duration::from_millis(400),
            Duration::from_secs(20),
            Duration::from_secs(20),
            || Ok(()),
        )
        .unwrap_err();
        assert!(matches!(e, AgentClientError::NotReady { .. }), "{e}");
        assert!(
            t.elapsed() >= Duration::from_millis(400) && t.elapsed() < Duration::from_secs(3),
            "{:?}",
            t.elapsed()
        );
        drop(holder.join());
    }

    #[test]
    fn a_garbled_vsock_handshake_is_not_retried() {
        let dir = tempdir();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || serve_handshake(&listener, Some(b"NOPE\n")));
        let e = AgentClient::wait_ready(
            &AgentChannel::VsockUds { path, port: 1024 },
            Instant::now() + Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(1),
            || Ok(()),
        )
        .unwrap_err();
        assert!(matches!(e, AgentClientError::Handshake(_)), "{e}");
        assert!(e.to_string().contains("NOPE"), "{e}");
        drop(server.join());
    }

    #[test]
    fn an_unanswered_check_is_retried_on_a_fresh_connection_after_the_attempt_bound() {
        // The first connection swallows its request (as a restored guest's serial port can);
        // the second is served.
        let dir = tempdir();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let served = dir.path().join("served.sock");
        let bind = format!("unix://{}", served.display());
        let mut server = hull_protocols::ttrpc::Server::new()
            .bind(&bind)
            .unwrap()
            .register_service(hull_protocols::health_ttrpc::create_health(
                std::sync::Arc::new(Serving),
            ));
        server.start().unwrap();
        let proxy = std::thread::spawn(move || {
            let (swallowed, _) = listener.accept().unwrap();
            let (s, _) = listener.accept().unwrap();
            let up = std::os::unix::net::UnixStream::connect(&served).unwrap();
            let (s2, up2) = (s.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut &s2, &mut &up2));
            let _ = std::io::copy(&mut &up, &mut &s);
            drop(swallowed);
        });
        let t = Instant::now();
        let c = AgentClient::wait_ready(
            &AgentChannel::Unix(path),
            Instant::now() + Duration::from_secs(20),
            Duration::from_secs(20),
            Duration::from_millis(300),
            || Ok(()),
        )
        .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(c.call_timeout(), Duration::from_secs(20));
        assert!(c.check().unwrap());
        drop(c);
        server.shutdown();
        drop(proxy);
    }
}
