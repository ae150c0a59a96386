//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler, so no
//! system `protoc` is needed) and tonic-prost-build (messages, clients and
//! servers). The generated modules nest by protobuf package and are included
//! from `proto/lib.rs` through one generated include file.

use std::path::PathBuf;

/// Every .proto file of the wire contract, listed once.
const PROTOS: &[&str] = &[
    "proto/containerd/types/descriptor.proto",
    "proto/containerd/v1/images.proto",
    "proto/containerd/services/images/v1/images.proto",
    "proto/containerd/services/namespaces/v1/namespace.proto",
    "proto/containerd/services/version/v1/version.proto",
    "proto/containerd/services/leases/v1/leases.proto",
    "proto/containerd/services/introspection/v1/introspection.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps: the domain's labels are a BTreeMap, so an answer
        // moves them instead of rehashing every label, and encodings are
        // deterministic.
        .btree_map(".")
        .emit_rerun_if_changed(false)
        .include_file("imaged_api.rs")
        .out_dir(&out_dir)
        .compile_fds(descriptors)?;
    Ok(())
}
