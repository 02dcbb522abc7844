//! Compiles `protos/*.proto` into Rust for protobuf 3 and ttrpc (pure-Rust parser, no protoc).

use std::fs;
use std::path::PathBuf;

const PROTOS: &[&str] = &["protos/agent.proto", "protos/health.proto"];

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            ..Default::default()
        })
        .run()
        .expect("protobuf/ttrpc code generation failed");

    // Generated files carry inner attributes and `//!` docs, which `include!` rejects:
    // strip them so the files can be included as module bodies.
    for entry in fs::read_dir(&out_dir).expect("read OUT_DIR") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("read generated file");
        let cleaned: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("#![") && !l.trim_start().starts_with("//!"))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&path, cleaned).expect("write generated file");
    }
}
