//! The agent's services: the state of the sandbox and the handlers of every request.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_protocols::agent::{self as pb};
use hull_protocols::agent_ttrpc::AgentService;
use hull_protocols::health::{self as hpb, health_check_response::ServingStatus};
use hull_protocols::health_ttrpc::Health;
use parking_lot::{Mutex, RwLock};
use ttrpc::TtrpcContext;

use crate::container::{self, Container, StateDirs};
use crate::error::{AgentError, Result};
use crate::netns::PodNetns;
use crate::paths::AllowedRoots;
use crate::reaper::Reaper;
use crate::{mounts, sysinfo};

/// How the agent was configured at start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Roots inside which host-supplied paths must resolve.
    pub allowed_roots: AllowedRoots,
    /// State and bundle directories.
    pub dirs: StateDirs,
    /// Where SetupSandbox writes DNS settings.
    pub resolv_conf: PathBuf,
    /// The agent is PID 1: DestroySandbox powers the machine (or pid namespace) off.
    pub is_init: bool,
}

/// The agent: its configuration and the containers of the sandbox.
pub struct Agent {
    cfg: AgentConfig,
    reaper: Arc<Reaper>,
    containers: RwLock<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    oom_seen: Mutex<HashMap<String, u64>>,
    pod_netns: PodNetns,
    /// What each container's create mounted (its rootfs disk), unmounted with it.
    storages: Mutex<HashMap<String, Vec<PathBuf>>>,
}

fn deadline(ctx: &TtrpcContext) -> Option<Duration> {
    (ctx.timeout_nano > 0).then(|| Duration::from_nanos(ctx.timeout_nano as u64))
}

/// How long a stream read may wait for data: a little less than the caller's timeout, so that
/// "no data yet" reaches it before it gives up.
fn read_wait(ctx: &TtrpcContext) -> Option<Duration> {
    deadline(ctx).map(|d| {
        d.saturating_sub(d / 10)
            .saturating_sub(Duration::from_millis(50))
    })
}

/// Runs a handler and maps its error onto a ttrpc status.
fn reply<T>(r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        tracing::debug!(error = %e, "request failed");
        e.into()
    })
}

impl Agent {
    /// A new agent; `reaper` must already be reaping.
    pub fn new(cfg: AgentConfig, reaper: Arc<Reaper>) -> Arc<Self> {
        Self::with_pod_netns(cfg, reaper, PodNetns::none())
    }

    /// A new agent whose containers all join `netns`, where the pod's network is set up
    /// (see [`crate::netns`]).
    pub fn with_pod_netns(cfg: AgentConfig, reaper: Arc<Reaper>, netns: PodNetns) -> Arc<Self> {
        Arc::new(Agent {
            cfg,
            reaper,
            containers: RwLock::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            oom_seen: Mutex::new(HashMap::new()),
            storages: Mutex::new(HashMap::new()),
            pod_netns: netns,
        })
    }

    /// The generated ttrpc method tables of every service the agent serves.
    pub fn services(self: &Arc<Self>) -> crate::server::Services {
        crate::server::Services::new([
            hull_protocols::agent_ttrpc::create_agent_service(self.clone()),
            hull_protocols::health_ttrpc::create_health(self.clone()),
        ])
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::ContainerNotFound(id.to_string()))
    }

    fn do_create(&self, req: &pb::CreateContainerRequest) -> Result<u32> {
        let id = req.container_id.as_str();
        hull_container::validate_id(id)?;
        {
            let mut creating = self.creating.lock();
            if creating.contains(id) || self.container(id).is_ok() {
                return Err(AgentError::ContainerExists(id.to_string()));
            }
            creating.insert(id.to_string());
        }
        let mut mounted = Vec::new();
        let result = (|| {
            for s in &req.storages {
                mounted.push(mounts::mount_storage(&self.cfg.allowed_roots, s)?);
            }
            let rootfs = self.cfg.allowed_roots.resolve_existing(&req.rootfs)?;
            if !rootfs.is_dir() {
                return Err(AgentError::InvalidArgument(format!(
                    "rootfs {:?} is not a directory",
                    req.rootfs
                )));
            }
            let mut spec = container::prepare_spec(id, &req.oci_spec_json, &rootfs)?;
            self.pod_netns.join(&mut spec);
            crate::devices::attach_disks(&mut spec, &req.block_devices, Path::new("/sys/block"))?;
            Container::create(id, spec, &self.cfg.dirs, &self.reaper)
        })();
        self.creating.lock().remove(id);
        let c = match result {
            Ok(c) => c,
            Err(e) => {
                mounted
                    .iter()
                    .rev()
                    .for_each(|m| mounts::unmount_storage(m));
                return Err(e);
            }
        };
        let pid = c.init.pid as u32;
        self.containers.write().insert(id.to_string(), Arc::new(c));
        if !mounted.is_empty() {
            self.storages.lock().insert(id.to_string(), mounted);
        }
        Ok(pid)
    }

    fn do_remove(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        c.remove(&self.reaper)?;
        self.containers.write().remove(id);
        self.oom_seen.lock().remove(id);
        let mounted = self.storages.lock().remove(id).unwrap_or_default();
        mounted
            .iter()
            .rev()
            .for_each(|m| mounts::unmount_storage(m));
        Ok(())
    }

    /// Sets the pod's network up in the pod's network namespace, which every container of the
    /// pod joins (or, without one, in the agent's); returns what was applied, as JSON.
    fn setup_network(&self, req: &pb::SetupNetworkRequest) -> Result<String> {
        let network: hull_net::PodNetwork = serde_json::from_str(&req.network_json)
            .map_err(|e| AgentError::InvalidArgument(format!("network: {e}")))?;
        let macs = req
            .device_macs
            .iter()
            .map(|m| {
                <[u8; 6]>::try_from(m.as_slice()).map_err(|_| {
                    AgentError::InvalidArgument(format!("device MAC of {} bytes", m.len()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if macs.len() != network.interfaces.len() {
            return Err(AgentError::InvalidArgument(format!(
                "{} interfaces but {} device MACs",
                network.interfaces.len(),
                macs.len()
            )));
        }
        let applied = match self.pod_netns.path() {
            Some(pod) => hull_net::configure_in(pod, &network, &macs)?,
            None => hull_net::configure(&network, &macs)?,
        };
        tracing::info!(
            interfaces = applied.interfaces.len(),
            routes = applied.routes.len(),
            "pod network set up"
        );
        serde_json::to_string(&applied)
            .map_err(|e| AgentError::InvalidArgument(format!("network: {e}")))
    }

    fn remove_all(&self) {
        let ids: Vec<String> = self.containers.read().keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.do_remove(&id) {
                tracing::warn!(container_id = %id, error = %e, "remove on destroy failed");
            }
        }
    }

    fn wait_oom(&self, timeout: Option<Duration>) -> Result<String> {
        let start = Instant::now();
        loop {
            let containers: Vec<Arc<Container>> =
                self.containers.read().values().cloned().collect();
            {
                let mut seen = self.oom_seen.lock();
                for c in containers {
                    let n = c.oom_kills();
                    let last = seen.entry(c.id.clone()).or_insert(0);
                    if n > *last {
                        *last = n;
                        tracing::info!(container_id = %c.id, "OOM kill");
                        return Ok(c.id.clone());
                    }
                }
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                return Err(AgentError::FailedPrecondition(
                    "no OOM event before the deadline".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl AgentService for Agent {
    fn setup_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: pb::SetupSandboxRequest,
    ) -> ttrpc::Result<pb::Empty> {
        reply((|| {
            // Only the guest's PID 1 owns the machine's clock and entropy pool (an agent
            // tested on the host must not touch the host's).
            if self.cfg.is_init {
                if req.host_time_unix_ns > 0 {
                    sysinfo::set_realtime(req.host_time_unix_ns)?;
                }
                if !req.entropy.is_empty() {
                    sysinfo::add_entropy(&req.entropy)?;
                }
            }
            if !req.hostname.is_empty() {
                sysinfo::set_hostname(&req.hostname)?;
            }
            if !req.dns.is_empty() {
                let mut text = String::new();
                for line in &req.dns {
                    if line.contains('\n') {
                        return Err(AgentError::InvalidArgument(format!(
                            "bad DNS line {line:?}"
                        )));
                    }
                    text.push_str(line);
                    text.push('\n');
                }
                std::fs::write(&self.cfg.resolv_conf, text)
                    .map_err(|e| AgentError::io(format!("write {:?}", self.cfg.resolv_conf), e))?;
            }
            for s in &req.storages {
                mounts::mount_storage(&self.cfg.allowed_roots, s)?;
            }
            tracing::info!(sandbox_id = %req.sandbox_id, "sandbox set up");
            Ok(pb::Empty::new())
        })())
    }

    fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: pb::DestroySandboxRequest,
    ) -> ttrpc::Result<pb::Empty> {
        tracing::info!(sandbox_id = %req.sandbox_id, power_off = req.power_off, "destroying sandbox");
        self.remove_all();
        // What the containers wrote to the pod's disks reaches them before the VM goes (a
        // backend may end the VM without a power-off).
        // SAFETY: sync(2) takes no arguments.
        unsafe { libc::sync() };
        if req.power_off {
            let is_init = self.cfg.is_init;
            // Answer first, then go down.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                crate::init::power_off(is_init);
            });
        }
        Ok(pb::Empty::new())
    }

    fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::Empty,
    ) -> ttrpc::Result<pb::GuestDetailsResponse> {
        let mut r = sysinfo::guest_details();
        r.allowed_roots = self
            .cfg
            .allowed_roots
            .roots()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Ok(r)
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::CreateContainerRequest,
    ) -> ttrpc::Result<pb::CreateContainerResponse> {
        let r = self.do_create(&req);
        if let Err(e) = &r {
            tracing::warn!(container_id = %req.container_id, error = %e, "create failed");
        }
        reply(r.map(|pid| pb::CreateContainerResponse {
            pid,
            ..Default::default()
        }))
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        reply(
            self.container(&req.container_id)
                .and_then(|c| c.start(&self.reaper)),
        )?;
        Ok(pb::Empty::new())
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        reply(self.do_remove(&req.container_id))?;
        Ok(pb::Empty::new())
    }

    fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        reply(self.container(&req.container_id).and_then(|c| c.pause()))?;
        Ok(pb::Empty::new())
    }

    fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        reply(self.container(&req.container_id).and_then(|c| c.resume()))?;
        Ok(pb::Empty::new())
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::UpdateContainerRequest,
    ) -> ttrpc::Result<pb::Empty> {
        reply(
            self.container(&req.container_id)
                .and_then(|c| c.update(&req.resources_json)),
        )?;
        Ok(pb::Empty::new())
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ContainerRequest,
    ) -> ttrpc::Result<pb::StatsContainerResponse> {
        let stats = reply(self.container(&req.container_id).and_then(|c| c.stats()))?;
        // hull's one `Stats` type, as it is: the host reads it back with the same type.
        let stats_json = reply(serde_json::to_vec(&stats).map_err(|e| {
            AgentError::io(
                format!("encode stats of container {}", req.container_id),
                e.into(),
            )
        }))?;
        Ok(pb::StatsContainerResponse {
            stats_json,
            ..Default::default()
        })
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ContainerRequest,
    ) -> ttrpc::Result<pb::ListProcessesResponse> {
        let pids = reply(self.container(&req.container_id).and_then(|c| c.pids()))?;
        Ok(pb::ListProcessesResponse {
            pids: pids.into_iter().map(|p| p as u32).collect(),
            ..Default::default()
        })
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ExecProcessRequest,
    ) -> ttrpc::Result<pb::ExecProcessResponse> {
        let r = self.container(&req.container_id).and_then(|c| {
            if req.in_guest {
                c.exec_in_guest(&req.exec_id, &req.process_json, &self.reaper)
            } else {
                c.exec(&req.exec_id, &req.process_json, &self.reaper)
            }
        });
        if let Err(e) = &r {
            tracing::warn!(container_id = %req.container_id, exec_id = %req.exec_id, error = %e, "exec failed");
        }
        let p = reply(r)?;
        Ok(pb::ExecProcessResponse {
            pid: p.pid as u32,
            ..Default::default()
        })
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: pb::SignalProcessRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let signal = i32::try_from(req.signal)
            .map_err(|_| AgentError::InvalidArgument(format!("signal {}", req.signal)));
        reply(signal.and_then(|sig| {
            self.container(&req.container_id)
                .and_then(|c| c.signal(&req.exec_id, sig, req.all, &self.reaper))
        }))?;
        Ok(pb::Empty::new())
    }

    fn wait_process(
        &self,
        ctx: &TtrpcContext,
        req: pb::ProcessRequest,
    ) -> ttrpc::Result<pb::WaitProcessResponse> {
        let c = reply(self.container(&req.container_id))?;
        let p = reply(c.process(&req.exec_id))?;
        match self.reaper.wait(p.pid, deadline(ctx)) {
            Some(status) => {
                p.mark_waited();
                c.retire_if_finished(&req.exec_id, &self.reaper);
                Ok(pb::WaitProcessResponse {
                    status,
                    pid: p.pid as u32,
                    ..Default::default()
                })
            }
            None => Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::DEADLINE_EXCEEDED,
                format!(
                    "container {}: process {:?} still running",
                    req.container_id, req.exec_id
                ),
            ))),
        }
    }

    fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: pb::WriteStreamRequest,
    ) -> ttrpc::Result<pb::WriteStreamResponse> {
        let n = reply(
            self.container(&req.container_id)
                .and_then(|c| c.process(&req.exec_id))
                .and_then(|p| p.write_stdin(&req.data)),
        )?;
        Ok(pb::WriteStreamResponse {
            len: n as u32,
            ..Default::default()
        })
    }

    fn read_stdout(
        &self,
        ctx: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> ttrpc::Result<pb::ReadStreamResponse> {
        let c = reply(self.container(&req.container_id))?;
        let (data, eof) = reply(
            c.process(&req.exec_id)
                .and_then(|p| p.read_stdout(req.len as usize, read_wait(ctx))),
        )?;
        if eof {
            c.retire_if_finished(&req.exec_id, &self.reaper);
        }
        Ok(pb::ReadStreamResponse {
            data,
            eof,
            ..Default::default()
        })
    }

    fn read_stderr(
        &self,
        ctx: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> ttrpc::Result<pb::ReadStreamResponse> {
        let c = reply(self.container(&req.container_id))?;
        let (data, eof) = reply(
            c.process(&req.exec_id)
                .and_then(|p| p.read_stderr(req.len as usize, read_wait(ctx))),
        )?;
        if eof {
            c.retire_if_finished(&req.exec_id, &self.reaper);
        }
        Ok(pb::ReadStreamResponse {
            data,
            eof,
            ..Default::default()
        })
    }

    fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ProcessRequest,
    ) -> ttrpc::Result<pb::Empty> {
        reply(
            self.container(&req.container_id)
                .and_then(|c| c.process(&req.exec_id))
                .and_then(|p| p.close_stdin()),
        )?;
        Ok(pb::Empty::new())
    }

    fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: pb::TtyWinResizeRequest,
    ) -> ttrpc::Result<pb::Empty> {
        let rows = u16::try_from(req.rows).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.cols).unwrap_or(u16::MAX);
        reply(
            self.container(&req.container_id)
                .and_then(|c| c.process(&req.exec_id))
                .and_then(|p| p.resize_tty(rows, cols)),
        )?;
        Ok(pb::Empty::new())
    }

    fn get_oom_event(
        &self,
        ctx: &TtrpcContext,
        _req: pb::Empty,
    ) -> ttrpc::Result<pb::OomEventResponse> {
        let id = reply(self.wait_oom(deadline(ctx)))?;
        Ok(pb::OomEventResponse {
            container_id: id,
            ..Default::default()
        })
    }

    fn setup_network(
        &self,
        _ctx: &TtrpcContext,
        req: pb::SetupNetworkRequest,
    ) -> ttrpc::Result<pb::SetupNetworkResponse> {
        let applied = reply(self.setup_network(&req))?;
        Ok(pb::SetupNetworkResponse {
            applied_json: applied,
            ..Default::default()
        })
    }
}

impl Health for Agent {
    fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: hpb::CheckRequest,
    ) -> ttrpc::Result<hpb::HealthCheckResponse> {
        let mut r = hpb::HealthCheckResponse::new();
        r.status = ServingStatus::SERVING.into();
        Ok(r)
    }

    fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: hpb::CheckRequest,
    ) -> ttrpc::Result<hpb::VersionCheckResponse> {
        Ok(hpb::VersionCheckResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: hull_protocols::PROTOCOL_VERSION.to_string(),
            ..Default::default()
        })
    }
}
