//! imaged: a local image-metadata daemon. It keeps name → descriptor records
//! per namespace in sled and serves them over gRPC on a Unix socket.
//!
//! # Layout
//! - [`access`]: who may call what, by peer credentials.
//! - [`shares`]: how much each caller may hold and do: fair shares of every
//!   bound, with a reserve for the admins, and a fair queue for expensive
//!   requests.
//! - [`config`]: the daemon's settings, from defaults, file, environment and
//!   flags.
//! - [`systemd`]: readiness, status and watchdog notices, and socket
//!   activation.
//! - [`store`]: the one store; every rule, every write, durability.
//! - [`feed`]: the change feed every watcher of every API reads.
//! - [`server`]: the gRPC server and one thin adapter per wire API.
//! - [`listener`]: binding the Unix socket safely.
//! - [`backup`]: backup files, written online and restored.
//! - [`metrics`]: Prometheus metrics, served on an optional listener, from
//!   the counters of [`stats`].
//! - [`leases`]: containerd's leases, held in memory.
//! - [`ids`]: random identifiers (server UUID, lease ids).
//! - [`error`]: the error type and its one mapping to gRPC codes.
//! - [`filter`]: containerd's filter language, parsed once for every API.
//! - [`build_info`]: version and git revision.
//! - [`alloc`]: the memory allocator (jemalloc) and its options, which each
//!   binary sets with [`global_allocator!`].
//!
//! The data path: a call arrives on the socket ([`listener`]), its adapter
//! ([`server`]) reads its context and converts it to domain types, the
//! [`store::Store`] applies its rules, the store's log makes it durable
//! (one journal entry per batch) and applies it to the engine (sled), and
//! the adapter encodes the answer, images straight from their stored
//! records. docs/ARCHITECTURE.md draws it.

#![warn(missing_docs)]

pub mod access;
pub mod alloc;
pub mod backup;
pub mod config;
pub mod error;
pub mod fault;
pub mod feed;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod leases;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod shares;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod transport;

/// What this daemon is.
pub mod build_info {
    /// The crate version.
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The git revision it was built from, or `unknown`.
    pub const REVISION: &str = env!("IMAGED_GIT_REVISION");
}
