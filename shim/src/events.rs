//! Events to containerd (TaskCreate, TaskStart, TaskExit, TaskDelete, ...), published in
//! order from one thread that reconnects when containerd restarts, so that no RPC
//! handler ever blocks on containerd and no exit is lost while it is down.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::ttrpc::context;
use containerd_shim::protos::ttrpc::Client;
use containerd_shim::protos::EventsClient;
use containerd_shim::protos::{protobuf::well_known_types::any::Any, topics};
use containerd_shim::util::{connect, timestamp};
use tracing::{debug, warn};

use crate::any::{pack, Named};

/// How long one event is retried while containerd is unreachable.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// A queue of events to containerd.
pub struct Publisher {
    tx: Mutex<Sender<(&'static str, Any)>>,
}

impl Publisher {
    /// Start the publishing thread for containerd's ttrpc `address` and `namespace`.
    pub fn start(address: String, namespace: String) -> Self {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || run(rx, &address, &namespace))
            .map_err(|e| warn!("cannot start the events thread: {e}"))
            .ok();
        Self { tx: Mutex::new(tx) }
    }

    fn send<E: Named>(&self, topic: &'static str, event: E) {
        match pack(&event) {
            Ok(any) => {
                if let Ok(tx) = self.tx.lock() {
                    let _ = tx.send((topic, any));
                }
            }
            Err(e) => warn!(topic, "cannot encode event: {e}"),
        }
    }

    /// `/tasks/create`.
    pub fn create(&self, id: &str, bundle: &str, pid: u32) {
        let e = ev::TaskCreate {
            container_id: id.into(),
            bundle: bundle.into(),
            pid,
            ..Default::default()
        };
        self.send(topics::TASK_CREATE_EVENT_TOPIC, e);
    }

    /// `/tasks/start`.
    pub fn start_task(&self, id: &str, pid: u32) {
        let e = ev::TaskStart {
            container_id: id.into(),
            pid,
            ..Default::default()
        };
        self.send(topics::TASK_START_EVENT_TOPIC, e);
    }

    /// `/tasks/exit`; `exec_id` is the container id for the init process.
    pub fn exit(&self, id: &str, exec_id: &str, pid: u32, status: u32, at: &Timestamp) {
        let e = ev::TaskExit {
            container_id: id.into(),
            id: exec_id.into(),
            pid,
            exit_status: status,
            exited_at: Some(at.clone()).into(),
            ..Default::default()
        };
        self.send(topics::TASK_EXIT_EVENT_TOPIC, e);
    }

    /// `/tasks/delete`.
    pub fn delete(&self, id: &str, pid: u32, status: u32, at: &Timestamp) {
        let e = ev::TaskDelete {
            container_id: id.into(),
            id: id.into(),
            pid,
            exit_status: status,
            exited_at: Some(at.clone()).into(),
            ..Default::default()
        };
        self.send(topics::TASK_DELETE_EVENT_TOPIC, e);
    }

    /// `/tasks/exec-added`.
    pub fn exec_added(&self, id: &str, exec_id: &str) {
        let e = ev::TaskExecAdded {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.send(topics::TASK_EXEC_ADDED_EVENT_TOPIC, e);
    }

    /// `/tasks/exec-started`.
    pub fn exec_started(&self, id: &str, exec_id: &str, pid: u32) {
        let e = ev::TaskExecStarted {
            container_id: id.into(),
            exec_id: exec_id.into(),
            pid,
            ..Default::default()
        };
        self.send(topics::TASK_EXEC_STARTED_EVENT_TOPIC, e);
    }

    /// `/tasks/paused`.
    pub fn paused(&self, id: &str) {
        let e = ev::TaskPaused {
            container_id: id.into(),
            ..Default::default()
        };
        self.send(topics::TASK_PAUSED_EVENT_TOPIC, e);
    }

    /// `/tasks/oom`: the kernel's OOM killer ended a process of the container.
    pub fn oom(&self, id: &str) {
        let e = ev::TaskOOM {
            container_id: id.into(),
            ..Default::default()
        };
        self.send(topics::TASK_OOM_EVENT_TOPIC, e);
    }

    /// `/tasks/resumed`.
    pub fn resumed(&self, id: &str) {
        let e = ev::TaskResumed {
            container_id: id.into(),
            ..Default::default()
        };
        self.send(topics::TASK_RESUMED_EVENT_TOPIC, e);
    }
}

/// Protobuf timestamp type used in events and responses.
pub type Timestamp = containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    timestamp().unwrap_or_default()
}

fn client(address: &str) -> Option<EventsClient> {
    let addr = address.strip_prefix("unix://").unwrap_or(address);
    let fd = connect(addr).ok()?;
    Client::new(fd).ok().map(EventsClient::new)
}

fn run(rx: Receiver<(&'static str, Any)>, address: &str, namespace: &str) {
    let mut events: Option<EventsClient> = None;
    for (topic, any) in rx {
        let req = ForwardRequest {
            envelope: Some(Envelope {
                timestamp: Some(now()).into(),
                namespace: namespace.to_string(),
                topic: topic.to_string(),
                event: Some(any).into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let deadline = Instant::now() + GIVE_UP_AFTER;
        let mut backoff = Duration::from_millis(20);
        loop {
            if events.is_none() {
                events = client(address);
            }
            if let Some(c) = &events {
                match c.forward(context::with_timeout(5_000_000_000), &req) {
                    Ok(_) => {
                        debug!(topic, "event published");
                        break;
                    }
                    Err(e) => {
                        debug!(topic, "publish failed, reconnecting: {e}");
                        events = None;
                    }
                }
            }
            if Instant::now() > deadline {
                warn!(topic, "containerd unreachable at {address}: event dropped");
                break;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}
