//! hull-agent-client: the host's side of hull-agent, the guest agent of vm pods. Its one job
//! is reaching the agent and calling it: the transports (a unix socket, the host end of a
//! virtio-serial port, a hybrid vsock socket), the wait for a booting guest's agent
//! ([`AgentClient::wait_ready`]), and the typed, blocking ttrpc client.
//!
//! One [`AgentClient`] holds one ttrpc connection; calls may be made from several threads at
//! once (a blocking `wait` does not hold up `read_stdout` on another thread). Every call has a
//! timeout: the client's default, or the one given to the long-polling calls.

mod error;
#[cfg(test)]
mod tests;
mod transport;
mod vsock;
mod wait;

use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_protocols::agent as pb;
use hull_protocols::agent_ttrpc::AgentServiceClient;
use hull_protocols::health as hpb;
use hull_protocols::health_ttrpc::HealthClient;
use hull_protocols::ttrpc;

pub use error::{AgentClientError, Result};
pub use hull_net::PodNetwork;
pub use hull_protocols::agent::{
    BlockDevice, GuestDetailsResponse, StatsContainerResponse, Storage,
};
pub use vsock::HandshakeError;

/// How the host reaches the guest agent (what a hypervisor hands back for its VM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChannel {
    /// A unix socket whose other end is the agent's byte stream: the host end of QEMU's
    /// virtio-serial chardev (the guest's port `agent.0`), or a test agent's socket. A
    /// virtio-serial port carries one connection at a time: keep the one that answered.
    Unix(PathBuf),
    /// A hybrid vsock unix socket (Firecracker style): connect, send `CONNECT <port>\n`,
    /// read `OK <n>\n`, then the stream is the guest's AF_VSOCK connection.
    VsockUds {
        /// The host unix socket.
        path: PathBuf,
        /// The guest vsock port the agent listens on.
        port: u32,
    },
}

/// The default timeout of one call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Output of a process stream read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamChunk {
    /// The bytes read (empty at end of stream).
    pub data: Vec<u8>,
    /// No more data will come.
    pub eof: bool,
}

/// A connection to hull-agent.
#[derive(Clone)]
pub struct AgentClient {
    agent: AgentServiceClient,
    health: HealthClient,
    call_timeout: Duration,
    /// This connection's session, announced in every `Check` (see [`new_session`]).
    session: u64,
}

/// A random, non-zero session number for a new connection. The agent drops the answers to
/// requests a previous client on the same byte stream made once a `Check` announces a new
/// session: a restored VM's virtio-serial port carries both, and the new client's ttrpc
/// stream ids start at 1 again.
fn new_session() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom(2) writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let r = if n == b.len() as isize {
        u64::from_ne_bytes(b)
    } else {
        // No entropy yet (never on a host that runs VMs): time and pid differ per connection.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (u64::from(std::process::id()) << 32)
    };
    r.max(1)
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
}

impl AgentClient {
    /// Connects over `channel`, retrying until `connect_timeout` while the other end is not
    /// there yet (the socket does not exist or refuses; for hybrid vsock, the guest port does
    /// not listen yet). The client's calls time out after `call_timeout`.
    pub fn connect(
        channel: &AgentChannel,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Self> {
        let fd = match channel {
            AgentChannel::Unix(path) => transport::connect_unix(path, connect_timeout)?,
            AgentChannel::VsockUds { path, port } => {
                vsock::connect_retrying(path, *port, connect_timeout)?
            }
        };
        Self::from_stream_fd(fd, call_timeout)
    }

    /// Connects over a unix socket (retrying until `connect_timeout` while the agent starts).
    pub fn connect_unix(
        path: impl AsRef<Path>,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Self> {
        let fd = transport::connect_unix(path.as_ref(), connect_timeout)?;
        Self::from_stream_fd(fd, call_timeout)
    }

    /// Uses an already-connected byte-stream socket (e.g. the host end of a virtio-serial
    /// chardev, or a vsock connection set up by a proxy).
    pub fn from_stream_fd(fd: OwnedFd, call_timeout: Duration) -> Result<Self> {
        transport::set_blocking(&fd).map_err(|e| AgentClientError::Transport {
            method: "connect",
            message: e.to_string(),
        })?;
        let client = ttrpc::Client::new(fd.into_raw_fd())
            .map_err(|e| AgentClientError::from_ttrpc("connect", e))?;
        Ok(AgentClient {
            agent: AgentServiceClient::new(client.clone()),
            health: HealthClient::new(client),
            call_timeout,
            session: new_session(),
        })
    }

    /// The default per-call timeout.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    fn t(&self) -> ttrpc::context::Context {
        ctx(self.call_timeout)
    }

    /// Health check: `Ok(true)` when the agent is serving.
    pub fn check(&self) -> Result<bool> {
        self.check_within(self.call_timeout)
    }

    /// Health check bounded by `timeout` instead of the client's default.
    fn check_within(&self, timeout: Duration) -> Result<bool> {
        let r = self
            .health
            .check(
                ctx(timeout),
                &hpb::CheckRequest {
                    session: self.session,
                    ..Default::default()
                },
            )
            .map_err(|e| AgentClientError::from_ttrpc("Check", e))?;
        Ok(r.status.enum_value_or_default() == hpb::health_check_response::ServingStatus::SERVING)
    }

    /// The agent's and protocol's versions.
    pub fn version(&self) -> Result<(String, String)> {
        let r = self
            .health
            .version(self.t(), &hpb::CheckRequest::new())
            .map_err(|e| AgentClientError::from_ttrpc("Version", e))?;
        Ok((r.agent_version, r.protocol_version))
    }

    /// Sets the guest's clock to the host's and stirs host randomness into its entropy pool
    /// (a guest restored from a VM template wakes up with the template's), then the
    /// hostname and DNS, and mounts the sandbox's storages.
    pub fn setup_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        dns: &[String],
        storages: Vec<Storage>,
    ) -> Result<()> {
        let req = pb::SetupSandboxRequest {
            sandbox_id: sandbox_id.to_string(),
            hostname: hostname.to_string(),
            dns: dns.to_vec(),
            storages,
            host_time_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            entropy: host_random(32)?,
            ..Default::default()
        };
        self.agent
            .setup_sandbox(self.t(), &req)
            .map_err(|e| AgentClientError::from_ttrpc("SetupSandbox", e))?;
        Ok(())
    }

    /// Removes every container; with `power_off`, the guest then shuts down.
    pub fn destroy_sandbox(&self, sandbox_id: &str, power_off: bool) -> Result<()> {
        let req = pb::DestroySandboxRequest {
            sandbox_id: sandbox_id.to_string(),
            power_off,
            ..Default::default()
        };
        self.agent
            .destroy_sandbox(self.t(), &req)
            .map_err(|e| AgentClientError::from_ttrpc("DestroySandbox", e))?;
        Ok(())
    }

    /// Kernel, memory, CPUs, cgroup version and allowed roots of the guest.
    pub fn guest_details(&self) -> Result<GuestDetailsResponse> {
        self.agent
            .get_guest_details(self.t(), &pb::Empty::new())
            .map_err(|e| AgentClientError::from_ttrpc("GetGuestDetails", e))
    }

    /// Creates a container from an OCI spec (as JSON) on a rootfs inside the guest's allowed
    /// roots; returns the pid of its init in the guest.
    pub fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: &[u8],
        rootfs: &str,
        storages: Vec<Storage>,
    ) -> Result<u32> {
        self.create_container_with_disks(container_id, oci_spec_json, rootfs, storages, vec![])
    }

    /// [`Self::create_container`] whose spec names block devices that are disks of the VM.
    pub fn create_container_with_disks(
        &self,
        container_id: &str,
        oci_spec_json: &[u8],
        rootfs: &str,
        storages: Vec<Storage>,
        block_devices: Vec<BlockDevice>,
    ) -> Result<u32> {
        let req = pb::CreateContainerRequest {
            container_id: container_id.to_string(),
            oci_spec_json: oci_spec_json.to_vec(),
            rootfs: rootfs.to_string(),
            storages,
            block_devices,
            ..Default::default()
        };
        let r = self
            .agent
            .create_container(self.t(), &req)
            .map_err(|e| AgentClientError::from_ttrpc("CreateContainer", e))?;
        Ok(r.pid)
    }

    fn creq(container_id: &str) -> pb::ContainerRequest {
        pb::ContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        }
    }

    fn preq(container_id: &str, exec_id: &str) -> pb::ProcessRequest {
        pb::ProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }
    }

    /// Starts a created container.
    pub fn start_container(&self, container_id: &str) -> Result<()> {
        self.agent
            .start_container(self.t(), &Self::creq(container_id))
            .map_err(|e| AgentClientError::from_ttrpc("StartContainer", e))?;
        Ok(())
    }

    /// Kills what is left of a container and deletes it.
    pub fn remove_container(&self, container_id: &str) -> Result<()> {
        self.agent
            .remove_container(self.t(), &Self::creq(container_id))
            .map_err(|e| AgentClientError::from_ttrpc("RemoveContainer", e))?;
        Ok(())
    }

    /// Freezes a container.
    pub fn pause_container(&self, container_id: &str) -> Result<()> {
        self.agent
            .pause_container(self.t(), &Self::creq(container_id))
            .map_err(|e| AgentClientError::from_ttrpc("PauseContainer", e))?;
        Ok(())
    }

    /// Thaws a container.
    pub fn resume_container(&self, container_id: &str) -> Result<()> {
        self.agent
            .resume_container(self.t(), &Self::creq(container_id))
            .map_err(|e| AgentClientError::from_ttrpc("ResumeContainer", e))?;
        Ok(())
    }

    /// Applies new resource limits (an OCI `linux.resources` object as JSON).
    pub fn update_container(&self, container_id: &str, resources_json: &[u8]) -> Result<()> {
        let req = pb::UpdateContainerRequest {
            container_id: container_id.to_string(),
            resources_json: resources_json.to_vec(),
            ..Default::default()
        };
        self.agent
            .update_container(self.t(), &req)
            .map_err(|e| AgentClientError::from_ttrpc("UpdateContainer", e))?;
        Ok(())
    }

    /// Cgroup metrics of a container.
    pub fn stats_container(&self, container_id: &str) -> Result<StatsContainerResponse> {
        self.agent
            .stats_container(self.t(), &Self::creq(container_id))
            .map_err(|e| AgentClientError::from_ttrpc("StatsContainer", e))
    }

    /// Pids (in the guest) of every process of a container.
    pub fn list_processes(&self, container_id: &str) -> Result<Vec<u32>> {
        let r = self
            .agent
            .list_processes(self.t(), &Self::creq(container_id))
            .map_err(|e| AgentClientError::from_ttrpc("ListProcesses", e))?;
        Ok(r.pids)
    }

    /// Starts a process (an OCI `process` object as JSON) in a running container.
    pub fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &[u8],
    ) -> Result<u32> {
        self.exec(container_id, exec_id, process_json, false)
    }

    /// Starts a process in the guest itself, as root, outside container `container_id`'s
    /// namespaces (the guest console), addressed as that container's `exec_id`.
    pub fn exec_in_guest(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &[u8],
    ) -> Result<u32> {
        self.exec(container_id, exec_id, process_json, true)
    }

    fn exec(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &[u8],
        in_guest: bool,
    ) -> Result<u32> {
        let req = pb::ExecProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            process_json: process_json.to_vec(),
            in_guest,
            ..Default::default()
        };
        let r = self
            .agent
            .exec_process(self.t(), &req)
            .map_err(|e| AgentClientError::from_ttrpc("ExecProcess", e))?;
        Ok(r.pid)
    }

    /// Sends a signal to one process ("" = init), or with `all` to every process.
    pub fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let req = pb::SignalProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.agent
            .signal_process(self.t(), &req)
            .map_err(|e| AgentClientError::from_ttrpc("SignalProcess", e))?;
        Ok(())
    }

    /// Waits up to `timeout` for a process to exit; returns its exit code (128+signal if killed).
    pub fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<i32> {
        let r = self
            .agent
            .wait_process(ctx(timeout), &Self::preq(container_id, exec_id))
            .map_err(|e| AgentClientError::from_ttrpc("WaitProcess", e))?;
        Ok(r.status)
    }

    /// Writes to a process's stdin.
    pub fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> Result<usize> {
        let req = pb::WriteStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            data: data.to_vec(),
            ..Default::default()
        };
        let r = self
            .agent
            .write_stdin(self.t(), &req)
            .map_err(|e| AgentClientError::from_ttrpc("WriteStdin", e))?;
        Ok(r.len as usize)
    }

    fn rreq(container_id: &str, exec_id: &str, len: usize) -> pb::ReadStreamRequest {
        pb::ReadStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            len: u32::try_from(len).unwrap_or(u32::MAX),
            ..Default::default()
        }
    }

    /// Reads what a process wrote to stdout (blocks until data or end, up to the call timeout).
    pub fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        len: usize,
    ) -> Result<StreamChunk> {
        let r = self
            .agent
            .read_stdout(self.t(), &Self::rreq(container_id, exec_id, len))
            .map_err(|e| AgentClientError::from_ttrpc("ReadStdout", e))?;
        Ok(StreamChunk {
            data: r.data,
            eof: r.eof,
        })
    }

    /// Reads what a process wrote to stderr (blocks until data or end, up to the call timeout).
    pub fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        len: usize,
    ) -> Result<StreamChunk> {
        let r = self
            .agent
            .read_stderr(self.t(), &Self::rreq(container_id, exec_id, len))
            .map_err(|e| AgentClientError::from_ttrpc("ReadStderr", e))?;
        Ok(StreamChunk {
            data: r.data,
            eof: r.eof,
        })
    }

    /// Reads a stream to its end (until `eof`), for processes that finish.
    pub fn read_stdout_to_end(&self, container_id: &str, exec_id: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let c = self.read_stdout(container_id, exec_id, 64 * 1024)?;
            if c.eof {
                return Ok(out);
            }
            out.extend_from_slice(&c.data);
        }
    }

    /// Closes a process's stdin.
    pub fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        self.agent
            .close_stdin(self.t(), &Self::preq(container_id, exec_id))
            .map_err(|e| AgentClientError::from_ttrpc("CloseStdin", e))?;
        Ok(())
    }

    /// Resizes a process's terminal.
    pub fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<()> {
        let req = pb::TtyWinResizeRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            rows,
            cols,
            ..Default::default()
        };
        self.agent
            .tty_win_resize(self.t(), &req)
            .map_err(|e| AgentClientError::from_ttrpc("TtyWinResize", e))?;
        Ok(())
    }

    /// Waits up to `timeout` for a container to hit its memory limit; returns its id.
    pub fn get_oom_event(&self, timeout: Duration) -> Result<String> {
        let r = self
            .agent
            .get_oom_event(ctx(timeout), &pb::Empty::new())
            .map_err(|e| AgentClientError::from_ttrpc("GetOOMEvent", e))?;
        Ok(r.container_id)
    }

    /// Sets the pod's network up in the guest: NIC i (found by `device_macs[i]`, the MAC the
    /// hypervisor gave it) becomes `network.interfaces[i]`, then the routes and neighbours.
    /// Returns what the guest applied (IPv6 is left out when the guest has none).
    pub fn setup_network(
        &self,
        network: &PodNetwork,
        device_macs: &[[u8; 6]],
    ) -> Result<PodNetwork> {
        let request = |message: String| AgentClientError::Request {
            method: "SetupNetwork",
            message,
        };
        let req = pb::SetupNetworkRequest {
            network_json: serde_json::to_string(network).map_err(|e| request(e.to_string()))?,
            device_macs: device_macs.iter().map(|m| m.to_vec()).collect(),
            ..Default::default()
        };
        let r = self
            .agent
            .setup_network(self.t(), &req)
            .map_err(|e| AgentClientError::from_ttrpc("SetupNetwork", e))?;
        serde_json::from_str(&r.applied_json)
            .map_err(|e| request(format!("the agent's answer: {e}")))
    }
}

/// `n` bytes from the host's CSPRNG (getrandom(2)).
fn host_random(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(AgentClientError::Request {
                method: "SetupSandbox",
                message: format!("getrandom: {e}"),
            });
        }
        filled += r as usize;
    }
    Ok(buf)
}
