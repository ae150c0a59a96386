//! imaged: a local image-metadata daemon. It keeps name → descriptor records
//! per namespace in sled and serves them over gRPC on a Unix socket.
//!
//! # Layout
//! - [`store`]: the one store; every rule, every write, durability.
//! - [`server`]: the gRPC server and one thin adapter per wire API.
//! - [`listener`]: binding the Unix socket safely.
//! - [`leases`]: containerd's leases, held in memory.
//! - [`ids`]: random identifiers (server UUID, lease ids).
//! - [`error`]: the error type and its one mapping to gRPC codes.
//! - [`filter`]: containerd's filter language, parsed once for every API.
//! - [`build_info`]: version and git revision.
//! - `alloc`: the memory allocator (jemalloc) and its options, for every
//!   program built on this crate.
//!
//! The data path: a call arrives on the socket ([`listener`]), its adapter
//! ([`server`]) converts it to domain types, the [`store::Store`] validates and
//! applies it (point reads on its reader threads, scans on tokio's blocking
//! pool, writes through the writer thread and one durability barrier per
//! group), and the adapter converts the answer back.

#![warn(missing_docs)]

mod alloc;
pub mod error;
pub mod filter;
pub mod ids;
pub mod leases;
pub mod listener;
pub mod server;
pub mod store;

/// What this daemon is.
pub mod build_info {
    /// The crate version.
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The git revision it was built from, or `unknown`.
    pub const REVISION: &str = env!("IMAGED_GIT_REVISION");
}
