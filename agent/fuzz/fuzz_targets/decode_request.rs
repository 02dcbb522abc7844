//! Fuzzes the agent's request decoding path: ttrpc framing (header, length bound), the ttrpc
//! `Request` envelope, the method's protobuf payload, the OCI JSON carried by
//! CreateContainer / ExecProcess / UpdateContainer, and SetupNetwork's pod network JSON.

#![no_main]

use hull_agent::server::decode_frame;
use hull_protocols::agent as pb;
use hull_protocols::protobuf::Message;
use libfuzzer_sys::fuzz_target;

fn decode_payload(method: &str, payload: &[u8]) {
    match method {
        "SetupSandbox" => drop(pb::SetupSandboxRequest::parse_from_bytes(payload)),
        "DestroySandbox" => drop(pb::DestroySandboxRequest::parse_from_bytes(payload)),
        "CreateContainer" => {
            if let Ok(req) = pb::CreateContainerRequest::parse_from_bytes(payload) {
                let _ = hull_container::validate_id(&req.container_id);
                let _ = hull_agent::container::prepare_spec(
                    "fuzz",
                    &req.oci_spec_json,
                    std::path::Path::new("/nonexistent/rootfs"),
                );
                let _ = hull_agent::mounts::parse_options(
                    &req.storages
                        .iter()
                        .flat_map(|s| s.options.clone())
                        .collect::<Vec<_>>(),
                );
            }
        }
        "ExecProcess" => {
            if let Ok(req) = pb::ExecProcessRequest::parse_from_bytes(payload) {
                let _ = serde_json::from_slice::<oci_spec::runtime::Process>(&req.process_json);
            }
        }
        "UpdateContainer" => {
            if let Ok(req) = pb::UpdateContainerRequest::parse_from_bytes(payload) {
                let _ = serde_json::from_slice::<oci_spec::runtime::LinuxResources>(
                    &req.resources_json,
                );
            }
        }
        "SignalProcess" => drop(pb::SignalProcessRequest::parse_from_bytes(payload)),
        "WriteStdin" => drop(pb::WriteStreamRequest::parse_from_bytes(payload)),
        "ReadStdout" | "ReadStderr" => drop(pb::ReadStreamRequest::parse_from_bytes(payload)),
        "TtyWinResize" => drop(pb::TtyWinResizeRequest::parse_from_bytes(payload)),
        "SetupNetwork" => {
            if let Ok(req) = pb::SetupNetworkRequest::parse_from_bytes(payload) {
                let _ = serde_json::from_str::<hull_net::PodNetwork>(&req.network_json);
            }
        }
        _ => drop(pb::ContainerRequest::parse_from_bytes(payload)),
    }
}

fuzz_target!(|data: &[u8]| {
    // A byte stream may hold several frames back to back: decode them in turn, as the
    // connection loop does, until one fails.
    let mut rest = data;
    while let Ok((_mh, req, used)) = decode_frame(rest) {
        decode_payload(&req.method, &req.payload);
        rest = &rest[used..];
    }
});
