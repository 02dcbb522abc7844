//! Messages packed into protobuf's `Any` by their full name, without protobuf's reflection.
//!
//! `containerd_shim::util::convert_to_any` names the message through `descriptor_dyn()`,
//! which builds the reflection tables of the message's whole .proto file and its imports
//! (descriptor.proto with all its comments among them) on first use: ~370 KiB of heap that a
//! shim keeps for the rest of its life, a third of its anonymous memory. The first TaskCreate
//! event paid it in every shim.

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Error, Message};
use containerd_shim::protos::shim::oci::ProcessDetails;

/// A message that containerd decodes out of an `Any` by name.
pub trait Named: Message {
    /// The message's full protobuf name, the `Any`'s `type_url`.
    const TYPE_URL: &'static str;
}

/// `msg` encoded in an `Any` named `M::TYPE_URL`.
pub fn pack<M: Named>(msg: &M) -> Result<Any, Error> {
    Ok(Any {
        type_url: M::TYPE_URL.to_string(),
        value: msg.write_to_bytes()?,
        ..Default::default()
    })
}

macro_rules! named {
    ($($t:ty => $name:literal,)*) => {
        $(impl Named for $t { const TYPE_URL: &'static str = $name; })*
        /// Every `Named` type's name next to the one protobuf's reflection gives it.
        #[cfg(test)]
        fn names() -> Vec<(&'static str, String)> {
            use containerd_shim::protos::protobuf::MessageFull;
            vec![$(($name, <$t>::descriptor().full_name().to_string()),)*]
        }
    };
}

named! {
    ev::TaskCreate => "containerd.events.TaskCreate",
    ev::TaskStart => "containerd.events.TaskStart",
    ev::TaskExit => "containerd.events.TaskExit",
    ev::TaskDelete => "containerd.events.TaskDelete",
    ev::TaskExecAdded => "containerd.events.TaskExecAdded",
    ev::TaskExecStarted => "containerd.events.TaskExecStarted",
    ev::TaskPaused => "containerd.events.TaskPaused",
    ev::TaskResumed => "containerd.events.TaskResumed",
    ev::TaskOOM => "containerd.events.TaskOOM",
    v1::Metrics => "io.containerd.cgroups.v1.Metrics",
    v2::Metrics => "io.containerd.cgroups.v2.Metrics",
    ProcessDetails => "containerd.runc.v1.ProcessDetails",
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::util::convert_to_any;

    #[test]
    fn every_name_is_the_one_containerd_looks_up() {
        for (ours, protobufs) in names() {
            assert_eq!(ours, protobufs);
        }
    }

    #[test]
    fn an_event_packs_as_containerd_shims_own_helper_packs_it() {
        let e = ev::TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 137,
            ..Default::default()
        };
        let ours = pack(&e).unwrap();
        assert_eq!(ours, convert_to_any(Box::new(e)).unwrap());
    }
}
