//! The transport under every service: what the socket and HTTP/2 hand a
//! call before any policy or handler sees it.
//!
//! - [`incoming`]: the accept loop, with the per-uid bounds on connections
//!   and streams;
//! - [`peer`]: who is at the other end, from the kernel;
//! - [`authority`]: the `:authority` rewrite some gRPC clients need;
//! - [`context`]: what a call carries (its namespace, deadline and caller),
//!   read once for the access layer and the handler alike.
//!
//! It sits below both [`crate::access`] and [`crate::server`] and imports
//! neither: the accept loop learns who a peer is through [`incoming::Admission`],
//! which the access policy implements.

pub mod authority;
pub mod context;
pub mod incoming;
pub mod peer;
