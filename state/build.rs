//! Generates the gRPC server and client for `proto/edge_warden_state.proto` with prost/tonic.
//! The .proto is parsed by protox (pure Rust), so building needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = proto_dir.join("edge_warden_state.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        // The client is for the integration tests (and any Rust caller); it costs little.
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
