//! hull-agent's API: protobuf messages and ttrpc services, generated at build time from
//! `protos/*.proto` by the pure-Rust `ttrpc-codegen` (no `protoc`).

#![warn(missing_docs)]

/// Messages of the agent service (`protos/agent.proto`).
#[allow(
    missing_docs,
    clippy::all,
    non_upper_case_globals,
    non_camel_case_types,
    unused_imports,
    unused_qualifications,
    unknown_lints,
    dead_code,
    unused_mut
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// ttrpc client and server bindings of `hull.agent.AgentService`.
#[allow(
    missing_docs,
    clippy::all,
    non_upper_case_globals,
    non_camel_case_types,
    unused_imports,
    unused_qualifications,
    unknown_lints,
    dead_code,
    unused_mut
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// Messages of the health service (`protos/health.proto`).
#[allow(
    missing_docs,
    clippy::all,
    non_upper_case_globals,
    non_camel_case_types,
    unused_imports,
    unused_qualifications,
    unknown_lints,
    dead_code,
    unused_mut
)]
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/health.rs"));
}

/// ttrpc client and server bindings of `hull.agent.Health`.
#[allow(
    missing_docs,
    clippy::all,
    non_upper_case_globals,
    non_camel_case_types,
    unused_imports,
    unused_qualifications,
    unknown_lints,
    dead_code,
    unused_mut
)]
pub mod health_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/health_ttrpc.rs"));
}

/// Version of this protocol; bumped on incompatible changes.
pub const PROTOCOL_VERSION: &str = "3";

/// The largest ttrpc frame body either side accepts (bytes).
pub const MAX_FRAME_LEN: usize = ttrpc::proto::MESSAGE_LENGTH_MAX;

pub use protobuf;
pub use ttrpc;
