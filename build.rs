//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler, so no
//! system `protoc` is needed) and tonic-prost-build (messages, clients and
//! servers). The generated modules nest by protobuf package and are included
//! from `proto/lib.rs` through one generated include file; a second pass
//! generates the daemon's two image servers again, answering lists and Gets
//! with the hand-written `EncodedImageList` and `EncodedImage` (and the
//! events service, with its envelopes as `RawMessage`), into `encoded/` with
//! its own include file.

use std::path::PathBuf;

use prost::Message;

/// Every .proto file of the wire contract, listed once.
const PROTOS: &[&str] = &[
    "proto/containerd/types/descriptor.proto",
    "proto/containerd/v1/images.proto",
    "proto/containerd/services/images/v1/images.proto",
    "proto/containerd/services/namespaces/v1/namespace.proto",
    "proto/containerd/services/version/v1/version.proto",
    "proto/containerd/services/leases/v1/leases.proto",
    "proto/containerd/services/introspection/v1/introspection.proto",
    "proto/containerd/services/events/v1/events.proto",
    "proto/containerd/services/images/v1/events.proto",
    "proto/containerd/events/namespace.proto",
    "proto/imaged/admin/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Every file, with its imports, for the reflection service to describe.
    std::fs::write(out_dir.join("descriptors.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps: the domain's labels are a BTreeMap, so an answer
        // moves them instead of rehashing every label, and encodings are
        // deterministic.
        .btree_map(".")
        .codec_path("crate::codec::ArgumentCodec")
        .emit_rerun_if_changed(false)
        .include_file("imaged_api.rs")
        .out_dir(&out_dir)
        .compile_fds(descriptors.clone())?;

    // The daemon's servers of the two image services, again, with their list
    // and Get answers typed as `EncodedImageList` and `EncodedImage` (images
    // already encoded; the same bytes on the wire). Every other message is
    // the one generated above.
    let mut services = descriptors;
    services.file.retain(|file| ENCODED_SERVICES.contains(&file.name()));
    let encoded_dir = out_dir.join("encoded");
    std::fs::create_dir_all(&encoded_dir)?;
    let mut config = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path("crate::codec::ArgumentCodec")
        .emit_rerun_if_changed(false)
        .extern_path(".containerd", "crate::containerd");
    for (answer, encoded) in ENCODED_ANSWERS {
        config = config.extern_path(*answer, *encoded);
    }
    config
        .include_file("imaged_api_encoded.rs")
        .out_dir(&encoded_dir)
        .compile_fds(services)?;
    Ok(())
}

/// The files of the services whose image answers the daemon sends encoded.
const ENCODED_SERVICES: &[&str] = &[
    "containerd/v1/images.proto",
    "containerd/services/images/v1/images.proto",
    "containerd/services/events/v1/events.proto",
];

/// Their answers of images, and the hand-written type of each: the list
/// answers are `repeated Image images = 1` (and the seed API's `string
/// next_page_token = 2`), the Get answers and containerd's Create and
/// Update answers `Image image = 1`; and the events
/// service's `Envelope`, sent as bytes encoded once for every subscriber.
const ENCODED_ANSWERS: &[(&str, &str)] = &[
    (".containerd.v1.ListResponse", "crate::encoded::EncodedImageList"),
    (
        ".containerd.services.images.v1.ListImagesResponse",
        "crate::encoded::EncodedImageList",
    ),
    (".containerd.v1.GetResponse", "crate::encoded::EncodedImage"),
    (".containerd.v1.WatchResponse", "crate::encoded::EncodedWatchResponse"),
    (".containerd.services.events.v1.Envelope", "crate::encoded::RawMessage"),
    (
        ".containerd.services.images.v1.GetImageResponse",
        "crate::encoded::EncodedImage",
    ),
    (
        ".containerd.services.images.v1.CreateImageResponse",
        "crate::encoded::EncodedImage",
    ),
    (
        ".containerd.services.images.v1.UpdateImageResponse",
        "crate::encoded::EncodedImage",
    ),
];
