//! OOM kills in a vm pod: the agent reports each container whose cgroup hit its limit.

use std::sync::Arc;
use std::time::Duration;

use hull_agent_client::AgentClient;

use super::VmPod;

impl VmPod {
    /// Counts OOM kills the agent reports, per container, until the pod is gone.
    pub(super) fn watch_ooms(&self, agent: AgentClient) {
        let inner = Arc::downgrade(&self.inner);
        let _ = std::thread::Builder::new()
            .name("vm-oom".into())
            .spawn(move || loop {
                let r = agent.get_oom_event(Duration::from_secs(60));
                let Some(inner) = inner.upgrade() else { return };
                match r {
                    Ok(id) if !id.is_empty() => *inner.lock().ooms.entry(id).or_insert(0) += 1,
                    Ok(_) => {}
                    Err(e) if e.is_timeout() => {}
                    Err(_) => {
                        if inner.lock().vm.is_none() {
                            return;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            });
    }
}
