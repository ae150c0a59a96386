//! Validated domain types of imaged, shared by the daemon and the client.
//!
//! # Layout
//! - [`error`]: [`ValidationError`], which names the refused field and value.
//! - [`digest`]: [`Digest`], which can only hold a valid OCI digest.
//! - [`image`]: [`Image`], [`Descriptor`] and [`Labels`], with the size rules
//!   and bounds of [`limits`].
//! - [`namespace`]: [`Namespace`] and [`NamespaceName`], containerd's
//!   identifier rule.
//! - [`paths`]: the default socket and data paths, for root and for users.
//! - [`repository`]: [`Repository`], and the rule naming an image's
//!   repository.
//! - [`time`]: RFC 3339 parsing and formatting.
//! - [`wire`]: conversions between these types and the generated messages of
//!   `imaged-api`, written once for every wire API.
//!
//! Nothing here touches storage or the network, so a client can use these
//! types without depending on the daemon.

#![warn(missing_docs)]

pub mod digest;
pub mod error;
pub mod image;
pub mod namespace;
pub mod paths;
pub mod repository;
pub mod time;
pub mod wire;
pub mod words;

pub use digest::Digest;
pub use error::ValidationError;
pub use image::{Descriptor, Image, ImageUpdate, Labels, PROTECTED_LABEL, PROTECTED_VALUE, Precondition, limits};
pub use namespace::{Namespace, NamespaceName};
pub use repository::{Repository, repository_of};
