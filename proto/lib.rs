//! The wire contract of imaged: Rust types, gRPC clients and gRPC servers
//! generated from the `.proto` files beside this file by the top-level
//! `build.rs`.
//!
//! Modules nest by protobuf package:
//! - [`containerd::types`]: the OCI `Descriptor` as containerd sends it;
//! - [`containerd::v1`]: the seed `containerd.v1.Images` API;
//! - [`containerd::services`]: containerd's own `images`, `namespaces`,
//!   `version`, `leases` and `introspection` (`Server` only) services, field
//!   for field;
//! - [`imaged::admin::v1`]: imaged's own service for operators (status,
//!   online backups) and the messages of its backup file.
//!
//! [`FILE_DESCRIPTOR_SET`] describes them all, for gRPC reflection.
//!
//! Beside them, [`encoded`] holds the two hand-written messages,
//! `EncodedImageList` and `EncodedImage`, and [`encoded_servers`] the
//! daemon's image servers generated to answer lists and Gets with them.
//!
//! This crate holds no other logic. Validated domain types and the
//! conversions to and from these messages live in `imaged-types`.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/imaged_api.rs"));

pub mod codec;
pub mod encoded;

/// The daemon's servers of the seed and containerd image services, whose
/// List (and ListStream) answers are [`encoded::EncodedImageList`] and whose
/// Get answers are [`encoded::EncodedImage`]: the same bytes on the wire,
/// built without a message struct per image.
pub mod encoded_servers {
    include!(concat!(env!("OUT_DIR"), "/encoded/imaged_api_encoded.rs"));
}

/// The metadata of an OUT_OF_RANGE answer to the seed API's Watch that
/// names, as a decimal number, the oldest revision a watch can start from
/// (its compaction mark).
pub const COMPACTED_REVISION_HEADER: &str = "imaged-compacted-revision";

/// Every `.proto` file of the contract, with the files they import, as an
/// encoded `google.protobuf.FileDescriptorSet`: what the reflection service
/// describes.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
